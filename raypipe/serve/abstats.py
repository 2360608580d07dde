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

The distribution functions (normal, Student t and its quantile, chi-square) are
implemented here with the standard library: the regularized incomplete beta and
gamma functions by continued fractions (Lentz) and series (Numerical Recipes,
3rd ed., 6.2 and 6.4), the t quantile by safeguarded Newton steps on the CDF.
They agree with scipy to better than 1e-9 (``tests/unit/test_abstats.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

INSUFFICIENT = "insufficient data"
BETTER = "B better"
WORSE = "B worse"
NO_DIFFERENCE = "no significant difference"

DEFAULT_MIN_SAMPLES = 100
DEFAULT_ALPHA = 0.05
SRM_THRESHOLD = 0.001
#: Pearson's chi-square is not trusted when a cell expects fewer than this.
SRM_MIN_EXPECTED = 5.0

_EPS = 1e-16
_TINY = 1e-300
_MAX_ITER = 100_000

# --------------------------------------------------------------------------- distributions


def norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z (accurate in the far tail: erfc, not 1 - cdf)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def norm_ppf(p: float) -> float:
    """The standard normal quantile (Wichura's AS 241, via ``statistics.NormalDist``)."""
    return NormalDist().inv_cdf(p)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta function I_x(a, b); ``y`` is ``1 - x`` if known exactly."""
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(df):
        return norm_sf(t)
    if t == 0.0:
        return 0.5
    t2 = t * t
    # I_x(df/2, 1/2) with x = df / (df + t^2); 1 - x computed directly (no cancellation near t = 0).
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t > 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    return t_sf(-t, df)


def t_pdf(t: float, df: float) -> float:
    return math.exp(
        math.lgamma((df + 1.0) / 2.0)
        - math.lgamma(df / 2.0)
        - 0.5 * math.log(df * math.pi)
        - (df + 1.0) / 2.0 * math.log1p(t * t / df)
    )


def t_ppf(p: float, df: float) -> float:
    """The Student t quantile: Newton steps on :func:`t_cdf` from the Cornish-Fisher start,
    kept inside a bisection bracket (so heavy tails at small ``df`` cannot throw it off)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf: p must be in (0, 1), got {p}")
    if df <= 0 or math.isnan(df):
        raise ValueError(f"t_ppf: df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    if math.isinf(df):
        return norm_ppf(p)
    if df == 1.0:
        return math.tan(math.pi * (p - 0.5))
    if df == 2.0:
        q = 2.0 * p - 1.0
        return q * math.sqrt(2.0 / (1.0 - q * q))
    target = 1.0 - p  # solve t_sf(t) = target; the upper tail keeps precision for p near 1
    z = norm_ppf(p)
    g1 = (z**3 + z) / 4.0
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
    t = z + g1 / df + g2 / df**2 if df >= 3 else z * 2.0
    lo, hi = 0.0, max(2.0 * t, 1.0)
    while t_sf(hi, df) > target:
        lo, hi = hi, hi * 2.0
    t = min(max(t, lo), hi)
    for _ in range(200):
        f = t_sf(t, df) - target  # decreasing in t
        if f > 0:
            lo = t
        else:
            hi = t
        step = f / t_pdf(t, df)
        new = t + step
        if not lo < new < hi:
            new = (lo + hi) / 2.0
        if abs(new - t) <= 1e-13 * max(1.0, abs(t)) or hi - lo <= 1e-13 * max(1.0, abs(t)):
            return new
        t = new
    return t


def _gser(a: float, x: float) -> float:
    """The lower regularized gamma P(a, x) by its series (x < a + 1)."""
    ap, s, d = a, 1.0 / a, 1.0 / a
    for _ in range(_MAX_ITER):
        ap += 1.0
        d *= x / ap
        s += d
        if abs(d) < abs(s) * _EPS:
            break
    return s * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gcf(a: float, x: float) -> float:
    """The upper regularized gamma Q(a, x) by its continued fraction (x >= a + 1; Lentz)."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for a chi-square X with ``df`` degrees of freedom."""
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    a, h = df / 2.0, x / 2.0
    return 1.0 - _gser(a, h) if h < a + 1.0 else _gcf(a, h)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(x_a: int, n_a: int, x_b: int, n_b: int) -> float:
    """One-sided Fisher exact test that A's rate is greater than B's: ``P(X >= x_a)`` for the
    hypergeometric count of A's events given both margins (``scipy.stats.fisher_exact``
    of ``[[x_a, n_a - x_a], [x_b, n_b - x_b]]``, ``alternative="greater"``).  Exact for
    any counts, so it stays honest on the handful of requests a canary's first step gets."""
    if min(x_a, x_b) < 0 or x_a > n_a or x_b > n_b:
        raise ValueError("fisher_greater: need 0 <= x <= n")
    total, events = n_a + n_b, x_a + x_b
    hi = min(events, n_a)
    if x_a <= max(0, events - n_b):
        return 1.0
    # Terms relative to the first (pmf(x + 1) / pmf(x) is a ratio of small integers); the
    # tail beyond x_a is summed until it stops mattering.
    log_first = _log_comb(events, x_a) + _log_comb(total - events, n_a - x_a) - _log_comb(total, n_a)
    term, acc = 1.0, 1.0
    for x in range(x_a, hi):
        term *= (events - x) * (n_a - x) / ((x + 1) * (total - events - n_a + x + 1))
        acc += term
        if term < acc * 1e-17 and term < 1.0:
            break
    return min(1.0, math.exp(log_first + math.log(acc)))


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
        return _finite(asdict(self))


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
        return _finite(asdict(self))


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
        return _finite(d)


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
    common = dict(metric=metric, test=test, a=a, b=b, n_a=n_a, n_b=n_b, higher_is_better=higher_is_better)
    va, vb = (x_a / n_a if n_a else None), (x_b / n_b if n_b else None)
    if any(needed.values()):
        return MetricComparison(
            **common, value_a=va, value_b=vb, verdict=INSUFFICIENT, alpha=alpha, min_samples=min_samples, needed=needed
        )
    r = two_proportion_test(x_a, n_a, x_b, n_b, alpha)
    return MetricComparison(
        **common,
        value_a=va,
        value_b=vb,
        verdict=_verdict(r, alpha, higher_is_better),
        alpha=alpha,
        min_samples=min_samples,
        needed=needed,
        result=r,
    )


def compare_means(
    a: VariantStats,
    b: VariantStats,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    alpha: float = DEFAULT_ALPHA,
) -> MetricComparison:
    needed = {a.label: max(0, min_samples - a.outcomes), b.label: max(0, min_samples - b.outcomes)}
    common = dict(
        metric="mean_outcome",
        test="Welch's t-test (Welch-Satterthwaite df)",
        a=a.label,
        b=b.label,
        value_a=a.mean_outcome,
        value_b=b.mean_outcome,
        n_a=a.outcomes,
        n_b=b.outcomes,
        higher_is_better=True,
        alpha=alpha,
        min_samples=min_samples,
        needed=needed,
    )
    if any(needed.values()) or a.outcome_var is None or b.outcome_var is None:
        return MetricComparison(**common, verdict=INSUFFICIENT)
    assert a.mean_outcome is not None and b.mean_outcome is not None
    r = welch_test(a.mean_outcome, a.outcome_var, a.outcomes, b.mean_outcome, b.outcome_var, b.outcomes, alpha)
    return MetricComparison(**common, verdict=_verdict(r, alpha, True), result=r)


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
            "p99_ratio": _finite(self.p99_ratio),
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


def _finite(v: Any) -> Any:
    """JSON-safe: infinities and NaN become None."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v
