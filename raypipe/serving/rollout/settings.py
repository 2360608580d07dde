"""A rollout's settings (validated YAML: steps, interval, guardrails) and how a rollout
file is read."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator

from raypipe.config import StrictModel, format_loc, parse_yaml, validation_issues
from raypipe.exceptions import ConfigError

# --------------------------------------------------------------------------- the spec


Fraction = Annotated[float, Field(ge=0, le=1)]
Alpha = Annotated[float, Field(gt=0, lt=1)]


class ErrorRateGuard(StrictModel):
    #: Largest allowed ``error_rate(candidate) - error_rate(baseline)`` (absolute); null: test only.
    max_increase: Fraction | None = 0.02
    #: A violation also needs the candidate's error rate to be significantly higher than the
    #: baseline's (one-sided Fisher exact test) at this level; null: the increase alone decides.
    alpha: Alpha | None = 0.01
    #: Before ``min_requests``: roll back at once when the increase is over the limit and p < this.
    early_alpha: Alpha = 0.001

    def model_post_init(self, _: Any) -> None:
        if self.max_increase is None and self.alpha is None:
            raise ValueError("error_rate needs max_increase, alpha or both")


class LatencyGuard(StrictModel):
    #: Largest allowed ``p99(candidate) / p99(baseline)``.
    max_ratio: Annotated[float, Field(ge=1)] = 1.5
    #: Ignore p99 increases smaller than this many milliseconds.
    min_increase_ms: Annotated[float, Field(ge=0)] = 5.0
    #: Requests each variant needs in a step before its p99 is compared (also at least
    #: ``min_requests``): the p99 of a few dozen requests is just their slowest one.
    min_samples: Annotated[int, Field(ge=1)] = 100


class BusinessGuard(StrictModel):
    metric: Literal["conversion", "mean_outcome"]
    #: Largest allowed ``baseline - candidate`` of the metric (absolute).
    max_decrease: Annotated[float, Field(ge=0)]
    #: Outcomes each variant needs in a step before the metric is judged (default: min_requests).
    min_outcomes: Annotated[int, Field(ge=2)] | None = None


class Guardrails(StrictModel):
    error_rate: ErrorRateGuard | None = Field(default_factory=ErrorRateGuard)
    p99_latency_ms: LatencyGuard | None = Field(default_factory=LatencyGuard)
    business: BusinessGuard | None = None
    #: Requests the candidate and the baseline each need in a step before it can pass.
    min_requests: Annotated[int, Field(ge=1)] = 100


class RolloutSettings(StrictModel):
    """How a rollout moves: steps, their length and the guardrails (also the closed loop's
    ``retrain.rollout``)."""

    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0])
    interval_s: Annotated[float, Field(gt=0)] = 60.0
    guardrails: Guardrails = Field(default_factory=Guardrails)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[float]) -> list[float]:
        if len(v) < 2:
            raise ValueError("give at least one step below 100, then 100 (e.g. [5, 25, 50, 100])")
        if any(not 0 < s <= 100 for s in v):
            raise ValueError(f"every step is a candidate percentage in (0, 100]; got {v}")
        if any(b <= a for a, b in zip(v[:-1], v[1:], strict=True)):
            raise ValueError(f"steps must increase strictly; got {v}")
        if v[-1] != 100:
            raise ValueError(f"the last step must be 100 (promotion); got {v}")
        return v


class RolloutSpec(RolloutSettings):
    """What to roll out where.  ``candidate``/``baseline``: a variant label (``v4``), a version
    number, ``MODEL:VERSION`` or ``MODEL@ALIAS``; ``baseline`` defaults to the variant serving
    the model's ``production`` alias (else the variant with the most traffic)."""

    app: Annotated[str, Field(min_length=1)]
    candidate: Annotated[str, Field(min_length=1)]
    baseline: str | None = None


def parse_steps(text: str) -> list[float]:
    """``"5,25,50,100"`` -> ``[5.0, 25.0, 50.0, 100.0]`` (a clear error otherwise)."""
    try:
        return [float(s.strip().rstrip("%")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps {text!r}: expected comma-separated percentages, e.g. 5,25,50,100") from None


def build_spec(data: Mapping[str, Any], where: str = "rollout spec") -> RolloutSpec:
    """Validate a mapping into a :class:`RolloutSpec`; errors name each field."""

    try:
        return RolloutSpec.model_validate(dict(data))
    except ValidationError as e:
        issues = validation_issues(e, model=RolloutSpec)
        raise ConfigError("\n".join(f"{where}: {format_loc(loc)}: {msg}" for loc, msg in issues)) from None


def is_rollout_document(data: Any) -> bool:
    """A YAML document whose only top-level key is ``rollout``."""
    return isinstance(data, dict) and set(data) == {"rollout"}


def is_rollout_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a YAML file holding a rollout spec (any problem reading it: False,
    so the pipeline loader reports it)."""
    import yaml

    try:
        return is_rollout_document(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError):
        return False


def read_rollout_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``rollout:`` mapping of a rollout YAML file (not yet validated: flags may add to it)."""

    p, shown = Path(path), str(path)
    if not p.is_file():
        raise ConfigError(f"{shown}: no such file")
    data, _ = parse_yaml(p.read_text(encoding="utf-8"), shown)
    if not is_rollout_document(data) or not isinstance(data["rollout"], dict):
        raise ConfigError(f"{shown}:1: expected a rollout spec: a mapping `rollout: {{app, candidate, steps, ...}}`")
    return dict(data["rollout"])


def load_rollout_file(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> RolloutSpec:
    """Read and validate a rollout YAML file; ``overrides`` (e.g. from flags) win over its fields.
    Errors read ``file:line rollout.field: message``."""

    shown = str(path)
    data = read_rollout_file(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return RolloutSpec.model_validate(data)
    except ValidationError as e:
        _, source = parse_yaml(Path(path).read_text(encoding="utf-8"), shown)
        raise source.error(validation_issues(e, prefix=("rollout",), model=RolloutSpec)) from None


class RolloutPlan(StrictModel):
    """A spec resolved against the app and the registry: what the controller runs."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"notify"})

    rollout_id: str
    app: str
    model: str | None
    baseline: str
    candidate: str
    steps: list[float]
    interval_s: float
    guardrails: Guardrails
    spec: dict[str, Any] = Field(default_factory=dict)
    #: Who started it: the controller acts for them (alias moves, the audit log).
    started_by: str | None = None
    #: Who hears of its promotion or rollback (`notify:` entries, secrets as references).
    notify: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def candidate_version(self) -> int | None:
        return version_of(self.candidate)

    @property
    def baseline_version(self) -> int | None:
        return version_of(self.baseline)


def new_rollout_id(app: str) -> str:
    return f"{app}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def version_of(label: str) -> int | None:
    """``v4`` -> 4 (None for a label that is not ``v<N>``)."""
    return int(label[1:]) if label[:1] == "v" and label[1:].isdigit() else None
