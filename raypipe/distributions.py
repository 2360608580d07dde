"""Distribution functions for the A/B and drift tests, with the standard library only:
the normal, Student t (and its quantile), chi-square and Fisher's exact test.  The
regularized incomplete beta and gamma functions by continued fractions (Lentz) and
series (Numerical Recipes, 3rd ed., 6.2 and 6.4), the t quantile by safeguarded Newton
steps on the CDF; they agree with scipy to better than 1e-9 (tests/unit/test_abstats.py)."""

from __future__ import annotations

import math
from statistics import NormalDist

_EPS = 1e-16
_TINY = 1e-300
_MAX_ITER = 100_000


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
