"""Canary rollouts: move traffic to a candidate variant step by step, behind guardrails.

Three layers, the first two without Ray:

* :func:`decide` (pure): given the step plan, the guardrails and one window of
  baseline and candidate numbers (the collector's snapshot since the step began),
  return ``wait`` | ``advance`` | ``hold`` (too little traffic or evidence; the reason
  says how much is missing) | ``rollback`` (which guardrail, observed vs allowed) |
  ``promote``.
* :class:`RolloutRun`: the state machine of one rollout over four ports
  (``set_weights``, ``snapshot``, ``set_production``, ``record``) and a clock; it sets
  the weights of each step, ticks, acts on decisions and records every event.
* :class:`RolloutController`: the named detached actor (``raypipe-rollout-<app>``,
  namespace ``raypipe``, on the head node, restartable) that runs a
  :class:`RolloutRun` on a thread, with the real ports: the serving core's
  ``set_weights``, the app's metrics collector, the model registry (the
  ``production`` alias) and ``rollout_events`` in the metadata store (SQLite, path
  given to the actor).  A restarted controller resumes the unfinished rollout at its
  last step from the recorded events.  Killing the driver does not stop a rollout.

Steps are candidate percentages, strictly increasing, ending at 100: each step
below 100 lasts ``interval_s`` (longer while paused) and is then judged on its own
window; passing the last one promotes (candidate 100%, ``production`` alias moved).
Guardrails are checked every tick (``interval_s / 4``, at most 5 s), so a violation
rolls back (candidate weight 0) within one interval.  They compare the candidate
with the baseline *in the same window* (concurrent control):

* ``error_rate``: violated when ``rate(candidate) - rate(baseline) > max_increase``
  and the one-sided Fisher exact test says the candidate's rate is higher at
  ``alpha`` (default 0.01, strict because every tick looks again; ``alpha: null``
  drops the test, ``max_increase: null`` keeps only the test).  Judged once both have ``min_requests`` in the window;
  before that, an early stop rolls back when the increase is over the limit and the
  test's p-value is below ``early_alpha`` (0.001): 30% failures show up in a dozen
  requests.  The test keeps a few unlucky errors on a small window (1 of 20 against
  a 1% baseline: +4 points, p = 0.2) from rolling back a good candidate.
* ``p99_latency_ms``: violated when ``p99(candidate) > max_ratio * p99(baseline)`` and
  the increase is at least ``min_increase_ms`` (p99 comes from the collector's
  histogram buckets; tiny absolute differences are noise).  Judged once both have
  ``max(min_requests, min_samples)`` requests (``min_samples`` default 100: the p99
  of fewer is little more than their slowest one); until then a finished step holds.
* ``business`` (optional): ``conversion`` or ``mean_outcome`` of the fed-back outcomes;
  violated when ``baseline - candidate > max_decrease``.  Judged at ``min_outcomes``
  (default ``min_requests``) outcomes each; until then a finished step holds.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.serve.abstats import VariantStats, fisher_greater
from raypipe.serve.actors import singleton_options

NAMESPACE = "raypipe"
CONTROLLER_PREFIX = "raypipe-rollout-"
METRICS_PREFIX = "raypipe-serve-metrics-"

WAIT, ADVANCE, HOLD, ROLLBACK, PROMOTE = "wait", "advance", "hold", "rollback", "promote"
OK, VIOLATED, PENDING = "ok", "violated", "not enough data"

# --------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


Fraction = Annotated[float, Field(ge=0, le=1)]
Alpha = Annotated[float, Field(gt=0, lt=1)]


class ErrorRateGuard(_Strict):
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


class LatencyGuard(_Strict):
    #: Largest allowed ``p99(candidate) / p99(baseline)``.
    max_ratio: Annotated[float, Field(ge=1)] = 1.5
    #: Ignore p99 increases smaller than this many milliseconds.
    min_increase_ms: Annotated[float, Field(ge=0)] = 5.0
    #: Requests each variant needs in a step before its p99 is compared (also at least
    #: ``min_requests``): the p99 of a few dozen requests is just their slowest one.
    min_samples: Annotated[int, Field(ge=1)] = 100


class BusinessGuard(_Strict):
    metric: Literal["conversion", "mean_outcome"]
    #: Largest allowed ``baseline - candidate`` of the metric (absolute).
    max_decrease: Annotated[float, Field(ge=0)]
    #: Outcomes each variant needs in a step before the metric is judged (default: min_requests).
    min_outcomes: Annotated[int, Field(ge=2)] | None = None


class Guardrails(_Strict):
    error_rate: ErrorRateGuard | None = Field(default_factory=ErrorRateGuard)
    p99_latency_ms: LatencyGuard | None = Field(default_factory=LatencyGuard)
    business: BusinessGuard | None = None
    #: Requests the candidate and the baseline each need in a step before it can pass.
    min_requests: Annotated[int, Field(ge=1)] = 100


class RolloutSettings(_Strict):
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
    from raypipe.config import format_loc, validation_issues

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
    from raypipe.config import parse_yaml

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
    from raypipe.config import parse_yaml, validation_issues

    shown = str(path)
    data = read_rollout_file(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return RolloutSpec.model_validate(data)
    except ValidationError as e:
        _, source = parse_yaml(Path(path).read_text(encoding="utf-8"), shown)
        raise source.error(validation_issues(e, prefix=("rollout",), model=RolloutSpec)) from None


class RolloutPlan(_Strict):
    """A spec resolved against the app and the registry: what the controller runs."""

    rollout_id: str
    app: str
    model: str | None
    baseline: str
    candidate: str
    steps: list[float]
    interval_s: float
    guardrails: Guardrails
    spec: dict[str, Any] = Field(default_factory=dict)

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


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class GuardrailCheck:
    name: str  # error_rate | p99_latency_ms | business
    status: str  # ok | violated | not enough data
    observed: dict[str, Any]
    allowed: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


@dataclass(frozen=True)
class Decision:
    action: str  # wait | advance | hold | rollback | promote
    reason: str
    step_index: int
    #: The candidate's percentage after acting on the decision.
    candidate_percent: float
    guardrail: str | None = None
    checks: list[GuardrailCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [c.to_dict() for c in self.checks]
        return _finite(d)


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.2%}" if pct else f"{v:.4g}"


def check_error_rate(g: ErrorRateGuard, min_requests: int, base: VariantStats, cand: VariantStats) -> GuardrailCheck:
    parts = []
    if g.max_increase is not None:
        parts.append(f"candidate - baseline <= {g.max_increase:.2%}")
    if g.alpha is not None:
        parts.append(f"or not significantly worse (one-sided Fisher exact, alpha {g.alpha:g})")
    allowed = " ".join(parts)
    obs: dict[str, Any] = {
        "candidate": cand.error_rate,
        "baseline": base.error_rate,
        "candidate_requests": cand.requests,
        "baseline_requests": base.requests,
        "candidate_errors": cand.errors,
        "baseline_errors": base.errors,
    }
    if not cand.requests or not base.requests:
        return GuardrailCheck("error_rate", PENDING, obs, allowed, "no requests yet")
    diff = cand.errors / cand.requests - base.errors / base.requests
    p = fisher_greater(cand.errors, cand.requests, base.errors, base.requests)
    obs["increase"] = diff
    obs["p_value"] = p
    text = (
        f"error rate {_fmt(cand.error_rate, True)} ({cand.errors}/{cand.requests}) vs baseline "
        f"{_fmt(base.error_rate, True)} ({base.errors}/{base.requests}): {diff:+.2%}, p = {p:.2g}"
    )
    over = g.max_increase is None or diff > g.max_increase
    if cand.requests >= min_requests and base.requests >= min_requests:
        bad = over and (g.alpha is None or p < g.alpha)
        return GuardrailCheck("error_rate", VIOLATED if bad else OK, obs, allowed, text)
    if over and p < g.early_alpha:
        return GuardrailCheck("error_rate", VIOLATED, obs, allowed, f"{text} < {g.early_alpha:g}: early stop")
    return GuardrailCheck("error_rate", PENDING, obs, allowed, f"{text}; judged at {min_requests} requests each")


def check_latency(g: LatencyGuard, min_requests: int, base: VariantStats, cand: VariantStats) -> GuardrailCheck:
    allowed = f"p99 <= {g.max_ratio:g} x baseline (increases under {g.min_increase_ms:g} ms ignored)"
    obs = {"candidate_p99_ms": cand.p99_ms, "baseline_p99_ms": base.p99_ms}
    need = max(min_requests, g.min_samples)
    if cand.requests < need or base.requests < need or cand.p99_ms is None or not base.p99_ms:
        return GuardrailCheck(
            "p99_latency_ms",
            PENDING,
            obs,
            allowed,
            f"p99 judged at {need} requests each (candidate {cand.requests}, baseline {base.requests})",
        )
    ratio = cand.p99_ms / base.p99_ms
    obs["ratio"] = ratio
    text = f"p99 {cand.p99_ms:.4g} ms vs baseline {base.p99_ms:.4g} ms (x{ratio:.2f})"
    bad = ratio > g.max_ratio and cand.p99_ms - base.p99_ms >= g.min_increase_ms
    return GuardrailCheck("p99_latency_ms", VIOLATED if bad else OK, obs, allowed, text)


def check_business(g: BusinessGuard, min_requests: int, base: VariantStats, cand: VariantStats) -> GuardrailCheck:
    need = g.min_outcomes or min_requests
    allowed = f"baseline - candidate <= {g.max_decrease:g}"
    vc = cand.conversion if g.metric == "conversion" else cand.mean_outcome
    vb = base.conversion if g.metric == "conversion" else base.mean_outcome
    obs = {
        "metric": g.metric,
        "candidate": vc,
        "baseline": vb,
        "candidate_n": cand.outcomes,
        "baseline_n": base.outcomes,
    }
    if cand.outcomes < need or base.outcomes < need or vc is None or vb is None:
        return GuardrailCheck(
            "business",
            PENDING,
            obs,
            allowed,
            f"{g.metric}: {cand.outcomes} candidate and {base.outcomes} baseline outcomes; needs {need} each",
        )
    obs["decrease"] = vb - vc
    text = f"{g.metric} {vc:.4g} vs baseline {vb:.4g} ({vc - vb:+.4g})"
    return GuardrailCheck("business", VIOLATED if vb - vc > g.max_decrease else OK, obs, allowed, text)


def check_guardrails(g: Guardrails, base: VariantStats, cand: VariantStats) -> list[GuardrailCheck]:
    out = []
    if g.error_rate is not None:
        out.append(check_error_rate(g.error_rate, g.min_requests, base, cand))
    if g.p99_latency_ms is not None:
        out.append(check_latency(g.p99_latency_ms, g.min_requests, base, cand))
    if g.business is not None:
        out.append(check_business(g.business, g.min_requests, base, cand))
    return out


def decide(
    steps: list[float],
    guardrails: Guardrails,
    step_index: int,
    baseline: VariantStats,
    candidate: VariantStats,
    step_done: bool,
) -> Decision:
    """The decision for the window of step ``step_index`` (its numbers since the step began).

    A violated guardrail rolls back at any time; otherwise nothing happens until the
    step has lasted its interval (``step_done``).  Then the step holds while either
    variant has fewer than ``min_requests`` requests or a guardrail still lacks data,
    else the rollout advances to the next step, or promotes if that step is 100."""
    if not 0 <= step_index < len(steps) - 1:
        raise ValueError(f"step_index {step_index} outside the observed steps of {steps}")
    here = steps[step_index]
    checks = check_guardrails(guardrails, baseline, candidate)
    bad = [c for c in checks if c.status == VIOLATED]
    if bad:
        c = bad[0]
        return Decision(ROLLBACK, f"{c.name}: {c.message}; allowed: {c.allowed}", step_index, 0.0, c.name, checks)
    if not step_done:
        return Decision(WAIT, f"step {step_index + 1} ({here:g}%) in progress", step_index, here, None, checks)
    need = guardrails.min_requests
    short = [
        f"{v.label} ({role}) has {v.requests} of {need} requests"
        for role, v in (("candidate", candidate), ("baseline", baseline))
        if v.requests < need
    ]
    pending = [f"{c.name}: {c.message}" for c in checks if c.status == PENDING]
    if short or pending:
        why = "; ".join(short) if short else "; ".join(pending)
        return Decision(
            HOLD, f"too little traffic to judge step {step_index + 1}: {why}", step_index, here, None, checks
        )
    nxt = steps[step_index + 1]
    summary = "; ".join(f"{c.name} ok ({c.message})" for c in checks) or "no guardrails"
    if nxt >= 100:
        return Decision(PROMOTE, f"every step passed: {summary}", step_index, 100.0, None, checks)
    return Decision(ADVANCE, f"step {step_index + 1} ({here:g}%) passed: {summary}", step_index, nxt, None, checks)


# --------------------------------------------------------------------------- the state machine


@dataclass
class Ports:
    """What a rollout touches.  ``set_production(version, reason)`` returns the previous
    production version (None if there was none)."""

    set_weights: Callable[[dict[str, float]], Any]
    snapshot: Callable[[float], Mapping[str, Mapping[str, Any]]]
    set_production: Callable[[int, str], int | None]
    record: Callable[[str, dict[str, Any]], Any]


ACTIVE = ("running", "paused")


class RolloutRun:
    """One rollout: sets each step's weights, judges every tick, records every event.

    States: ``pending`` -> ``running`` <-> ``paused`` -> ``promoted`` | ``rolled_back`` |
    ``aborted``.  A port that fails (e.g. ``set_weights`` while Serve is busy) leaves
    the state as it was; the action is retried on the next tick (a rollback or an abort
    stays pending until done)."""

    def __init__(self, plan: RolloutPlan, ports: Ports, clock: Callable[[], float] = time.time) -> None:
        self.plan = plan
        self.ports = ports
        self.clock = clock
        self.state = "pending"
        self.step_index = 0
        self.step_started_at: float | None = None
        self.weights: dict[str, float] = {}
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.last_decision: dict[str, Any] | None = None
        self.end_reason: str | None = None
        self._pending_stop: tuple[str, str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ transitions
    def begin(self) -> None:
        """Record ``started`` and enter the first step."""
        self.started_at = self.clock()
        self.ports.record(
            "started",
            {
                "plan": self.plan.model_dump(mode="json"),
                "baseline": self.plan.baseline,
                "candidate": self.plan.candidate,
                "steps": self.plan.steps,
            },
        )
        self._enter_step(0, "rollout started", {})

    def resume(self, step_index: int, started_at: float | None, reason: str) -> None:
        """Continue at ``step_index`` (a restarted controller): the step's window starts again."""
        self.started_at = started_at
        self.ports.record("resumed", {"step_index": step_index, "reason": reason})
        self._enter_step(step_index, f"resumed: {reason}", {})

    def _weights(self, candidate_percent: float) -> dict[str, float]:
        return {self.plan.baseline: 100.0 - candidate_percent, self.plan.candidate: candidate_percent}

    def _enter_step(self, i: int, reason: str, window: dict[str, Any]) -> None:
        weights = self._weights(self.plan.steps[i])
        self.ports.set_weights(weights)
        self.step_index, self.weights, self.step_started_at = i, weights, self.clock()
        self.state = "running"
        self.ports.record(
            "step",
            {
                "step_index": i,
                "step": i + 1,
                "percent": self.plan.steps[i],
                "weights": weights,
                "reason": reason,
                "previous_window": window,
            },
        )

    def abort(self, reason: str = "aborted by the user") -> None:
        if self.state not in ACTIVE and self._pending_stop is None:
            raise RaypipeError(f"rollout {self.plan.rollout_id} is {self.state}; nothing to abort")
        self._pending_stop = ("aborted", reason, {"step_index": self.step_index, "reason": reason})
        self._finish_stop()

    def _finish_stop(self) -> None:
        assert self._pending_stop is not None
        event, reason, detail = self._pending_stop
        weights = self._weights(0.0)
        self.ports.set_weights(weights)  # raises: stays pending, retried next tick
        self.weights = weights
        self._pending_stop = None
        self.state = event
        self.ended_at = self.clock()
        self.end_reason = reason
        self.ports.record(event, {**detail, "weights": weights})

    # ------------------------------------------------------------------ ticks
    def window(self) -> tuple[VariantStats, VariantStats, dict[str, Any]]:
        assert self.step_started_at is not None
        snap = self.ports.snapshot(self.step_started_at)
        base = VariantStats.from_snapshot(self.plan.baseline, snap.get(self.plan.baseline))
        cand = VariantStats.from_snapshot(self.plan.candidate, snap.get(self.plan.candidate))
        doc = {
            "since": self.step_started_at,
            "seconds": self.clock() - self.step_started_at,
            "baseline": _brief(base),
            "candidate": _brief(cand),
        }
        return base, cand, doc

    def tick(self) -> Decision | None:
        """Judge the current window and act.  None when the rollout is over."""
        if self._pending_stop is not None:
            self._finish_stop()
            return None
        if self.state not in ACTIVE:
            return None
        base, cand, window = self.window()
        assert self.step_started_at is not None
        done = self.clock() - self.step_started_at >= self.plan.interval_s
        d = decide(self.plan.steps, self.plan.guardrails, self.step_index, base, cand, done)
        self.last_decision = {**d.to_dict(), "at": self.clock(), "window": window}
        if d.action == ROLLBACK:
            observed = next(c.observed for c in d.checks if c.name == d.guardrail)
            allowed = next(c.allowed for c in d.checks if c.name == d.guardrail)
            self._pending_stop = (
                "rolled_back",
                d.reason,
                {
                    "step_index": self.step_index,
                    "percent": self.plan.steps[self.step_index],
                    "guardrail": d.guardrail,
                    "observed": _finite(observed),
                    "allowed": allowed,
                    "reason": d.reason,
                    "window": window,
                },
            )
            self._finish_stop()
        elif d.action == HOLD:
            if self.state != "paused":
                self.state = "paused"
                self.ports.record(
                    "paused",
                    {
                        "step_index": self.step_index,
                        "percent": self.plan.steps[self.step_index],
                        "reason": d.reason,
                        "window": window,
                    },
                )
        elif d.action == ADVANCE:
            self._enter_step(self.step_index + 1, d.reason, window)
        elif d.action == PROMOTE:
            self._promote(d, window)
        return d

    def _promote(self, d: Decision, window: dict[str, Any]) -> None:
        weights = {self.plan.baseline: 0.0, self.plan.candidate: 100.0}
        self.ports.set_weights(weights)
        self.weights = weights
        version = self.plan.candidate_version
        previous: int | None = None
        note = ""
        if self.plan.model and version is not None:
            why = f"rollout {self.plan.rollout_id} of app {self.plan.app}: {d.reason}"
            previous = self.ports.set_production(version, why[:500])
        else:
            note = "no registry model for this app: the production alias was not moved"
        self.state = "promoted"
        self.ended_at = self.clock()
        self.end_reason = d.reason
        self.ports.record(
            "promoted",
            {
                "weights": weights,
                "model": self.plan.model,
                "production": version,
                "previous_production": previous,
                "reason": d.reason,
                "window": window,
                **({"note": note} if note else {}),
            },
        )

    def status(self) -> dict[str, Any]:
        """The rollout as it is.  ``step`` counts the steps as listed (1 to ``len(steps)``; the
        last, 100%, is the promotion); after a stop it is the step the rollout stopped at.
        ``stopping``: a rollback or abort whose weights are not set yet (retried every tick)."""
        now = self.clock()
        return _finite(
            {
                "rollout_id": self.plan.rollout_id,
                "app": self.plan.app,
                "model": self.plan.model,
                "baseline": self.plan.baseline,
                "candidate": self.plan.candidate,
                "state": self.state,
                "stopping": self._pending_stop[0] if self._pending_stop is not None else None,
                "steps": self.plan.steps,
                "step_index": self.step_index,
                "step": len(self.plan.steps) if self.state == "promoted" else self.step_index + 1,
                "percent": self.plan.steps[self.step_index]
                if self.state in ACTIVE
                else self.weights.get(self.plan.candidate),
                "weights": dict(self.weights),
                "interval_s": self.plan.interval_s,
                "step_elapsed_s": (now - self.step_started_at)
                if self.step_started_at and self.state in ACTIVE
                else None,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "end_reason": self.end_reason,
                "last_decision": self.last_decision,
                "guardrails": self.plan.guardrails.model_dump(mode="json"),
            }
        )


# --------------------------------------------------------------------------- what `rollout status` says


def status_from_events(events: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A rollout's status as its recorded events tell it (no controller to ask): state, steps,
    the step it is at or stopped at, weights, the reason it ended; the keys of
    :meth:`RolloutRun.status` that the events hold (``events``: ``StoredEvent.to_dict()``)."""
    if not events or events[0]["event"] != "started":
        return None
    first = events[0]["detail"]
    plan = first.get("plan") or {}
    steps = [float(x) for x in first.get("steps") or plan.get("steps") or []]
    st: dict[str, Any] = {
        "rollout_id": plan.get("rollout_id"),
        "app": events[0].get("app"),
        "baseline": first.get("baseline"),
        "candidate": first.get("candidate"),
        "state": "pending",
        "stopping": None,
        "steps": steps,
        "step_index": 0,
        "step": 1,
        "percent": None,
        "weights": {},
        "interval_s": plan.get("interval_s"),
        "step_elapsed_s": None,
        "started_at": events[0].get("at"),
        "ended_at": None,
        "end_reason": None,
        "last_decision": None,
    }
    for e in events[1:]:
        kind, d = e["event"], e.get("detail") or {}
        if kind == "step":
            st.update(state="running", step_index=int(d.get("step_index", 0)), percent=d.get("percent"))
            st["weights"] = dict(d.get("weights") or {})
        elif kind == "paused":
            st["state"] = "paused"
        elif kind in ("promoted", "rolled_back", "aborted", "failed"):
            st.update(state=kind, ended_at=e.get("at"), end_reason=d.get("reason"))
            if "step_index" in d:
                st["step_index"] = int(d["step_index"])
            if d.get("weights"):
                st["weights"] = dict(d["weights"])
            st["percent"] = st["weights"].get(st["candidate"])
    st["step"] = len(steps) if st["state"] == "promoted" else st["step_index"] + 1
    return st


def progress_text(st: Mapping[str, Any]) -> str:
    """Where a rollout is, in one line, counting the steps as listed (the last, 100%, is the
    promotion): ``step 2 of 4 (5% -> 25% -> 50% -> 100%): v4 at 25% for 12 s of 60 s``, or
    the step it stopped at: ``aborted at step 1 of 4 (...): v4 was at 5%, now 0%``."""
    steps = list(st.get("steps") or [])
    n = len(steps)
    i = int(st.get("step_index") or 0)
    plan = " -> ".join(f"{x:g}%" for x in steps)
    cand = st.get("candidate")
    state = st.get("state")
    at = steps[i] if 0 <= i < n else None
    now = st.get("percent")
    now_text = "-" if now is None else f"{now:g}%"
    if state == "promoted":
        return f"promoted: step {n} of {n} ({plan}): {cand} at {now_text}"
    was = f"{cand} was at {at:g}%, now {now_text}" if at is not None else f"{cand} now at {now_text}"
    if st.get("stopping"):
        verb = "aborting" if st["stopping"] == "aborted" else "rolling back"
        return f"{verb} at step {i + 1} of {n} ({plan}): {cand} at {now_text} until its weight is set to 0 (retried)"
    if state in ("aborted", "rolled_back"):
        return f"{state.replace('_', ' ')} at step {i + 1} of {n} ({plan}): {was}"
    if state == "failed":
        return f"failed before its first step ({plan})"
    if state in ACTIVE:
        elapsed = st.get("step_elapsed_s")
        interval = st.get("interval_s")
        text = f"step {i + 1} of {n} ({plan}): {cand} at {now_text}"
        if elapsed is not None and interval:
            text += f" for {elapsed:.0f} s of {interval:g} s"
        return text + (" (paused: too little traffic to judge the step)" if state == "paused" else "")
    return f"{state} ({plan})"


def _brief(v: VariantStats) -> dict[str, Any]:
    return {
        "requests": v.requests,
        "errors": v.errors,
        "error_rate": v.error_rate,
        "p99_ms": v.p99_ms,
        "outcomes": v.outcomes,
        "conversion": v.conversion,
        "mean_outcome": v.mean_outcome,
    }


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def tick_seconds(interval_s: float) -> float:
    """How often a controller judges: a quarter interval, between 0.2 and 5 s."""
    return min(max(interval_s / 4.0, 0.2), 5.0)


# --------------------------------------------------------------------------- the actor


def controller_name(app: str) -> str:
    return CONTROLLER_PREFIX + app


def metrics_actor_name(app: str) -> str:
    return METRICS_PREFIX + app


class RolloutController:
    """The rollout of one app, as a named detached Ray actor (see :func:`start_controller`).

    On (re)start it reads the app's latest rollout from ``rollout_events``; an
    unfinished one is resumed at its last step.  ``start`` begins a new rollout when
    none is active; ``status`` and ``abort`` may be called at any time (the actor runs
    methods on several threads; one lock guards the rollout)."""

    def __init__(self, app: str, db_path: str) -> None:
        from raypipe.store.metadata import MetadataStore
        from raypipe.store.registry import ModelRegistry
        from raypipe.store.rollouts import TERMINAL, RolloutStore

        self.app = app
        self.meta = MetadataStore(db_path)
        self.store = RolloutStore(self.meta)
        self.registry = ModelRegistry(self.meta)
        self.lock = threading.RLock()
        self.run: RolloutRun | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        events = self.store.events(app)
        if events and events[0].event == "started" and events[-1].event not in TERMINAL:
            plan = RolloutPlan.model_validate(events[0].detail["plan"])
            steps = [e for e in events if e.event == "step"]
            index = int(steps[-1].detail.get("step_index", 0)) if steps else 0
            self.run = RolloutRun(plan, self._ports(plan))
            try:
                self.run.resume(index, events[0].at, "the rollout controller restarted")
            except Exception as e:  # noqa: BLE001 - retried by the loop
                self._error(f"resuming: {e}")
                self.run.state = "running"
                self.run.step_index = index
                self.run.step_started_at = time.time()
            self._start_thread()
        elif events:
            plan = RolloutPlan.model_validate(events[0].detail["plan"]) if events[0].event == "started" else None
            if plan is not None:
                self.run = RolloutRun(plan, self._ports(plan))
                self.run.state = events[-1].event
                self.run.started_at, self.run.ended_at = events[0].at, events[-1].at
                self.run.weights = dict(events[-1].detail.get("weights") or {})
                self.run.end_reason = events[-1].detail.get("reason")

    # ------------------------------------------------------------------ ports
    def _ports(self, plan: RolloutPlan) -> Ports:
        def set_weights(weights: dict[str, float]) -> Any:
            from raypipe.serve import app as serve_app

            return serve_app.set_weights(plan.app, weights)

        def snapshot(since: float) -> Mapping[str, Mapping[str, Any]]:
            import ray

            collector = ray.get_actor(metrics_actor_name(plan.app), namespace=NAMESPACE)
            return ray.get(collector.snapshot.remote(since), timeout=30)

        def set_production(version: int, reason: str) -> int | None:
            assert plan.model is not None
            ev = self.registry.set_alias(plan.model, version, "production", reason=reason)
            if ev is None:
                return version
            return ev.old_version

        def record(event: str, detail: dict[str, Any]) -> Any:
            return self.store.record(plan.app, plan.rollout_id, event, detail)

        return Ports(set_weights, snapshot, set_production, record)

    # ------------------------------------------------------------------ methods
    def ping(self) -> str:
        return "ok"

    def start(self, plan: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.run is not None and (self.run.state in ACTIVE or self.run._pending_stop is not None):
                raise RaypipeError(
                    f"rollout {self.run.plan.rollout_id} of app {self.app} is {self.run.state} "
                    f"(step {self.run.step_index + 1}); abort it first: raypipe rollout abort {self.app}"
                )
            p = RolloutPlan.model_validate(plan)
            run = RolloutRun(p, self._ports(p))
            self.run = run
            try:
                run.begin()
            except Exception as e:
                if run.state == "pending":
                    run.state = "failed"
                    run.ended_at = time.time()
                    run.end_reason = f"could not set the first step's weights: {e}"
                    try:
                        run.ports.record("failed", {"reason": run.end_reason})
                    except Exception:  # noqa: BLE001 - the original error matters more
                        pass
                raise RaypipeError(f"rollout of app {self.app} did not start: {e}") from None
            self._start_thread()
            return run.status()

    def status(self) -> dict[str, Any] | None:
        # A tick may hold the lock for as long as Serve takes to apply new weights: then
        # answer from the fields as they are (each is replaced whole, never half-written).
        locked = self.lock.acquire(timeout=2.0)
        try:
            if self.run is None:
                return None
            st = self.run.status()
            st["last_error"] = self._last_error
            return st
        finally:
            if locked:
                self.lock.release()

    def abort(self, reason: str = "aborted by the user") -> dict[str, Any]:
        with self.lock:
            if self.run is None:
                raise RaypipeError(f"no rollout of app {self.app} to abort")
            self.run.abort(reason)
            return self.run.status()

    # ------------------------------------------------------------------ the loop
    def _start_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._loop, name=f"rollout-{self.app}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                run = self.run
                every = tick_seconds(run.plan.interval_s) if run is not None else 1.0
                if run is None or (run.state not in ACTIVE and run._pending_stop is None):
                    return
                try:
                    run.tick()
                    self._last_error = None
                except Exception as e:  # noqa: BLE001 - a port failed: record once, retry next tick
                    self._error(str(e))
            self._stop.wait(every)

    def _error(self, message: str) -> None:
        if message == self._last_error:
            return
        self._last_error = message
        if self.run is not None:
            try:
                self.run.ports.record("error", {"error": message[:2000], "step_index": self.run.step_index})
            except Exception:  # noqa: BLE001 - the store itself failed; the status still shows it
                pass


def find_controller(app: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(controller_name(app), namespace=NAMESPACE)
    except ValueError:
        return None


def start_controller(app: str, db_path: str) -> Any:
    """The app's controller actor: detached, restartable, on the head node, no CPU."""
    import ray

    return (
        ray.remote(RolloutController)
        .options(**singleton_options(controller_name(app), head=True, max_concurrency=8))
        .remote(app, db_path)
    )
