"""What to serve: :class:`ServeSpec` (an app spec file, a ``deploy`` stage's params) and
its resolution against the model registry is :mod:`raypipe.serving.resolve`.

An app spec (``raypipe deploy app.yaml``)::

    app: digits                  # the Serve application (and the metrics actor's name)
    model: digits                # a registered model
    variants:                    # one Serve deployment per version, named v<N>
      - {version: "@production", weight: 90, replicas: 2}
      - {version: "@candidate", weight: 10, ray_actor_options: {num_cpus: 0.5}}
      # version: 3 | "v3" | "@ALIAS"; autoscaling: {min_replicas: 1, max_replicas: 4}
      # fail_rate: 0.3  (TESTING ONLY: the replica answers 500 for that fraction of
      #                  request ids, deterministically by hash)
    key: {header: X-User-Id}     # or {field: user_id} (top-level body field); none: random per request
    auth:                        # none: /predict and /feedback are open (a single-user setup)
      predict_tokens: ["${env:DIGITS_PREDICT_TOKEN}"]     # Authorization: Bearer <token>
      feedback_tokens: ["${file:/run/secrets/digits_feedback}"]
    force_variant: {token: "${env:DIGITS_FORCE_TOKEN}"}   # none: X-Raypipe-Variant is refused
    secret: "${env:DIGITS_ID_SECRET}"   # signs request ids; none: one made at the first deploy, kept
    feedback: {on_repeat: reject, window_s: 86400}        # a second outcome: 409; older ids: 410
    shadow: null                 # or {variant: "@candidate"}: a copy of every request, answer ignored
    route_prefix: /digits        # default /<app>
    port: 8000                   # Serve's HTTP port (one per cluster)
    reserve: true                # book the replicas' resources with raypipe's scheduler
    serving: {mode: auto}        # auto | colocated (variants in the router's replicas) | routed
    monitor: {window_rows: 500}  # a drift monitor (raypipe.monitoring.spec.MonitorSpec's fields), against
                                 # the profile registered with the production variant's version
    retrain: {...}               # the closed loop (needs monitor): see RetrainSpec

Weights are percentages and must sum to 100.  Variants are named by the version label
``v<N>`` of the registered model; two variants may not resolve to the same version.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from raypipe.config import ConfigSource, StrictModel, parse_yaml, validation_issues
from raypipe.exceptions import ConfigError, ModelNotFoundError
from raypipe.monitoring.spec import MonitorSpec
from raypipe.resources import Resources
from raypipe.serving.auth import is_reference
from raypipe.serving.rollout.settings import RolloutSettings
from raypipe.serving.routing import TOLERANCE, TOTAL, WeightsError
from raypipe.serving.validation import MAX_BODY_BYTES
from raypipe.store.refs import NAME_RE, parse_ref

#: ``ray_actor_options`` keys a variant may set (placement is raypipe's: see ``reserve``).
ACTOR_OPTION_KEYS = ("num_cpus", "num_gpus", "memory", "resources")
DEFAULT_VARIANT_CPUS = 0.5
DEFAULT_INGRESS_CPUS = 0.25
_HEADER_RE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
_FIELD_RE = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


def _actor_options(value: Mapping[str, Any], default_cpus: float) -> dict[str, Any]:
    bad = sorted(set(value) - set(ACTOR_OPTION_KEYS))
    if bad:
        raise ValueError(f"unknown ray_actor_options {bad}; allowed: {', '.join(ACTOR_OPTION_KEYS)}")
    out = dict(value)
    out.setdefault("num_cpus", default_cpus)
    for k in ("num_cpus", "num_gpus", "memory"):
        if k in out and (isinstance(out[k], bool) or not isinstance(out[k], (int, float)) or out[k] < 0):
            raise ValueError(f"ray_actor_options.{k}: expected a number >= 0, got {out[k]!r}")
    res = out.get("resources", {})
    if not isinstance(res, Mapping) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in res.values()
    ):
        raise ValueError("ray_actor_options.resources: expected {name: amount >= 0}")
    return out


def replica_resources(options: Mapping[str, Any]) -> Resources:
    """What one replica with these ``ray_actor_options`` takes (for the scheduler's budget)."""
    return Resources.of(
        cpu=float(options.get("num_cpus", 0.0)),
        gpu=float(options.get("num_gpus", 0.0)),
        memory_mb=float(options.get("memory", 0.0)) / (1 << 20),
        custom=dict(options.get("resources") or {}),
    )


class AutoscalingSpec(StrictModel):
    """Serve's autoscaling for one variant; the scheduler reserves ``max_replicas``."""

    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)]
    initial_replicas: Annotated[int, Field(ge=0)] | None = None
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 2.0
    upscale_delay_s: Annotated[float, Field(ge=0)] | None = None
    downscale_delay_s: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class VariantSpec(StrictModel):
    """One model version in the split."""

    #: ``3``, ``"3"``, ``"v3"`` or ``"@ALIAS"`` (resolved to the version the alias points at).
    version: int | str
    #: Percent of routed traffic (all variants' weights sum to 100).
    weight: Annotated[float, Field(ge=0, le=100)]
    replicas: Annotated[int, Field(ge=1)] = 1
    #: Per replica: num_cpus (default 0.5), num_gpus, memory (bytes), resources (custom).
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": DEFAULT_VARIANT_CPUS})
    autoscaling: AutoscalingSpec | None = None
    #: Concurrent requests per replica (Serve's max_ongoing_requests).
    max_ongoing_requests: Annotated[int, Field(ge=1)] = 8
    #: TESTING ONLY: this fraction of requests gets a 500, chosen by the request id:
    #: ``raypipe.serving.routing.unit_hash("fail", request_id) < fail_rate``.
    fail_rate: Annotated[float, Field(ge=0, le=1)] = 0.0

    @field_validator("version")
    @classmethod
    def _version(cls, v: int | str) -> int | str:
        ref_text(v)
        return v

    @field_validator("ray_actor_options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _actor_options(v, DEFAULT_VARIANT_CPUS)

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> VariantSpec:
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise ValueError("give either `replicas` or `autoscaling`, not both")
        return self

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.replicas


def ref_text(version: int | str) -> str:
    """A variant's reference as written: ``"v3"`` for 3/"3"/"v3", ``"@alias"`` for an alias."""
    if isinstance(version, bool):
        raise ValueError(f"expected a version number, v<N> or @ALIAS; got {version!r}")
    text = str(version).strip()
    if text.startswith("@"):
        parse_ref(f"m{text}")  # a valid alias name
        return text
    num = text[1:] if text[:1] == "v" else text
    if not num.isdigit() or int(num) < 1:
        raise ValueError(f"expected a version number, v<N> or @ALIAS; got {version!r}")
    return f"v{int(num)}"


class KeySpec(StrictModel):
    """Where the sticky key comes from: a header or a top-level field of the JSON body."""

    header: Annotated[str, Field(pattern=_HEADER_RE)] | None = None
    field: Annotated[str, Field(pattern=_FIELD_RE)] | None = None

    @model_validator(mode="after")
    def _one(self) -> KeySpec:
        if (self.header is None) == (self.field is None):
            raise ValueError("give exactly one of `header` (e.g. X-User-Id) or `field` (e.g. user_id)")
        if self.field in ("features", "instances", "request_id"):
            raise ValueError(f"field {self.field!r} is part of the request body format; pick another")
        return self


class ShadowSpec(StrictModel):
    """A variant that gets a copy of every request not routed to it; its answer is ignored."""

    #: A variant as written in ``variants`` (``v4``, ``4`` or ``@candidate``).
    variant: int | str

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: int | str) -> int | str:
        ref_text(v)
        return v


class IngressSpec(StrictModel):
    """The HTTP ingress (router) deployment."""

    replicas: Annotated[int, Field(ge=1)] = 1
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": DEFAULT_INGRESS_CPUS})
    max_ongoing_requests: Annotated[int, Field(ge=1)] = 256

    @field_validator("ray_actor_options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _actor_options(v, DEFAULT_INGRESS_CPUS)


#: ``serving.mode: auto`` colocates the variants when their model packages sum to less than this
#: (bytes).  Every router replica holds every variant: 256 MiB of small models (the digits MLPs
#: are 40 KiB, a tabular MLP a few MiB) loads in seconds and fits beside the router's own
#: ~200 MiB; bigger ones are better served by their own replicas (routed).
COLOCATE_MAX_BYTES = 256 << 20


class ServingModeSpec(StrictModel):
    """How requests reach the variants' models."""

    mode: Literal["auto", "colocated", "routed"] = Field(
        default="auto",
        description="`colocated`: every router (ingress) replica loads the app's variants in-process and calls "
        "them directly (no second hop); `routed`: one Serve deployment per variant behind the router (for large "
        "models or models needing GPUs); `auto`: colocated when the variants' model packages sum to less than "
        "`colocate_max_bytes` and no variant asks for GPUs, custom resources or autoscaling, else routed.",
    )
    colocate_max_bytes: Annotated[int, Field(ge=0)] = Field(
        default=COLOCATE_MAX_BYTES,
        description="`auto`'s threshold: the sum of the variants' model package sizes (bytes) below which they "
        "are colocated (default 256 MiB).",
    )


class MonitorConfig(MonitorSpec):
    """The app's drift monitor: :class:`~raypipe.monitoring.spec.MonitorSpec`'s fields, plus where
    its reference comes from."""

    #: The reference profile (an artifact's sha256 or URI); default: the ``reference_profile``
    #: registered with the reference variant's version (a register stage's ``profile`` input).
    profile: str | None = None
    #: The variant whose model and profile are the reference, as written in ``variants``;
    #: default: the one serving ``@production``, else the one with the most traffic.
    variant: int | str | None = None

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            ref_text(v)
        return v

    def monitor_spec(self) -> MonitorSpec:
        return MonitorSpec.model_validate(self.model_dump(exclude={"profile", "variant"}))


class CandidateOptions(StrictModel):
    """The retrained candidate's variant (default: as the reference variant's)."""

    replicas: Annotated[int, Field(ge=1)] | None = None
    ray_actor_options: dict[str, Any] | None = None
    max_ongoing_requests: Annotated[int, Field(ge=1)] | None = None
    #: TESTING ONLY: the candidate answers 500 for this fraction of requests (a broken
    #: retraining, to see the canary roll back).
    fail_rate: Annotated[float, Field(ge=0, le=1)] = 0.0

    @field_validator("ray_actor_options")
    @classmethod
    def _options(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _actor_options(v, DEFAULT_VARIANT_CPUS)


class RetrainSpec(StrictModel):
    """The closed loop (:mod:`raypipe.loop`): on a drift event that triggers, run the
    retraining path of a pipeline through the scheduler, then roll its model out as a canary
    and promote it or roll it back."""

    #: The pipeline YAML; default in a ``deploy`` stage: the pipeline that deploys.
    pipeline: str | None = None
    #: The retraining path: these stages and every stage they depend on; default: every
    #: stage the app's deploy stage depends on (or, without one, every non-deploy stage).
    stages: list[str] | None = None
    #: Overrides of the pipeline for retraining, as ``--set`` takes them (``PATH: VALUE``):
    #: e.g. the fresh data source, ``stages.ingest.params.path: data/latest/``.
    set: dict[str, Any] = Field(default_factory=dict)
    #: Scheduler priority and team of every stage of a retraining run.
    priority: int = 10
    team: str | None = None
    #: The canary: steps, their length and the guardrails.
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    candidate: CandidateOptions = Field(default_factory=CandidateOptions)
    #: Keep the replaced production variant deployed at 0% after a promotion.
    keep_previous: bool = False
    #: How often the loop looks at the monitor, the run and the rollout.
    poll_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    #: A retraining run whose driver died is resumed this many times before the cycle fails.
    max_resumes: Annotated[int, Field(ge=0, le=10)] = 2


def _reference(value: str, field: str) -> str:
    if not is_reference(value):
        raise ValueError(
            f"{field}: expected a secret reference, ${{env:NAME}} or ${{file:PATH}}, got a literal value; "
            "a literal would be stored with the app's spec (write the value into a variable or a file)"
        )
    return value


class AuthSpec(StrictModel):
    """Bearer tokens of the app's routes (``Authorization: Bearer <token>``), each a secret
    reference resolved where the app is deployed; the router keeps only their SHA-256.
    ``/health`` and ``/metadata`` stay open."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"predict_tokens", "feedback_tokens"})

    predict_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens accepted by POST /predict (none: /predict is open), each `${env:NAME}` or `${file:PATH}`.",
    )
    feedback_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens accepted by POST /feedback (none: the app takes no feedback). Only labels of "
        "authenticated feedback feed performance drift.",
    )

    @field_validator("predict_tokens", "feedback_tokens")
    @classmethod
    def _refs(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            _reference(text, f"[{i}]")
        return v

    @model_validator(mode="after")
    def _some(self) -> AuthSpec:
        if not self.predict_tokens and not self.feedback_tokens:
            raise ValueError("give predict_tokens, feedback_tokens or both (or leave `auth` out: no auth)")
        return self


class ForceVariantSpec(StrictModel):
    """Forcing a variant by header, for testing: off unless this section is given, and then
    only with its own token.  Forced requests are counted apart (``forced_*``) and never in
    A/B statistics, rollout guardrails or drift windows."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"token"})

    header: Annotated[str, Field(pattern=_HEADER_RE)] = Field(
        default="X-Raypipe-Variant", description="The header naming the variant (`v3`)."
    )
    token_header: Annotated[str, Field(pattern=_HEADER_RE)] = Field(
        default="X-Raypipe-Force-Token", description="The header carrying `token` (401 without, 403 wrong)."
    )
    token: str = Field(description="The secret a forcing request must carry: `${env:NAME}` or `${file:PATH}`.")

    @field_validator("token")
    @classmethod
    def _ref(cls, v: str) -> str:
        return _reference(v, "token")

    @model_validator(mode="after")
    def _distinct(self) -> ForceVariantSpec:
        if self.header.lower() == self.token_header.lower() or "authorization" in (
            self.header.lower(),
            self.token_header.lower(),
        ):
            raise ValueError("header and token_header must be two different headers, neither Authorization")
        return self


class FeedbackSpec(StrictModel):
    """What ``/feedback`` accepts for a request id."""

    on_repeat: Literal["reject", "replace"] = Field(
        default="reject",
        description="A second outcome for the same request id: `reject` (409) or `replace` (the first is "
        "taken back from the sums). A second label is always refused (409).",
    )
    window_s: Annotated[float, Field(ge=1, le=30 * 86400)] = Field(
        default=86400.0,
        description="Feedback for a request id issued longer ago than this gets 410 (the collector also "
        "forgets ids older than this).",
    )


class ServeSpec(StrictModel):
    """A served application: a registered model's versions behind one HTTP ingress."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"secret"})

    app: Annotated[str, Field(pattern=NAME_RE)]
    model: Annotated[str, Field(pattern=NAME_RE)]
    variants: Annotated[list[VariantSpec], Field(min_length=1)]
    key: KeySpec | None = None
    #: Bearer tokens of /predict and /feedback (none: both open; see :class:`AuthSpec`).
    auth: AuthSpec | None = None
    #: Forcing a variant by header (none: off; a request with the header gets 403).
    force_variant: ForceVariantSpec | None = None
    secret: str | None = Field(
        default=None,
        description="The secret that signs the app's request ids: `${env:NAME}` or `${file:PATH}` (none: a key "
        "made at the first deploy and kept for later deploys of the app).",
    )
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    shadow: ShadowSpec | None = None
    #: Default ``/<app>``.
    route_prefix: str | None = None
    #: Serve's HTTP port and host (one per cluster: set by the first app deployed).
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    host: str = "127.0.0.1"
    #: Mixed into the routing hash: a new salt reshuffles which keys get which variant.
    salt: str = ""
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = Field(
        default=MAX_BODY_BYTES,
        description="Largest request body (bytes) /predict and /feedback accept; larger ones (by their "
        "Content-Length, or as soon as a chunked body passes it) get 413 before anything is parsed.",
    )
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    #: Colocated (variants in the router's replicas) or routed (a deployment per variant).
    serving: ServingModeSpec = Field(default_factory=ServingModeSpec)
    #: Book every replica's resources (autoscaling: max_replicas) with raypipe's scheduler.
    reserve: bool = True
    reserve_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    #: How long to wait for the Serve application to be running.
    deploy_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    #: A drift monitor of live traffic (see :class:`MonitorConfig`).
    monitor: MonitorConfig | None = None
    #: Retrain on drift, canary, promote or roll back (needs ``monitor``).
    retrain: RetrainSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "force_header" in data:
            raise ValueError(
                "force_header: forcing a variant is off by default now and needs its own secret: "
                "force_variant: {header: X-Raypipe-Variant, token: ${env:NAME}}"
            )
        return data

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return None if v is None else _reference(v, "secret")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or (len(v) > 1 and v.endswith("/")) or " " in v):
            raise ValueError(f"expected a path like /digits (leading '/', no trailing '/'); got {v!r}")
        return v

    @model_validator(mode="after")
    def _split(self) -> ServeSpec:
        refs = [ref_text(v.version) for v in self.variants]
        dup = sorted({r for r in refs if refs.count(r) > 1})
        if dup:
            raise ValueError(f"variants: {', '.join(dup)} listed more than once")
        total = sum(v.weight for v in self.variants)
        if not math.isclose(total, TOTAL, abs_tol=TOLERANCE):
            given = ", ".join(f"{r}={v.weight:g}" for r, v in zip(refs, self.variants, strict=True))
            raise ValueError(f"variants: weights must sum to 100; {given} sum to {total:g}")
        if self.retrain is not None and self.monitor is None:
            raise ValueError("retrain: needs `monitor` (retraining is triggered by its drift events)")
        if self.monitor is not None and self.monitor.variant is not None and ref_text(self.monitor.variant) not in refs:
            raise ValueError(
                f"monitor.variant: {self.monitor.variant!r} is not one of the variants ({', '.join(refs)})"
            )
        if self.shadow is not None and ref_text(self.shadow.variant) not in refs:
            raise ValueError(
                f"shadow: {self.shadow.variant!r} is not one of the variants ({', '.join(refs)}); "
                "name it as it is written in `variants`"
            )
        return self

    @property
    def prefix(self) -> str:
        return self.route_prefix or f"/{self.app}"


def load_spec(path: str | os.PathLike[str], data: Mapping[str, Any] | None = None) -> ServeSpec:
    """Read an app spec YAML file; errors name the file, line and field."""
    p = Path(path)
    if data is None:
        if not p.is_file():
            raise ConfigError(f"{path}: no such file")
        data, source = parse_yaml(p.read_text(encoding="utf-8"), str(path))
    else:
        source = ConfigSource(path=str(path))
    try:
        return ServeSpec.model_validate(data)
    except ValidationError as e:
        raise source.error(validation_issues(e, model=ServeSpec)) from None


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such file")
    data, _ = parse_yaml(p.read_text(encoding="utf-8"), str(path))
    return data


__all__ = [
    "AuthSpec",
    "AutoscalingSpec",
    "CandidateOptions",
    "FeedbackSpec",
    "ForceVariantSpec",
    "IngressSpec",
    "KeySpec",
    "ModelNotFoundError",
    "MonitorConfig",
    "RetrainSpec",
    "ServeSpec",
    "ServingModeSpec",
    "ShadowSpec",
    "VariantSpec",
    "WeightsError",
    "load_spec",
    "replica_resources",
]
