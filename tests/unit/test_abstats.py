"""A/B statistics against scipy (and hand computations) on fixed data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from raypipe.distributions import chi2_sf, fisher_greater, t_ppf, t_sf
from raypipe.serving.abtest import stats as abstats
from raypipe.serving.abtest.stats import (
    BETTER,
    INSUFFICIENT,
    NO_DIFFERENCE,
    WORSE,
    VariantStats,
    ab_report,
    compare,
    srm_check,
    two_proportion_test,
    welch_test,
)

DFS = [0.3, 0.7, 1, 1.5, 2, 2.7, 3, 4.2, 5, 7.9, 10, 30.3, 100, 1234.5, 1e5, 1e7]


def snap(
    requests: int = 0,
    errors: int = 0,
    values: list[float] | np.ndarray | None = None,
    p99: float | None = None,
) -> dict:
    """A collector snapshot of one variant whose outcomes were ``values``."""
    v = np.asarray(values if values is not None else [], dtype=float)
    return {
        "requests": requests,
        "errors": errors,
        "shadow_requests": 0,
        "latency_ms": {"buckets": [], "counts": [], "p50": None, "p95": None, "p99": p99},
        "outcomes": {
            "n": int(v.size),
            "sum": float(v.sum()),
            "sumsq": float((v * v).sum()),
            "positives": int((v > 0).sum()),
        },
    }


def conv(requests: int, n: int, positives: int, errors: int = 0) -> dict:
    return snap(requests, errors, [1.0] * positives + [0.0] * (n - positives))


# --------------------------------------------------------------------------- distribution functions


@pytest.mark.parametrize("df", DFS)
def test_t_quantile_matches_scipy(df: float) -> None:
    for p in [1e-6, 0.025, 0.3, 0.5, 0.5000001, 0.6, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9995, 0.999999]:
        want = stats.t.ppf(p, df)
        assert t_ppf(p, df) == pytest.approx(want, rel=1e-8, abs=1e-8), (p, df)


@pytest.mark.parametrize("df", DFS)
def test_t_tail_matches_scipy(df: float) -> None:
    for t in [-3.0, -0.2, 0.0, 1e-4, 0.5, 1.0, 1.96, 3.0, 5.0, 10.0, 40.0]:
        want = stats.t.sf(t, df)
        assert t_sf(t, df) == pytest.approx(want, rel=1e-8, abs=1e-12), (t, df)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 20, 99])
def test_chi2_tail_matches_scipy(df: int) -> None:
    for x in [1e-3, 0.5, 1.0, 3.84, 10.0, 25.0, 60.0, 150.0, 400.0]:
        want = stats.chi2.sf(x, df)
        assert chi2_sf(x, df) == pytest.approx(want, rel=1e-9, abs=1e-15), (x, df)


@pytest.mark.parametrize(
    "xa,na,xb,nb",
    [
        (1, 20, 10, 1000),
        (2, 20, 10, 1000),
        (0, 5, 0, 5),
        (3, 10, 0, 400),
        (30, 100, 2, 900),
        (5, 5, 0, 5),
        (0, 50, 7, 50),
        (12, 30, 0, 600),
        (500, 10000, 450, 10000),
        (60, 200, 0, 5000),
        (1, 1, 0, 1),
    ],
)
def test_fisher_exact_one_sided_matches_scipy(xa: int, na: int, xb: int, nb: int) -> None:
    want = stats.fisher_exact([[xa, na - xa], [xb, nb - xb]], alternative="greater").pvalue
    assert fisher_greater(xa, na, xb, nb) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_t_quantile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        t_ppf(1.0, 5)
    with pytest.raises(ValueError):
        t_ppf(0.9, 0)


# --------------------------------------------------------------------------- two proportions


def test_two_proportion_z_test_by_hand() -> None:
    """A: 120 of 1000 converted, B: 150 of 1000 (statsmodels' proportions_ztest by hand)."""
    xa, na, xb, nb = 120, 1000, 150, 1000
    pa, pb = xa / na, xb / nb
    pooled = (xa + xb) / (na + nb)
    z = (pb - pa) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    zc = stats.norm.ppf(0.975)

    r = two_proportion_test(xa, na, xb, nb, alpha=0.05)
    assert r.diff == pytest.approx(0.03)
    assert r.statistic == pytest.approx(z, rel=1e-12)
    assert z == pytest.approx(1.9631, abs=1e-4)  # hand-computed
    assert r.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert r.p_value == pytest.approx(0.04964, abs=1e-5)
    assert (r.ci_low, r.ci_high) == pytest.approx((0.03 - zc * se, 0.03 + zc * se), rel=1e-9)

    c = compare(
        VariantStats.from_snapshot("v1", conv(1000, na, xa)), VariantStats.from_snapshot("v2", conv(1000, nb, xb))
    )
    assert c.outcome.metric == "conversion"
    assert c.outcome.verdict == BETTER
    # at alpha 0.01 the same data is not significant
    c = compare(
        VariantStats.from_snapshot("v1", conv(1000, na, xa)),
        VariantStats.from_snapshot("v2", conv(1000, nb, xb)),
        alpha=0.01,
    )
    assert c.outcome.verdict == NO_DIFFERENCE


def test_two_proportion_matches_a_chi_square_of_the_2x2_table() -> None:
    """The pooled z-test squared is the uncorrected chi-square of the 2x2 table."""
    xa, na, xb, nb = 37, 412, 61, 398
    chi2, p, _, _ = stats.chi2_contingency([[xa, na - xa], [xb, nb - xb]], correction=False)
    r = two_proportion_test(xa, na, xb, nb)
    assert r.statistic**2 == pytest.approx(chi2, rel=1e-9)
    assert r.p_value == pytest.approx(p, rel=1e-9)


def test_error_rate_verdict_lower_is_better() -> None:
    a = VariantStats.from_snapshot("v1", snap(2000, 20))
    b = VariantStats.from_snapshot("v2", snap(2000, 60))
    c = compare(a, b)
    assert c.error_rate.metric == "error_rate"
    assert c.error_rate.value_a == pytest.approx(0.01)
    assert c.error_rate.value_b == pytest.approx(0.03)
    assert c.error_rate.verdict == WORSE
    assert compare(b, a).error_rate.verdict == BETTER
    # no outcomes were fed back: the outcome comparison has no verdict
    assert c.outcome.verdict == INSUFFICIENT
    assert c.outcome.needed == {"v1": 100, "v2": 100}


def test_zero_conversions() -> None:
    both = two_proportion_test(0, 500, 0, 500)
    assert both.p_value == 1.0 and both.statistic is None and (both.ci_low, both.ci_high) == (0.0, 0.0)
    c = compare(
        VariantStats.from_snapshot("v1", conv(500, 500, 0)), VariantStats.from_snapshot("v2", conv(500, 500, 0))
    )
    assert c.outcome.verdict == NO_DIFFERENCE
    # zero in A only: still a proper test (pooled rate > 0)
    r = two_proportion_test(0, 500, 12, 500)
    pooled = 12 / 1000
    z = (12 / 500) / math.sqrt(pooled * (1 - pooled) * (2 / 500))
    assert r.statistic == pytest.approx(z)
    assert r.p_value == pytest.approx(2 * stats.norm.sf(z), rel=1e-9)
    # every request failed in both variants: no difference either
    assert (
        compare(
            VariantStats.from_snapshot("v1", snap(300, 300)), VariantStats.from_snapshot("v2", snap(300, 300))
        ).error_rate.verdict
        == NO_DIFFERENCE
    )


# --------------------------------------------------------------------------- means


WELCH_DATA = [
    # (seed, n_a, n_b, mean shift, scale of b)
    (0, 150, 150, 0.0, 1.0),
    (1, 120, 300, 0.3, 2.5),
    (2, 1000, 400, -0.1, 0.4),
    (3, 101, 2000, 0.05, 5.0),
]


@pytest.mark.parametrize("seed,n_a,n_b,shift,scale", WELCH_DATA)
def test_welch_matches_scipy(seed: int, n_a: int, n_b: int, shift: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    a = np.round(rng.gamma(2.0, 3.0, n_a), 2)  # like revenue per request
    b = np.round(rng.gamma(2.0, 3.0, n_b) * scale + shift, 2)
    ref = stats.ttest_ind(b, a, equal_var=False)
    lo, hi = ref.confidence_interval(0.95)

    c = compare(VariantStats.from_snapshot("v1", snap(n_a, 0, a)), VariantStats.from_snapshot("v2", snap(n_b, 0, b)))
    o = c.outcome
    assert o.metric == "mean_outcome"
    assert o.value_a == pytest.approx(a.mean(), rel=1e-12)
    assert o.value_b == pytest.approx(b.mean(), rel=1e-12)
    assert o.result is not None
    assert o.result.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert o.result.df == pytest.approx(ref.df, rel=1e-9)
    assert o.result.p_value == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-14)
    assert (o.result.ci_low, o.result.ci_high) == pytest.approx((lo, hi), rel=1e-8)
    want = NO_DIFFERENCE if ref.pvalue >= 0.05 else (BETTER if b.mean() > a.mean() else WORSE)
    assert o.verdict == want


def test_welch_by_hand_small() -> None:
    """Hand computation: A = 1..5, B = 3, 5, 7, 9, 11, 13."""
    a, b = [1, 2, 3, 4, 5], [3, 5, 7, 9, 11, 13]
    va, vb = 2.5, 14.0  # sample variances
    se = math.sqrt(va / 5 + vb / 6)
    df = (va / 5 + vb / 6) ** 2 / ((va / 5) ** 2 / 4 + (vb / 6) ** 2 / 5)
    r = welch_test(3.0, va, 5, 8.0, vb, 6)
    assert r.statistic == pytest.approx(5.0 / se)
    assert r.df == pytest.approx(df)
    assert r.p_value == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_zero_variance() -> None:
    same = compare(
        VariantStats.from_snapshot("v1", snap(200, 0, [2.5] * 200)),
        VariantStats.from_snapshot("v2", snap(200, 0, [2.5] * 200)),
        metric="mean_outcome",
    )
    assert same.outcome.verdict == NO_DIFFERENCE
    assert same.outcome.result is not None and same.outcome.result.p_value == 1.0
    apart = compare(
        VariantStats.from_snapshot("v1", snap(200, 0, [2.5] * 200)),
        VariantStats.from_snapshot("v2", snap(200, 0, [3.0] * 200)),
        metric="mean_outcome",
    )
    assert apart.outcome.verdict == BETTER
    assert apart.outcome.result is not None and apart.outcome.result.p_value == 0.0
    # one variant constant: an ordinary Welch test (all the variance is B's)
    rng = np.random.default_rng(7)
    b = rng.normal(3.0, 1.0, 150)
    ref = stats.ttest_ind(b, np.full(150, 2.5), equal_var=False)
    c = compare(
        VariantStats.from_snapshot("v1", snap(150, 0, [2.5] * 150)),
        VariantStats.from_snapshot("v2", snap(150, 0, b)),
        metric="mean_outcome",
    )
    assert c.outcome.result is not None
    assert c.outcome.result.statistic == pytest.approx(ref.statistic, rel=1e-8)
    assert c.outcome.result.df == pytest.approx(ref.df, rel=1e-8)
    json.dumps(c.to_dict(), allow_nan=False)
    json.dumps(apart.to_dict(), allow_nan=False)


def test_variance_from_sums_is_stable_for_a_large_offset() -> None:
    v = VariantStats.from_snapshot("v1", snap(3, 0, [1e6 + 1, 1e6 + 2, 1e6 + 3]))
    assert v.outcome_var == pytest.approx(1.0, rel=1e-6)
    assert VariantStats.from_snapshot("v1", snap(3, 0, [0.1] * 3)).outcome_var >= 0.0


# --------------------------------------------------------------------------- sample size, empty variants


def test_minimum_sample_size_says_how_many_more() -> None:
    a = VariantStats.from_snapshot("v1", conv(300, 99, 10))
    b = VariantStats.from_snapshot("v2", conv(40, 30, 20))
    c = compare(a, b, min_samples=100)
    assert c.outcome.verdict == INSUFFICIENT
    assert c.outcome.needed == {"v1": 1, "v2": 70}
    assert c.outcome.result is None
    assert c.error_rate.needed == {"v1": 0, "v2": 60}
    # exactly at the minimum: a verdict
    c = compare(
        VariantStats.from_snapshot("v1", conv(100, 100, 10)), VariantStats.from_snapshot("v2", conv(100, 100, 40))
    )
    assert c.outcome.verdict == BETTER and c.outcome.needed == {"v1": 0, "v2": 0}
    with pytest.raises(ValueError, match="min_samples"):
        compare(a, b, min_samples=1)


def test_one_variant_empty() -> None:
    a = VariantStats.from_snapshot("v1", conv(500, 500, 50))
    b = VariantStats.from_snapshot("v2", None)
    assert b.requests == 0 and b.error_rate is None and b.conversion is None and b.outcome_var is None
    c = compare(a, b)
    assert c.outcome.verdict == INSUFFICIENT and c.outcome.needed == {"v1": 0, "v2": 100}
    assert c.error_rate.verdict == INSUFFICIENT and c.error_rate.value_b is None
    assert c.p99_ratio is None
    json.dumps(c.to_dict(), allow_nan=False)


def test_inconsistent_snapshot_is_rejected() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        VariantStats.from_snapshot("v1", snap(5, 9))


# --------------------------------------------------------------------------- sample-ratio mismatch


def test_srm_matches_scipy_chisquare() -> None:
    obs = {"v1": 4880, "v2": 5120}
    r = srm_check(obs, {"v1": 50, "v2": 50})
    ref = stats.chisquare([4880, 5120], [5000, 5000])
    assert r.chi2 == pytest.approx(ref.statistic, rel=1e-12)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.df == 1 and not r.flagged  # p = 0.0164

    obs = {"v1": 9300, "v2": 700}  # configured 90/10: 9000 / 1000 expected
    r = srm_check(obs, {"v1": 0.9, "v2": 0.1})
    ref = stats.chisquare([9300, 700], [9000, 1000])
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert r.flagged and r.p_value < 0.001

    obs = {"v1": 700, "v2": 180, "v3": 120}  # three variants, 70/20/10
    r = srm_check(obs, {"v1": 70, "v2": 20, "v3": 10})
    ref = stats.chisquare([700, 180, 120], [700, 200, 100])
    assert (r.chi2, r.p_value, r.df) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue, rel=1e-9), 2)


def test_srm_not_computed_on_too_little_traffic_or_one_variant() -> None:
    r = srm_check({"v1": 30, "v2": 1}, {"v1": 95, "v2": 5})
    assert r.chi2 is None and not r.flagged and "too few" in r.note
    r = srm_check({"v1": 300}, {"v1": 100, "v2": 0})
    assert r.chi2 is None and "fewer than two" in r.note
    r = srm_check({"v1": 300, "v2": 310, "v3": 4}, {"v1": 50, "v2": 50, "v3": 0})
    assert r.chi2 is not None and "v3" in r.note


# --------------------------------------------------------------------------- reports


def test_ab_report_two_variants() -> None:
    snaps = {
        "v3": conv(1000, 1000, 120, errors=10) | {"latency_ms": {"p50": 4.0, "p95": 9.0, "p99": 20.0}},
        "v4": conv(1000, 1000, 150, errors=12) | {"latency_ms": {"p50": 5.0, "p95": 10.0, "p99": 25.0}},
    }
    rep = ab_report(snaps, {"v3": 50, "v4": 50})
    assert rep.control == "v3" and rep.metric == "conversion"
    assert [v.label for v in rep.variants] == ["v3", "v4"]
    (c,) = rep.comparisons
    assert (c.a, c.b) == ("v3", "v4")
    assert c.outcome.verdict == BETTER
    assert c.error_rate.verdict == NO_DIFFERENCE
    assert c.p99_ratio == pytest.approx(1.25)
    assert not rep.srm.flagged and rep.warnings == []
    doc = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert doc["comparisons"][0]["outcome"]["verdict"] == "B better"


def test_ab_report_flags_srm_and_compares_each_variant_with_the_control() -> None:
    snaps = {"v1": conv(6000, 500, 50), "v2": conv(2000, 500, 55), "v3": conv(2000, 500, 45)}
    rep = ab_report(snaps, {"v1": 50, "v2": 25, "v3": 25}, control="v2")
    assert rep.control == "v2"
    assert [(c.a, c.b) for c in rep.comparisons] == [("v2", "v1"), ("v2", "v3")]
    assert rep.srm.flagged
    assert any("sample ratio mismatch" in w for w in rep.warnings)
    with pytest.raises(ValueError, match="not a variant"):
        ab_report(snaps, {"v1": 50, "v2": 50}, control="v9")


def test_ab_report_of_an_idle_app() -> None:
    rep = ab_report({}, {"v1": 100})
    assert rep.control == "v1" and rep.comparisons == []
    json.dumps(rep.to_dict(), allow_nan=False)
    assert abstats.ab_report({}, {}).control is None
