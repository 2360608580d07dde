"""The statistics of drift detection (pure: numpy and math; no Ray, no scipy).

**Two-sample Kolmogorov-Smirnov** (:func:`ks_2samp`): ``D = max_x |F_ref(x) - F_win(x)|``
over the pooled values (ties handled by ``searchsorted(side="right")``).  The p-value is
scipy's ``ks_2samp(method="asymp")``: ``P(D_n >= D)`` for the one-sample two-sided KS
distribution with ``n = round(m * w / (m + w))`` (Smirnov's asymptotic reduction of the
two-sample test), computed as Simard and L'Ecuyer (2011, J. Stat. Softw. 39(11)) do:

* ``n*D <= 1`` and ``n*D >= n - 1``: Ruben and Gambino's exact formulas;
* ``D >= 0.5`` or ``n*D**2 >= 2.2`` (``n > 140``; ``> 4`` for ``n <= 140``): twice
  Smirnov's exact one-sided tail, Birnbaum and Tingey (1951):
  ``P(D+ >= x) = x * sum_{j=0}^{floor(n(1-x))} C(n,j) (1-x-j/n)**(n-j) (x+j/n)**(j-1)``;
* ``n <= 140``, or ``n*D**1.5 <= 1.4``: Durbin's matrix (Marsaglia, Tsang and Wang 2003,
  J. Stat. Softw. 8(18)), exact;
* otherwise Pelz and Good's (1976) expansion of Kolmogorov's limit
  ``K(z) = 1 - 2 sum_{k>=1} (-1)**(k-1) exp(-2 k**2 z**2)`` to order ``n**-1.5``.

  Kolmogorov's limit alone (``sqrt(n) * D``) is off by up to 0.006 at ``n = 476`` (a
  500-row window against 10,000 reference values), so it is not used for p-values
  (:func:`kolmogorov_sf` is here for reference).  The result agrees with scipy to about
  1e-9 (``tests/unit/test_drift.py``).  With ties (integer features) the test is
  conservative: fewer false alarms, less power.

**PSI** (population stability index, :func:`psi`): ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)``
over bins, ``e`` the reference shares, ``a`` the window's.  Numeric bins are the reference
sample's quantiles at ``i / bins`` (deciles by default; the credit-scoring convention),
outer bins open (``(-inf, q1)``, ``[q1, q2)``..., ``[q_{B-1}, inf)``), duplicate edges
merged (discrete data); categorical bins are the reference's categories plus one bin for
everything else (:data:`OTHER`).  An empty bin's share is replaced by
``PSI_EPSILON = 1e-4`` (as Evidently does), so an empty bin on either side adds a large
but finite term.

**Pearson's chi-square goodness of fit** (:func:`chisquare`): ``p = Q(df/2, stat/2)`` (the
regularized upper incomplete gamma function, :func:`raypipe.distributions.chi2_sf`), as
``scipy.stats.chisquare``.  :func:`pool_cells` makes the cells of a categorical window:
expected ``= w * count_ref / count``; cells expecting fewer than 5 (Cochran's rule) are
pooled into one cell (values unseen in the reference go there too), and a pooled cell
still under 5 is merged into the smallest other cell.

**Decisions**: :func:`bonferroni` (the per-test level over ``m`` p-value tests) and
:func:`dataset_drifted` (at least a share of the tested features drifted; Evidently's rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from raypipe.distributions import chi2_sf

__all__ = [
    "MIN_EXPECTED",
    "OTHER",
    "PSI_EPSILON",
    "KSResult",
    "bin_shares",
    "bonferroni",
    "chisquare",
    "dataset_drifted",
    "kolmogorov_sf",
    "ks_2samp",
    "kstwo_sf",
    "pool_cells",
    "psi",
    "psi_categorical",
    "psi_numeric",
    "quantile_edges",
    "smirnov_sf",
]

#: The share used for an empty PSI bin (Evidently's choice).
PSI_EPSILON = 1e-4
#: Cochran's rule: chi-square cells should expect at least this many.
MIN_EXPECTED = 5.0
#: A bin label for values outside the reference categories.
OTHER = "__other__"

_PI2 = math.pi**2
_SQRT2PI = math.sqrt(2 * math.pi)

# --------------------------------------------------------------------------- KS distributions


def kolmogorov_sf(z: float) -> float:
    """Kolmogorov's limiting distribution ``P(sqrt(n) D_n > z)`` as ``n -> inf``:
    ``2 sum_{k>=1} (-1)**(k-1) exp(-2 k**2 z**2)`` (for small z through the Jacobi
    form ``1 - sqrt(2 pi)/z sum_{k>=1} exp(-(2k-1)**2 pi**2 / (8 z**2))``)."""
    if z <= 0:
        return 1.0
    if z < 1.0:
        q = math.exp(-_PI2 / (8 * z * z))
        s = sum(q ** ((2 * k - 1) ** 2) for k in range(1, 20))
        return max(0.0, min(1.0, 1.0 - _SQRT2PI / z * s))
    s = sum((-1) ** (k - 1) * math.exp(-2 * k * k * z * z) for k in range(1, 101))
    return max(0.0, min(1.0, 2 * s))


def smirnov_sf(n: int, x: float) -> float:
    """Smirnov's one-sided ``P(D_n^+ >= x)``, exactly (Birnbaum and Tingey 1951), in logs:
    ``x * sum_{j=0}^{floor(n(1-x))} C(n,j) (1-x-j/n)**(n-j) (x+j/n)**(j-1)``."""
    if x <= 0:
        return 1.0
    if x >= 1:
        return 0.0
    jmax = int(math.floor(n * (1.0 - x) + 1e-12))
    j = np.arange(jmax + 1, dtype=np.float64)
    base = 1.0 - x - j / n
    keep = (base > 0) | (j == n)
    j, base = j[keep], base[keep]
    # log C(n, j) as a running sum of log((n - i + 1) / i)
    steps = np.log((n - np.arange(1, jmax + 1, dtype=np.float64) + 1) / np.arange(1, jmax + 1, dtype=np.float64))
    logc = np.concatenate([[0.0], np.cumsum(steps)])[j.astype(np.int64)]
    with np.errstate(divide="ignore"):
        logs = logc + (n - j) * np.log(np.where(base > 0, base, 1.0)) + (j - 1) * np.log(x + j / n)
    top = float(np.max(logs))
    total = math.exp(top) * float(np.sum(np.exp(logs - top))) * x
    return max(0.0, min(1.0, total))


def _durbin_cdf(n: int, d: float) -> float:
    """``P(D_n < d)`` by Durbin's matrix, as Marsaglia, Tsang and Wang (2003) compute it
    (``k = floor(n d) + 1``, ``m = 2k - 1``, ``h = k - n d``; the (k, k) entry of ``H**n``
    times ``n! / n**n``), with the scale of ``H**n`` kept as a power of two."""
    k = int(n * d) + 1
    m = 2 * k - 1
    h = k - n * d
    i = np.arange(m)
    diff = i[:, None] - i[None, :] + 1
    H = (diff >= 0).astype(np.float64)
    H[:, 0] -= h ** (i + 1.0)
    H[m - 1, :] -= h ** (m - i.astype(np.float64))
    if 2 * h - 1 > 0:
        H[m - 1, 0] += (2 * h - 1) ** m
    factorials = np.array([float(math.factorial(v)) for v in range(m + 1)])
    H = H / factorials[np.clip(diff, 0, m)]

    def mul(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
        c = a[0] @ b[0]
        big = float(np.max(np.abs(c)))
        e = math.frexp(big)[1] if big > 0 else 0
        return np.ldexp(c, -e), a[1] + b[1] + e

    result: tuple[np.ndarray, int] | None = None
    power = (H, 0)
    nn = n
    while nn:
        if nn & 1:
            result = power if result is None else mul(result, power)
        nn >>= 1
        if nn:
            power = mul(power, power)
    assert result is not None
    s = float(result[0][k - 1, k - 1])
    if s <= 0:
        return 0.0
    log_p = math.log(s) + result[1] * math.log(2.0) + math.lgamma(n + 1) - n * math.log(n)
    return max(0.0, min(1.0, math.exp(log_p)))


def _pelz_good_cdf(n: int, x: float) -> float:
    """Pelz and Good's (1976) approximation of ``P(D_n <= x)``: Li-Chien and Korolyuk's
    ``K0(z) + K1(z)/sqrt(n) + K2(z)/n + K3(z)/n**1.5`` (``z = x sqrt(n)``), each term in its
    Jacobi-theta form for small z (scipy's ``_kolmogn_PelzGood``)."""
    z = math.sqrt(n) * x
    z2, z3, z4, z6 = z**2, z**3, z**4, z**6
    qlog = -_PI2 / 8 / z2
    if qlog < -708:
        return 0.0
    q = math.exp(qlog)
    k1a, k1b = -z2, _PI2 / 4
    k2a, k2b, k2c = 6 * z6 + 2 * z4, (2 * z4 - 5 * z2) * _PI2 / 4, _PI2**2 * (1 - 2 * z2) / 16
    k3d = _PI2**3 * (5 - 30 * z2) / 64
    k3c = _PI2**2 * (-60 * z2 + 212 * z4) / 16
    k3b = _PI2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z**8
    K = np.zeros(4)
    maxk = int(math.ceil(16 * z / math.pi))
    for kk in range(maxk, 0, -1):
        mm = 2 * kk - 1
        m2, m4, m6 = mm**2, mm**4, mm**6
        K *= q ** (8 * kk)
        K += np.array([1.0, k1a + k1b * m2, k2a + k2b * m2 + k2c * m4, k3a + k3b * m2 + k3c * m4 + k3d * m6])
    K *= q * _SQRT2PI
    K /= np.array([z, 6 * z4, 72 * z**7, 6480 * z**10])
    q2 = math.exp(-_PI2 / 2 / z2)
    ks = np.arange(maxk, 0, -1, dtype=np.float64)
    qp = q2 ** (ks**2)
    K[2] += float(np.sum(ks**2 * qp)) * _PI2 * _SQRT2PI / (-36 * z3)
    s3 = math.sqrt(3) * z
    K[3] += float(np.sum((s3 + math.pi * ks) * (s3 - math.pi * ks) * ks**2 * qp)) * _PI2 * _SQRT2PI / (216 * z6)
    K /= np.power(float(n), np.arange(4) / 2.0)
    return float(np.sum(K))


def kstwo_sf(n: int, x: float) -> float:
    """``P(D_n >= x)`` for the two-sided one-sample KS statistic of ``n`` values (scipy's
    ``kstwo.sf(x, n)``), by Simard and L'Ecuyer's choice of method (module docstring)."""
    if n <= 0:
        raise ValueError(f"kstwo_sf: n must be >= 1, got {n}")
    if x >= 1.0:
        return 0.0
    if x <= 0.0:
        return 1.0
    t = n * x
    if t <= 1.0:  # Ruben and Gambino
        if t <= 0.5:
            return 1.0
        cdf = math.exp(math.lgamma(n + 1) - n * math.log(n) + n * math.log(2 * t - 1))
        return max(0.0, min(1.0, 1.0 - cdf))
    if t >= n - 1:
        return max(0.0, min(1.0, 2 * (1.0 - x) ** n))
    if x >= 0.5:
        return max(0.0, min(1.0, 2 * smirnov_sf(n, x)))
    nx2 = t * x
    if n <= 140:
        if nx2 <= 4:
            return max(0.0, min(1.0, 1.0 - _durbin_cdf(n, x)))
        return max(0.0, min(1.0, 2 * smirnov_sf(n, x)))
    if nx2 >= 370.0:
        return 0.0
    if nx2 >= 2.2:
        return max(0.0, min(1.0, 2 * smirnov_sf(n, x)))
    cdf = _durbin_cdf(n, x) if n <= 100_000 and n * x**1.5 <= 1.4 else _pelz_good_cdf(n, x)
    return max(0.0, min(1.0, 1.0 - cdf))


# --------------------------------------------------------------------------- tests and indices


@dataclass(frozen=True)
class KSResult:
    statistic: float
    p_value: float
    #: ``round(m * w / (m + w))``: the n of the one-sample distribution used.
    n_effective: int


def ks_2samp(reference: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray) -> KSResult:
    """Two-sided two-sample KS test (scipy's ``ks_2samp(method="asymp")``)."""
    a = np.sort(np.asarray(reference, dtype=np.float64))
    b = np.sort(np.asarray(window, dtype=np.float64))
    n1, n2 = len(a), len(b)
    if min(n1, n2) == 0:
        raise ValueError("ks_2samp: both samples need at least one value")
    pooled = np.concatenate([a, b])
    cdf1 = np.searchsorted(a, pooled, side="right") / n1
    cdf2 = np.searchsorted(b, pooled, side="right") / n2
    d = float(np.max(np.abs(cdf1 - cdf2)))
    m, n = max(n1, n2), min(n1, n2)
    en = int(round(m * n / (m + n)))
    return KSResult(d, kstwo_sf(max(en, 1), d), max(en, 1))


def chisquare(observed: Sequence[float], expected: Sequence[float]) -> tuple[float, float, int]:
    """Pearson's chi-square goodness of fit: ``(sum (o - e)**2 / e, p, df = k - 1)``
    (``scipy.stats.chisquare(observed, expected)``; the sums must agree)."""
    o = np.asarray(observed, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if o.shape != e.shape or o.ndim != 1:
        raise ValueError("chisquare: observed and expected need the same length")
    if np.any(e <= 0):
        raise ValueError("chisquare: every expected count must be > 0")
    if not math.isclose(float(o.sum()), float(e.sum()), rel_tol=1e-8):
        raise ValueError(f"chisquare: observed sum {o.sum():g} != expected sum {e.sum():g}")
    stat = float(np.sum((o - e) ** 2 / e))
    df = len(o) - 1
    return stat, (chi2_sf(stat, df) if df > 0 else 1.0), df


def psi(
    expected_shares: Sequence[float] | np.ndarray, actual_shares: Sequence[float] | np.ndarray, eps: float = PSI_EPSILON
) -> float:
    """``sum (a - e) * ln(a / e)``, a zero share replaced by ``eps``."""
    e = np.asarray(expected_shares, dtype=np.float64)
    a = np.asarray(actual_shares, dtype=np.float64)
    e = np.where(e <= 0, eps, e)
    a = np.where(a <= 0, eps, a)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """The inner edges of ``bins`` quantile bins of the reference (``np.quantile`` at
    ``i / bins``, linear), duplicates merged."""
    if len(reference) == 0:
        return np.empty(0, dtype=np.float64)
    qs = np.quantile(np.asarray(reference, dtype=np.float64), np.arange(1, bins) / bins)
    return np.unique(qs)


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of ``values`` in each bin of :func:`quantile_edges` ``edges`` (outer bins open)."""
    idx = np.searchsorted(edges, values, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def psi_numeric(reference: np.ndarray, window: np.ndarray, bins: int = 10, eps: float = PSI_EPSILON) -> float:
    """PSI of a numeric window over the reference's quantile bins (module docstring)."""
    edges = quantile_edges(reference, bins)
    return psi(bin_shares(np.asarray(reference, float), edges), bin_shares(np.asarray(window, float), edges), eps)


def psi_categorical(reference: Mapping[str, float], window: Mapping[str, float], eps: float = PSI_EPSILON) -> float:
    """PSI over categories: the reference's (counts or shares) plus one bin for the rest."""
    ref_total = float(sum(reference.values()))
    win_total = float(sum(window.values()))
    if ref_total <= 0 or win_total <= 0:
        return 0.0
    keys = [k for k in reference if k != OTHER]
    e = [reference[k] / ref_total for k in keys] + [reference.get(OTHER, 0.0) / ref_total]
    inside = sum(window.get(k, 0.0) for k in keys)
    a = [window.get(k, 0.0) / win_total for k in keys] + [(win_total - inside) / win_total]
    return psi(e, a, eps)


def bonferroni(alpha: float, m: int) -> float:
    """The per-test level that keeps the family-wise error at ``alpha`` over ``m`` tests."""
    return alpha / max(m, 1)


def dataset_drifted(drifted: int, tested: int, share: float) -> bool:
    """At least ``share`` of the tested features drifted (no tested feature: no drift)."""
    return tested > 0 and drifted / tested >= share


def pool_cells(
    ref: Mapping[str, float], observed: Mapping[str, int], n: int
) -> tuple[list[str], list[float], list[float]]:
    """Chi-square cells: reference categories (+ OTHER) with expected ``n * share``; cells
    expecting < MIN_EXPECTED pooled, values unseen in the reference counted in the pool."""
    total = float(sum(ref.values()))
    cells = {k: (float(observed.get(k, 0)), n * v / total) for k, v in ref.items() if k != OTHER}
    pooled_obs = float(n - sum(o for o, _ in cells.values()))  # OTHER + unseen values
    pooled_exp = n * ref.get(OTHER, 0.0) / total
    small = [k for k, (_, e) in cells.items() if e < MIN_EXPECTED]
    for k in small:
        o, e = cells.pop(k)
        pooled_obs += o
        pooled_exp += e
    labels = list(cells)
    obs = [cells[k][0] for k in labels]
    exp = [cells[k][1] for k in labels]
    if pooled_exp >= MIN_EXPECTED or (pooled_exp > 0 and not labels):
        labels.append(OTHER)
        obs.append(pooled_obs)
        exp.append(pooled_exp)
    elif labels and (pooled_exp > 0 or pooled_obs > 0):
        j = int(np.argmin(exp))
        labels[j] = f"{labels[j]}+{OTHER}"
        obs[j] += pooled_obs
        exp[j] += pooled_exp
    return labels, obs, exp
