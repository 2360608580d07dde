"""Rollout decisions (pure): given the step plan, the guardrails and one window of
baseline and candidate numbers (the collector's snapshot since the step began), return
``wait`` | ``advance`` | ``hold`` (too little traffic or evidence; the reason says how much
is missing) | ``rollback`` (which guardrail, observed vs allowed) | ``promote``.

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

from dataclasses import asdict, dataclass, field
from typing import Any

from raypipe._json import json_safe
from raypipe.distributions import fisher_greater
from raypipe.serving.abtest.stats import VariantStats
from raypipe.serving.rollout.settings import BusinessGuard, ErrorRateGuard, Guardrails, LatencyGuard

WAIT, ADVANCE, HOLD, ROLLBACK, PROMOTE = "wait", "advance", "hold", "rollback", "promote"
OK, VIOLATED, PENDING = "ok", "violated", "not enough data"

# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class GuardrailCheck:
    name: str  # error_rate | p99_latency_ms | business
    status: str  # ok | violated | not enough data
    observed: dict[str, Any]
    allowed: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


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
        return json_safe(d)


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
