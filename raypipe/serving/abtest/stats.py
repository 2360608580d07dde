"""A/B statistics over the metrics collector's per-variant snapshots (pure: no Ray, no scipy).

Input: the dicts ``snapshot()`` of an app's metrics collector returns, one per
variant label (``v3``, ``v4``...)::

    {"requests", "errors", "shadow_requests",
     "latency_ms": {"buckets", "counts", "p50", "p95", "p99"},
     "outcomes": {"n", "sum", "sumsq", "positives"}}

Per variant: counts, error rate (``errors / requests``), latency percentiles, and
the outcome metric: the conversion rate ``positives / n`` when every outcome was 0
or 1 (``sum == sumsq == positives``), else the mean outcome ``sum / n`` with the
sample variance ``(sumsq - sum**2 / n) / (n - 1)``.

Comparisons are of B (the treatment) against A (the control), difference ``B - A``:

* rates (conversion, error rate): the two-proportion z-test.  The **test** uses the
  pooled rate (the null hypothesis says both rates are equal; statsmodels'
  ``proportions_ztest`` default), the **confidence interval** is the unpooled Wald
  interval ``diff ± z(1 - alpha/2) * sqrt(pa(1-pa)/na + pb(1-pb)/nb)`` (statsmodels'
  ``confint_proportions_2indep(method="wald")``).  The Wald interval is degenerate
  ([0, 0]) when both rates are 0 or both are 1; the test then says "no difference".
* means: Welch's t-test (unequal variances), ``t = (mb - ma) / sqrt(va/na + vb/nb)``
  with the Welch-Satterthwaite degrees of freedom
  ``(va/na + vb/nb)**2 / ((va/na)**2/(na-1) + (vb/nb)**2/(nb-1))`` and the interval
  ``diff ± t(1 - alpha/2, df) * se`` (scipy's ``ttest_ind(equal_var=False)`` and its
  ``confidence_interval()``).
* sample-ratio mismatch: Pearson's chi-square of the live request counts against the
  configured weights, ``df = k - 1`` (``scipy.stats.chisquare``); flagged when
  ``p < 0.001``.  Not computed when a variant would expect fewer than 5 requests.

Below ``min_samples`` per variant (outcomes for the outcome metric, requests for the
error rate) a comparison gives no verdict ("insufficient data") and says how many
more each variant needs.  Otherwise the verdict is "B better" / "B worse" when the
two-sided p-value is below ``alpha`` (better means higher for conversion and mean
outcome, lower for the error rate), else "no significant difference".  Each metric
is tested on its own at ``alpha``: no correction for looking at several metrics or
at the same experiment repeatedly.

The distribution functions are in :mod:`raypipe.distributions`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from raypipe._json import json_safe
from raypipe.distributions import chi2_sf, norm_ppf, norm_sf, t_ppf, t_sf

INSUFFICIENT = "insufficient data"
BETTER = "B better"
WORSE = "B worse"
NO_DIFFERENCE = "no significant difference"

DEFAULT_MIN_SAMPLES = 100
DEFAULT_ALPHA = 0.05
SRM_THRESHOLD = 0.001
#: Pearson's chi-square is not trusted when a cell expects fewer than this.
SRM_MIN_EXPECTED = 5.0

# --------------------------------------------------------------------------- tests


@dataclass(frozen=True)
class TestResult:
    """A two-sample comparison: the difference ``b - a``, its interval, statistic and p-value."""

    diff: float
    ci_low: float
    ci_high: float
    statistic: float | None
    p_value: float
    df: float | None = None
    se: float | None = None
    note: str = ""


def two_proportion_test(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float = DEFAULT_ALPHA) -> TestResult:
    """Two-proportion z-test of ``x_b/n_b - x_a/n_a``: pooled standard error for the test,
    unpooled (Wald) for the ``1 - alpha`` interval."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError("two_proportion_test needs n_a > 0 and n_b > 0")
    pa, pb = x_a / n_a, x_b / n_b
    diff = pb - pa
    pooled = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    se = math.sqrt(pa * (1.0 - pa) / n_a + pb * (1.0 - pb) / n_b)
    zc = norm_ppf(1.0 - alpha / 2.0)
    if se0 == 0.0:  # both rates 0 or both 1: nothing differs
        return TestResult(diff, diff, diff, None, 1.0, se=se, note="both rates are 0 or both are 1")
    z = diff / se0
    return TestResult(diff, diff - zc * se, diff + zc * se, z, min(1.0, 2.0 * norm_sf(abs(z))), se=se)


def welch_test(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int, alpha: float = DEFAULT_ALPHA
) -> TestResult:
    """Welch's t-test of ``mean_b - mean_a`` (sample variances, ``n >= 2`` each) with the
    Welch-Satterthwaite degrees of freedom and the ``1 - alpha`` interval."""
    if n_a < 2 or n_b < 2:
        raise ValueError("welch_test needs at least 2 observations per variant")
    diff = mean_b - mean_a
    sa, sb = max(var_a, 0.0) / n_a, max(var_b, 0.0) / n_b
    se2 = sa + sb
    if se2 == 0.0:
        if diff == 0.0:
            return TestResult(0.0, 0.0, 0.0, None, 1.0, se=0.0, note="zero variance in both variants")
        return TestResult(
            diff, diff, diff, None, 0.0, se=0.0, note="zero variance in both variants: the means differ exactly"
        )
    se = math.sqrt(se2)
    df = se2 * se2 / (sa * sa / (n_a - 1) + sb * sb / (n_b - 1))
    t = diff / se
    tc = t_ppf(1.0 - alpha / 2.0, df)
    return TestResult(diff, diff - tc * se, diff + tc * se, t, min(1.0, 2.0 * t_sf(abs(t), df)), df=df, se=se)


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio mismatch: observed vs expected live requests per variant."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float | None
    df: int
    p_value: float | None
    flagged: bool
    threshold: float = SRM_THRESHOLD
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def srm_check(observed: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD) -> SrmResult:
    """Pearson's chi-square of ``observed`` counts against the split ``weights`` (any scale).

    Variants with weight 0 are left out (a note names any that still got requests: the
    weights probably changed inside the window).  Not computed with fewer than two
    weighted variants or when one would expect fewer than 5 requests."""
    live = {k: float(w) for k, w in weights.items() if w > 0}
    obs = {k: int(observed.get(k, 0)) for k in live}
    stray = sorted(k for k, n in observed.items() if n and k not in live)
    note = f"requests to variants without weight: {', '.join(stray)} (weights changed in the window?)" if stray else ""
    total, wsum = sum(obs.values()), sum(live.values())
    expected = {k: total * w / wsum for k, w in live.items()} if wsum else {}
    if len(live) < 2:
        return SrmResult(
            obs, expected, None, 0, None, False, threshold, _join(note, "fewer than two weighted variants")
        )
    if min(expected.values()) < SRM_MIN_EXPECTED:
        return SrmResult(
            obs,
            expected,
            None,
            len(live) - 1,
            None,
            False,
            threshold,
            _join(note, f"too few requests (a variant expects < {SRM_MIN_EXPECTED:g})"),
        )
    chi2 = sum((obs[k] - e) ** 2 / e for k, e in expected.items())
    p = chi2_sf(chi2, len(live) - 1)
    return SrmResult(obs, expected, chi2, len(live) - 1, p, p < threshold, threshold, note)


# --------------------------------------------------------------------------- variants and reports


@dataclass(frozen=True)
class VariantStats:
    """One variant's numbers in a snapshot window."""

    label: str
    requests: int
    errors: int
    shadow_requests: int
    #: Requests forced to this variant by header: never in the statistics (counted apart).
    forced_requests: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    outcomes: int
    outcome_sum: float
    outcome_sumsq: float
    positives: int
    #: Every outcome was 0 or 1.
    binary: bool
    conversion: float | None
    mean_outcome: float | None
    #: Sample variance of the outcomes (n - 1 in the denominator); None below 2 outcomes.
    outcome_var: float | None

    @classmethod
    def from_snapshot(cls, label: str, snap: Mapping[str, Any] | None) -> VariantStats:
        snap = snap or {}
        lat = snap.get("latency_ms") or {}
        out = snap.get("outcomes") or {}
        requests, errors = int(snap.get("requests") or 0), int(snap.get("errors") or 0)
        n = int(out.get("n") or 0)
        s, ss, pos = float(out.get("sum") or 0.0), float(out.get("sumsq") or 0.0), int(out.get("positives") or 0)
        if min(requests, errors, n, pos) < 0 or errors > requests or pos > n:
            raise ValueError(f"variant {label}: inconsistent snapshot {dict(snap)!r}")
        var = None
        if n >= 2:
            var = max((ss - s * s / n) / (n - 1), 0.0)  # rounding can leave a tiny negative
        return cls(
            label=label,
            requests=requests,
            errors=errors,
            shadow_requests=int(snap.get("shadow_requests") or 0),
            forced_requests=int(snap.get("forced_requests") or 0),
            error_rate=errors / requests if requests else None,
            p50_ms=_num(lat.get("p50")),
            p95_ms=_num(lat.get("p95")),
            p99_ms=_num(lat.get("p99")),
            outcomes=n,
            outcome_sum=s,
            outcome_sumsq=ss,
            positives=pos,
            binary=n > 0 and s == ss == pos,
            conversion=pos / n if n else None,
            mean_outcome=s / n if n else None,
            outcome_var=var,
        )

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass(frozen=True)
class MetricComparison:
    """B against A on one metric, with the verdict."""

    metric: str  # conversion | mean_outcome | error_rate
    test: str
    a: str
    b: str
    value_a: float | None
    value_b: float | None
    n_a: int
    n_b: int
    higher_is_better: bool
    verdict: str
    alpha: float
    min_samples: int
    #: More samples each variant needs before a verdict (0: enough).
    needed: dict[str, int] = field(default_factory=dict)
    result: TestResult | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = None if self.result is None else asdict(self.result)
        return json_safe(d)


def compare_rates(
    metric: str,
    a: str,
    x_a: int,
    n_a: int,
    b: str,
    x_b: int,
    n_b: int,
    *,
    higher_is_better: bool,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    alpha: float = DEFAULT_ALPHA,
) -> MetricComparison:
    needed = {a: max(0, min_samples - n_a), b: max(0, min_samples - n_b)}
    test = "two-proportion z-test (pooled), Wald interval (unpooled)"
    insufficient = MetricComparison(
        metric=metric,
        test=test,
        a=a,
        b=b,
        value_a=x_a / n_a if n_a else None,
        value_b=x_b / n_b if n_b else None,
        n_a=n_a,
        n_b=n_b,
        higher_is_better=higher_is_better,
        verdict=INSUFFICIENT,
        alpha=alpha,
        min_samples=min_samples,
        needed=needed,
    )
    if any(needed.values()):
        return insufficient
    r = two_proportion_test(x_a, n_a, x_b, n_b, alpha)
    return replace(insufficient, verdict=_verdict(r, alpha, higher_is_better), result=r)


def compare_means(
    a: VariantStats,
    b: VariantStats,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    alpha: float = DEFAULT_ALPHA,
) -> MetricComparison:
    needed = {a.label: max(0, min_samples - a.outcomes), b.label: max(0, min_samples - b.outcomes)}
    insufficient = MetricComparison(
        metric="mean_outcome",
        test="Welch's t-test (Welch-Satterthwaite df)",
        a=a.label,
        b=b.label,
        value_a=a.mean_outcome,
        value_b=b.mean_outcome,
        n_a=a.outcomes,
        n_b=b.outcomes,
        higher_is_better=True,
        verdict=INSUFFICIENT,
        alpha=alpha,
        min_samples=min_samples,
        needed=needed,
    )
    if any(needed.values()) or a.outcome_var is None or b.outcome_var is None:
        return insufficient
    assert a.mean_outcome is not None and b.mean_outcome is not None
    r = welch_test(a.mean_outcome, a.outcome_var, a.outcomes, b.mean_outcome, b.outcome_var, b.outcomes, alpha)
    return replace(insufficient, verdict=_verdict(r, alpha, True), result=r)


def _verdict(r: TestResult, alpha: float, higher_is_better: bool) -> str:
    if r.p_value >= alpha or r.diff == 0.0:
        return NO_DIFFERENCE
    return BETTER if (r.diff > 0) == higher_is_better else WORSE


@dataclass(frozen=True)
class ABComparison:
    """Variant B against control A: the outcome metric, the error rate and latency."""

    a: str
    b: str
    outcome: MetricComparison
    error_rate: MetricComparison
    #: ``p99(B) / p99(A)``; None without both.
    p99_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "outcome": self.outcome.to_dict(),
            "error_rate": self.error_rate.to_dict(),
            "p99_ratio": json_safe(self.p99_ratio),
        }


def outcome_metric(a: VariantStats, b: VariantStats, metric: str = "auto") -> str:
    """``conversion`` when asked, or (``auto``) when every outcome seen was 0 or 1; else ``mean_outcome``."""
    if metric not in ("auto", "conversion", "mean_outcome"):
        raise ValueError(f"metric {metric!r}: expected auto, conversion or mean_outcome")
    if metric != "auto":
        return metric
    seen = [v for v in (a, b) if v.outcomes]
    return "conversion" if seen and all(v.binary for v in seen) else "mean_outcome"


def compare(
    a: VariantStats,
    b: VariantStats,
    *,
    metric: str = "auto",
    min_samples: int = DEFAULT_MIN_SAMPLES,
    alpha: float = DEFAULT_ALPHA,
) -> ABComparison:
    """B against A: the outcome metric (see :func:`outcome_metric`), the error rate, p99 latency."""
    check_settings(min_samples, alpha)
    which = outcome_metric(a, b, metric)
    if which == "conversion":
        outcome = compare_rates(
            "conversion",
            a.label,
            a.positives,
            a.outcomes,
            b.label,
            b.positives,
            b.outcomes,
            higher_is_better=True,
            min_samples=min_samples,
            alpha=alpha,
        )
    else:
        outcome = compare_means(a, b, min_samples=min_samples, alpha=alpha)
    errors = compare_rates(
        "error_rate",
        a.label,
        a.errors,
        a.requests,
        b.label,
        b.errors,
        b.requests,
        higher_is_better=False,
        min_samples=min_samples,
        alpha=alpha,
    )
    ratio = b.p99_ms / a.p99_ms if a.p99_ms and b.p99_ms is not None else None
    return ABComparison(a.label, b.label, outcome, errors, ratio)


def check_settings(min_samples: int, alpha: float) -> None:
    if min_samples < 2:
        raise ValueError(f"min_samples must be at least 2 (a variance needs two observations); got {min_samples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")


@dataclass(frozen=True)
class ABReport:
    """Every variant's numbers, each non-control variant against the control, and the SRM check."""

    variants: list[VariantStats]
    weights: dict[str, float]
    control: str | None
    comparisons: list[ABComparison]
    srm: SrmResult
    metric: str
    min_samples: int
    alpha: float
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variants": [v.to_dict() for v in self.variants],
            "weights": dict(self.weights),
            "control": self.control,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "srm": self.srm.to_dict(),
            "metric": self.metric,
            "min_samples": self.min_samples,
            "alpha": self.alpha,
            "warnings": list(self.warnings),
        }


def _label_key(label: str) -> tuple[int, str]:
    return (int(label[1:]), label) if label[:1] == "v" and label[1:].isdigit() else (1 << 30, label)


def ab_report(
    snapshots: Mapping[str, Mapping[str, Any]],
    weights: Mapping[str, float],
    *,
    control: str | None = None,
    metric: str = "auto",
    min_samples: int = DEFAULT_MIN_SAMPLES,
    alpha: float = DEFAULT_ALPHA,
    srm_threshold: float = SRM_THRESHOLD,
) -> ABReport:
    """The A/B report of an app: variants are those with weight or traffic; ``control``
    (default: the lowest version) is A, every other live variant is a B."""
    check_settings(min_samples, alpha)
    labels = sorted(
        {k for k, w in weights.items() if w > 0} | {k for k, s in snapshots.items() if (s or {}).get("requests")},
        key=_label_key,
    )
    stats = {k: VariantStats.from_snapshot(k, snapshots.get(k)) for k in labels}
    warnings: list[str] = []
    if control is not None and control not in stats:
        if control in weights or control in snapshots:
            stats[control] = VariantStats.from_snapshot(control, snapshots.get(control))
            labels.insert(0, control)
        else:
            raise ValueError(f"control {control!r} is not a variant; variants: {', '.join(labels) or 'none'}")
    if control is None and labels:
        control = labels[0]
    srm = srm_check({k: v.requests for k, v in stats.items()}, weights, srm_threshold)
    if srm.flagged:
        warnings.append(
            f"sample ratio mismatch (chi-square p = {srm.p_value:.2g} < {srm_threshold:g}): the traffic split is not "
            "the configured one, so the comparisons may be biased"
        )
    if srm.note:
        warnings.append(f"SRM: {srm.note}")
    comps = (
        []
        if control is None
        else [
            compare(stats[control], stats[k], metric=metric, min_samples=min_samples, alpha=alpha)
            for k in labels
            if k != control
        ]
    )
    if control is not None and len(labels) < 2:
        warnings.append("only one variant has weight or traffic: nothing to compare")
    if len(comps) > 1:
        warnings.append(f"{len(comps)} comparisons against {control}, each at alpha {alpha:g} (no correction)")
    which = comps[0].outcome.metric if comps else metric
    return ABReport(
        variants=[stats[k] for k in labels],
        weights={k: float(w) for k, w in weights.items()},
        control=control,
        comparisons=comps,
        srm=srm,
        metric=which,
        min_samples=min_samples,
        alpha=alpha,
        warnings=warnings,
    )


# --------------------------------------------------------------------------- helpers


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
