"""Drift detection over windows of live traffic (pure: numpy and math; no Ray, no scipy).

The reference is the ``data.profile`` JSON of the training data (see
:func:`raypipe.stages.data.profiling.finalize`); a window is the sampled rows one
variant served, with the predictions it made.  Per window and feature:

**Numeric features: two-sample Kolmogorov-Smirnov** against the profile's ``sample``
(a uniform sample of the finite values, up to ``sample_size``, default 10,000).  The
sample, not the quantiles (7 points) or the histogram (20 equal-width bins), because
the test needs the reference CDF at every live value; a two-sample test also accounts
for the reference itself being a sample (as Evidently and alibi-detect do).
``D = max_x |F_ref(x) - F_win(x)|`` over the pooled values (ties handled by
``searchsorted(side="right")``).  The p-value is scipy's ``ks_2samp(method="asymp")``:
``P(D_n >= D)`` for the one-sample two-sided KS distribution with
``n = round(m * w / (m + w))`` (Smirnov's asymptotic reduction of the two-sample test),
computed as Simard and L'Ecuyer (2011, J. Stat. Softw. 39(11)) do:

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

**PSI** (population stability index; reported for every feature, the drift method when
configured): ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over bins, ``e`` the reference
shares, ``a`` the window's.  Numeric bins are the reference sample's quantiles at
``i / bins`` (deciles by default; the credit-scoring convention), outer bins open
(``(-inf, q1)``, ``[q1, q2)``..., ``[q_{B-1}, inf)``), duplicate edges merged (discrete
data); categorical bins are the profile's categories plus one bin for everything else.
An empty bin's share is replaced by ``PSI_EPSILON = 1e-4`` (as Evidently does), so an
empty bin on either side adds a large but finite term.  Drift: ``PSI > 0.2`` (the usual
reading: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant).

**Categorical features: Pearson's chi-square goodness of fit** of the window's counts
against the profile's ``frequencies`` (+ ``other``): expected ``= w * count_ref / count``;
cells expecting fewer than 5 (Cochran's rule) are pooled into one cell (values unseen in
the reference go there too), and a pooled cell still under 5 is merged into the smallest
other cell; ``df = cells - 1``; ``p = Q(df/2, stat/2)`` (the regularized upper incomplete
gamma function, :func:`raypipe.serve.abstats.chi2_sf`), as ``scipy.stats.chisquare``.

**Feature drift**: for the p-value tests, ``p < alpha_f / m`` (Bonferroni over the ``m``
features tested with a p-value in the window; ``alpha_f`` defaults to 0.05); for PSI,
``PSI > threshold_f``.  **Dataset drift**: at least ``drift_share`` (0.5) of the tested
features drifted (Evidently's rule).  Every method and threshold can be set per feature.

**Prediction drift**: the window's predictions against a reference distribution: class
labels as a categorical (chi-square) for classification, values as a numeric (KS) for
regression; at ``prediction.alpha`` (no correction: one test).  The reference is, in
order: predictions given explicitly (e.g. the model's predictions on its test set), else
the label column of the profile (``model_meta["label"]``): the profile keeps no joint
rows (each column's sample is sorted on its own), so the model cannot be run on the
reference; the label distribution is the proxy (a biased model shows a constant offset
from it, so give reference predictions when one is at hand).

**Performance drift** (labels arriving through ``/feedback``): windows of
``performance.window_labels`` labelled predictions; classification: accuracy, drifted
when ``reference - accuracy > max_drop`` (absolute, default 0.05); regression: RMSE or
MAE, drifted when ``value > reference * (1 + max_increase)`` (default 0.2).  The
reference is ``performance.reference``, else the evaluation metrics given to the
monitor, else the model package's last metrics (``val_accuracy`` before ``accuracy``).

**Debouncing** (:class:`Debouncer`): ``consecutive`` drifted windows in a row (per
variant and signal) make one event; while drift goes on no further event; the episode
ends after ``reset_windows`` clean windows in a row, and only then can a new one begin.
An event *triggers* (retraining, issue 8 part 4) unless a retraining is already in
flight: the triggering event claims it until :meth:`Debouncer.end_retraining` (or
``in_flight_timeout_s``), so two variants drifting at once trigger once.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raypipe.models.preprocess import category_key, to_day
from raypipe.serve.abstats import chi2_sf

__all__ = [
    "PSI_EPSILON",
    "Debouncer",
    "DriftDetector",
    "FeatureOverride",
    "FeatureResult",
    "KSResult",
    "MonitorSpec",
    "PerformanceResult",
    "PerformanceSpec",
    "PerformanceWindow",
    "PredictionSpec",
    "WindowBuffer",
    "WindowResult",
    "bonferroni",
    "category_key",
    "chi2_sf",
    "chisquare",
    "class_key",
    "dataset_drifted",
    "keep_request",
    "kolmogorov_sf",
    "ks_2samp",
    "kstwo_sf",
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


# --------------------------------------------------------------------------- tests


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


def psi(expected_shares: Sequence[float], actual_shares: Sequence[float], eps: float = PSI_EPSILON) -> float:
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


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(edges, values, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def psi_numeric(reference: np.ndarray, window: np.ndarray, bins: int = 10, eps: float = PSI_EPSILON) -> float:
    """PSI of a numeric window over the reference's quantile bins (module docstring)."""
    edges = quantile_edges(reference, bins)
    return psi(_bin_shares(np.asarray(reference, float), edges), _bin_shares(np.asarray(window, float), edges), eps)


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


def _pool(ref: Mapping[str, float], observed: Mapping[str, int], n: int) -> tuple[list[str], list[float], list[float]]:
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


# --------------------------------------------------------------------------- keys and sampling


_INT_TEXT = re.compile(r"^-?\d+$")


def class_key(value: Any) -> str | None:
    """A class label as a key that is the same for ``3``, ``3.0``, ``np.int64(3)`` and ``"3"``
    (:func:`category_key`, with integer text read as the integer)."""
    if isinstance(value, str):
        return str(int(value)) if _INT_TEXT.match(value) else value
    return category_key(value)


def prediction_value(pred: Any, classes: Sequence[Any] | None = None) -> Any:
    """What a served prediction is: a dict's ``prediction``/``label``/``class``/``value``;
    a list or array of scores -> the class at the argmax (its index without ``classes``);
    a one-element list -> its element; anything else as is."""
    if isinstance(pred, Mapping):
        for k in ("prediction", "label", "class", "value", "y"):
            if k in pred:
                return prediction_value(pred[k], classes)
        return None
    if isinstance(pred, (list, tuple, np.ndarray)):
        arr = np.asarray(pred, dtype=object).ravel()
        if len(arr) == 1:
            return prediction_value(arr[0], classes)
        try:
            i = int(np.argmax(np.asarray(arr, dtype=np.float64)))
        except (TypeError, ValueError):
            return None
        return classes[i] if classes is not None and i < len(classes) else i
    if isinstance(pred, np.generic):
        return pred.item()
    return pred


def keep_request(request_id: str, rate: float, salt: str = "") -> bool:
    """Deterministic sampling by request id: the same id is always kept or always dropped,
    so sampling twice (ingress, then monitor) keeps the same rows as sampling once."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    h = hashlib.blake2b(f"{salt}\x00{request_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64 < rate


def to_float(value: Any) -> float:
    """A live numeric value as a float (NaN for nulls and values that are not numbers)."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


Alpha = Annotated[float, Field(gt=0, lt=1)]
NumericMethod = Literal["ks", "psi"]
CategoricalMethod = Literal["chi2", "psi"]


class FeatureOverride(_Strict):
    """Per-feature settings; unset fields take the spec's defaults."""

    #: ``ks`` / ``psi`` (numeric), ``chi2`` / ``psi`` (categorical), ``none`` (not monitored).
    method: Literal["ks", "psi", "chi2", "none"] | None = None
    #: ks/chi2: the level alpha before the Bonferroni division; psi: the PSI threshold.
    threshold: Annotated[float, Field(gt=0)] | None = None
    #: PSI quantile bins (numeric).
    bins: Annotated[int, Field(ge=2, le=100)] | None = None


class PredictionSpec(_Strict):
    enabled: bool = True
    #: Level of the prediction test (chi-square for classes, KS for values).
    alpha: Alpha = 0.05


class PerformanceSpec(_Strict):
    enabled: bool = True
    #: auto: accuracy for classification, rmse for regression.
    metric: Literal["auto", "accuracy", "rmse", "mae"] = "auto"
    #: The expected value (default: the evaluation metrics, else the model's last metrics).
    reference: float | None = None
    #: accuracy: drift when ``reference - accuracy > max_drop`` (absolute).
    max_drop: Annotated[float, Field(gt=0, le=1)] = 0.05
    #: rmse / mae: drift when ``value > reference * (1 + max_increase)``.
    max_increase: Annotated[float, Field(gt=0)] = 0.2
    #: Labelled predictions per performance window.
    window_labels: Annotated[int, Field(ge=10)] = 200


Signal = Literal["data", "prediction", "performance"]


class MonitorSpec(_Strict):
    """How an app's live traffic is sampled, windowed and tested."""

    #: A window closes after this many sampled rows ...
    window_rows: Annotated[int, Field(ge=10)] | None = 500
    #: ... or after this many seconds, if it has ``min_window_rows`` by then.
    window_seconds: Annotated[float, Field(gt=0)] | None = None
    min_window_rows: Annotated[int, Field(ge=10)] = 100
    #: Fraction of served rows logged (by request id when given, else at random).
    sample_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    #: Rows kept per open window (a uniform reservoir when a window sees more).
    reservoir_size: Annotated[int, Field(ge=10, le=1_000_000)] = 5000
    #: Features monitored (default: the model's features found in the profile).
    features: list[str] | None = None
    overrides: dict[str, FeatureOverride] = Field(default_factory=dict)
    numeric_method: NumericMethod = "ks"
    categorical_method: CategoricalMethod = "chi2"
    #: Family-wise level of the p-value tests (per feature before Bonferroni).
    alpha: Alpha = 0.05
    correction: Literal["bonferroni", "none"] = "bonferroni"
    psi_threshold: Annotated[float, Field(gt=0)] = 0.2
    psi_bins: Annotated[int, Field(ge=2, le=100)] = 10
    #: A window's dataset drifted when at least this share of its tested features drifted.
    drift_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    #: A feature needs this many non-null values in a window to be tested.
    min_feature_rows: Annotated[int, Field(ge=5)] = 30
    prediction: PredictionSpec = Field(default_factory=PredictionSpec)
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec)
    #: Drifted windows in a row that make one event, and clean ones that end the episode.
    consecutive: Annotated[int, Field(ge=1)] = 3
    reset_windows: Annotated[int, Field(ge=1)] = 3
    #: What makes a window count as drifted for events.
    trigger_on: list[Signal] = Field(default_factory=lambda: ["data", "prediction", "performance"])
    #: A retraining claimed by an event and never finished stops blocking after this.
    in_flight_timeout_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    #: Memory bounds: results kept per variant, events kept, request ids awaiting labels, variants.
    history_windows: Annotated[int, Field(ge=1, le=100_000)] = 100
    max_events: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    max_pending_labels: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000
    max_variants: Annotated[int, Field(ge=1, le=1000)] = 16
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> MonitorSpec:
        if self.window_rows is None and self.window_seconds is None:
            raise ValueError("give window_rows, window_seconds or both")
        if self.window_rows is not None and self.min_window_rows > self.window_rows:
            raise ValueError(f"min_window_rows ({self.min_window_rows}) > window_rows ({self.window_rows})")
        if self.reservoir_size < self.min_window_rows:
            raise ValueError(f"reservoir_size ({self.reservoir_size}) < min_window_rows ({self.min_window_rows})")
        return self


# --------------------------------------------------------------------------- references


@dataclass
class FeatureReference:
    """What a window of one feature is compared with, prepared once from the profile."""

    name: str
    kind: Literal["numeric", "categorical"]
    #: numeric: the sorted reference sample, its PSI edges and shares.
    sample: np.ndarray | None = None
    #: categorical: key -> reference count (OTHER: the rest).
    counts: dict[str, float] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    psi_edges: np.ndarray | None = None
    psi_shares: np.ndarray | None = None
    #: Why the feature cannot be tested (None: it can).
    problem: str | None = None
    #: How live values become numbers: ``days`` for dates and timestamps (days since
    #: 1970-01-01, :func:`raypipe.models.preprocess.to_days`), None for numbers.
    encoding: str | None = None


def _numeric_reference(name: str, col: Mapping[str, Any], bins: int) -> FeatureReference:
    sample = np.asarray([v for v in (col.get("sample") or []) if v is not None], dtype=np.float64)
    sample = np.sort(sample[np.isfinite(sample)])
    ref = FeatureReference(name, "numeric", sample=sample)
    ref.summary = {k: col.get(k) for k in ("count", "mean", "std", "min", "max", "null_fraction")}
    ref.summary["sample"] = len(sample)
    if len(sample) == 0:
        ref.problem = "the profile has no sample of this column"
        return ref
    ref.psi_edges = quantile_edges(sample, bins)
    ref.psi_shares = _bin_shares(sample, ref.psi_edges)
    return ref


def _categorical_reference(name: str, col: Mapping[str, Any]) -> FeatureReference:
    freqs = {str(k): float(v) for k, v in (col.get("frequencies") or {}).items()}
    other = float(col.get("other") or 0)
    counts = dict(freqs)
    if other > 0:
        counts[OTHER] = other
    ref = FeatureReference(name, "categorical", counts=counts)
    total = sum(counts.values())
    top = sorted(freqs.items(), key=lambda kv: -kv[1])[:5]
    ref.summary = {
        "count": col.get("count"),
        "distinct": col.get("distinct"),
        "null_fraction": col.get("null_fraction"),
        "top": {k: v / total for k, v in top} if total else {},
    }
    if total <= 0:
        ref.problem = "the profile has no values of this column"
    return ref


def _classes_from_column(col: Mapping[str, Any]) -> dict[str, float]:
    """Class counts of a label column of a profile (categorical frequencies, or the values of a
    numeric column's sample, a systematic sample when it has few distinct values)."""
    if col.get("kind") == "categorical":
        out: dict[str, float] = {}
        for k, v in (col.get("frequencies") or {}).items():
            key = class_key(k)
            if key is not None:
                out[key] = out.get(key, 0.0) + float(v)
        if col.get("other"):
            out[OTHER] = float(col["other"])
        return out
    out = {}
    for v in col.get("sample") or []:
        key = class_key(v)
        if key is not None:
            out[key] = out.get(key, 0.0) + 1.0
    return out


# --------------------------------------------------------------------------- results


@dataclass
class FeatureResult:
    feature: str
    kind: str
    method: str
    #: KS D, chi-square statistic or PSI (the method's); None when not tested.
    statistic: float | None
    p_value: float | None
    #: What decides: the corrected level (p < threshold) or the PSI threshold (psi > threshold).
    threshold: float | None
    drifted: bool | None
    #: PSI, reported for every tested feature.
    psi: float | None = None
    n: int = 0
    nulls: int = 0
    #: Window statistics (numeric: mean, std; categorical: top shares).
    stats: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class PerformanceResult:
    window_id: int
    variant: str
    metric: str
    value: float | None
    reference: float | None
    #: accuracy: reference - value (a drop); errors: value / reference - 1 (an increase).
    change: float | None
    threshold: float
    n: int
    drifted: bool | None
    closed_at: float
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class WindowResult:
    window_id: int
    variant: str
    opened_at: float
    closed_at: float
    #: Sampled rows the window saw, and rows tested (at most the reservoir).
    rows: int
    rows_used: int
    features: dict[str, FeatureResult]
    tested: int
    drifted_features: int
    drift_share: float | None
    dataset_drifted: bool
    prediction: FeatureResult | None = None
    #: Counted as drifted for events (``trigger_on``: data and/or prediction).
    drifted: bool = False
    correction: str = "bonferroni"
    alpha: float = 0.05

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.prediction is not None and self.prediction.drifted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_id": self.window_id,
            "variant": self.variant,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "rows": self.rows,
            "rows_used": self.rows_used,
            "tested": self.tested,
            "drifted_features": self.drifted_features,
            "drift_share": _finite(self.drift_share),
            "dataset_drifted": self.dataset_drifted,
            "prediction_drifted": self.prediction_drifted,
            "drifted": self.drifted,
            "correction": self.correction,
            "alpha": self.alpha,
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "prediction": self.prediction.to_dict() if self.prediction else None,
        }


# --------------------------------------------------------------------------- the detector


class DriftDetector:
    """Compares windows with a reference profile under a :class:`MonitorSpec`."""

    def __init__(
        self,
        profile: Mapping[str, Any],
        spec: MonitorSpec | None = None,
        model_meta: Mapping[str, Any] | None = None,
        *,
        reference_predictions: Sequence[Any] | None = None,
        reference_metrics: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec or MonitorSpec()
        self.meta = dict(model_meta or {})
        cols = profile.get("columns") if isinstance(profile, Mapping) else None
        if not isinstance(cols, Mapping):
            raise ValueError("the reference profile has no 'columns' (expected a data.profile output)")
        self.profile_rows = profile.get("rows")
        wanted = self.spec.features
        if wanted is None:
            model_features = self.meta.get("features")
            label = self.meta.get("label")
            if model_features:
                wanted = [f for f in model_features if f in cols]
            else:
                wanted = [
                    c for c in cols if c != label and cols[c].get("kind") in ("numeric", "datetime", "categorical")
                ]
        missing = [f for f in wanted if f not in cols]
        if missing:
            raise ValueError(f"features not in the reference profile: {', '.join(missing)}")
        unknown = [f for f in self.spec.overrides if f not in wanted]
        if unknown:
            raise ValueError(f"overrides name features that are not monitored: {', '.join(unknown)}")
        self.refs: dict[str, FeatureReference] = {}
        self.methods: dict[str, str] = {}
        for f in wanted:
            col = cols[f]
            kind = col.get("kind")
            o = self.spec.overrides.get(f, FeatureOverride())
            if kind in ("numeric", "datetime"):
                method = o.method or self.spec.numeric_method
                if method == "chi2":
                    raise ValueError(f"overrides.{f}.method: chi2 is for categorical features; {f} is {kind}")
                self.refs[f] = _numeric_reference(f, col, o.bins or self.spec.psi_bins)
                if kind == "datetime":
                    self.refs[f].encoding = "days"
            elif kind == "categorical":
                method = o.method or self.spec.categorical_method
                if method == "ks":
                    raise ValueError(f"overrides.{f}.method: ks is for numeric features; {f} is categorical")
                self.refs[f] = _categorical_reference(f, col)
            else:
                raise ValueError(
                    f"feature {f!r} is of kind {kind!r} in the profile; only numeric, datetime and categorical"
                )
            if method in ("ks", "chi2") and o.threshold is not None and o.threshold >= 1:
                raise ValueError(
                    f"overrides.{f}.threshold: {method} takes a level alpha in (0, 1), got {o.threshold:g}"
                )
            self.methods[f] = method
        self.features = list(self.refs)
        self.task = self._task()
        self.classes = self.meta.get("classes")
        self.prediction_ref, self.prediction_source = self._prediction_reference(cols, reference_predictions)
        self.performance_metric, self.performance_reference, self.performance_source = self._performance_reference(
            reference_metrics
        )

    # ------------------------------------------------------------------ setup
    def _task(self) -> str | None:
        task = self.meta.get("task")
        if task in ("classification", "regression"):
            return task
        if self.meta.get("classes"):
            return "classification"
        return None

    def _prediction_reference(
        self, cols: Mapping[str, Any], given: Sequence[Any] | None
    ) -> tuple[FeatureReference | None, str | None]:
        if not self.spec.prediction.enabled or self.task is None:
            return None, None
        classes = self.meta.get("classes")
        if given is not None and len(given):
            values = [prediction_value(p, classes) for p in given]
            source = "reference predictions"
            if self.task == "classification":
                counts: dict[str, float] = {}
                for v in values:
                    k = class_key(v)
                    if k is not None:
                        counts[k] = counts.get(k, 0.0) + 1.0
                return FeatureReference("prediction", "categorical", counts=counts), source
            sample = np.sort(np.asarray([to_float(v) for v in values], dtype=np.float64))
            sample = sample[np.isfinite(sample)]
            return FeatureReference("prediction", "numeric", sample=sample), source
        label = self.meta.get("label")
        if not label or label not in cols:
            return None, None
        col = cols[label]
        source = f"label column {label!r} of the profile"
        if self.task == "classification":
            counts = _classes_from_column(col)
            return (FeatureReference("prediction", "categorical", counts=counts) if counts else None), source
        if col.get("kind") != "numeric":
            return None, None
        ref = _numeric_reference("prediction", col, self.spec.psi_bins)
        return (ref if ref.problem is None else None), source

    def _performance_reference(self, given: Mapping[str, Any] | None) -> tuple[str | None, float | None, str | None]:
        p = self.spec.performance
        if not p.enabled or self.task is None:
            return None, None, None
        metric = p.metric
        if metric == "auto":
            metric = "accuracy" if self.task == "classification" else "rmse"
        if p.reference is not None:
            return metric, float(p.reference), "spec"
        if given:
            for key in (metric, f"test_{metric}"):
                v = given.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    return metric, float(v), f"evaluation metrics ({key})"
        meta_metrics = self.meta.get("metrics") or {}
        for key in (f"test_{metric}", f"val_{metric}", metric):
            v = meta_metrics.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                return metric, float(v), f"model metrics ({key})"
        return metric, None, None

    # ------------------------------------------------------------------ describe
    def describe(self) -> dict[str, Any]:
        """Per feature: kind, method, thresholds and the reference's summary."""
        s = self.spec
        feats = {}
        for f, ref in self.refs.items():
            o = s.overrides.get(f, FeatureOverride())
            method = self.methods[f]
            thr = o.threshold if o.threshold is not None else (s.psi_threshold if method == "psi" else s.alpha)
            feats[f] = {
                "kind": ref.kind,
                "method": method,
                "threshold": thr,
                "threshold_kind": "psi >" if method == "psi" else ("p <" if method != "none" else None),
                "reference": _jsonable(ref.summary),
                "problem": ref.problem,
            }
        return {
            "profile_rows": self.profile_rows,
            "task": self.task,
            "features": feats,
            "prediction": {
                "kind": self.prediction_ref.kind if self.prediction_ref else None,
                "reference": self.prediction_source,
                "alpha": s.prediction.alpha,
            },
            "performance": {
                "metric": self.performance_metric,
                "reference": self.performance_reference,
                "source": self.performance_source,
                "max_drop": s.performance.max_drop,
                "max_increase": s.performance.max_increase,
                "window_labels": s.performance.window_labels,
            },
        }

    # ------------------------------------------------------------------ evaluate
    def _test_numeric(self, ref: FeatureReference, values: np.ndarray, method: str, bins: int) -> FeatureResult:
        x = np.asarray(values, dtype=np.float64)
        nulls = int(np.sum(np.isnan(x)))
        x = x[np.isfinite(x)]
        res = FeatureResult(ref.name, "numeric", method, None, None, None, None, n=len(x), nulls=nulls)
        if len(x):
            res.stats = {"mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)) if len(x) > 1 else None}
        if ref.problem:
            res.note = ref.problem
            return res
        if len(x) < self.spec.min_feature_rows:
            res.note = f"insufficient data: {len(x)} values (needs {self.spec.min_feature_rows})"
            return res
        assert ref.sample is not None
        if ref.psi_edges is not None and ref.psi_shares is not None and bins == self.spec.psi_bins:
            res.psi = psi(ref.psi_shares, _bin_shares(x, ref.psi_edges))
        else:
            res.psi = psi_numeric(ref.sample, x, bins)
        if method == "psi":
            res.statistic = res.psi
        else:
            ks = ks_2samp(ref.sample, x)
            res.statistic, res.p_value = ks.statistic, ks.p_value
        return res

    def _test_categorical(self, ref: FeatureReference, values: Sequence[Any], method: str, keyer: Any) -> FeatureResult:
        counts: dict[str, int] = {}
        nulls = 0
        for v in values:
            k = keyer(v)
            if k is None:
                nulls += 1
            else:
                counts[k] = counts.get(k, 0) + 1
        n = sum(counts.values())
        res = FeatureResult(ref.name, "categorical", method, None, None, None, None, n=n, nulls=nulls)
        if n:
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
            res.stats = {"top": {k: c / n for k, c in top}, "distinct": len(counts)}
            if ref.counts is not None:
                unseen = sum(c for k, c in counts.items() if k not in ref.counts)
                res.stats["unseen_share"] = unseen / n
        if ref.problem:
            res.note = ref.problem
            return res
        if n < self.spec.min_feature_rows:
            res.note = f"insufficient data: {n} values (needs {self.spec.min_feature_rows})"
            return res
        assert ref.counts is not None
        res.psi = psi_categorical(ref.counts, {k: float(c) for k, c in counts.items()})
        if method == "psi":
            res.statistic = res.psi
            return res
        labels, obs, exp = _pool(ref.counts, counts, n)
        if len(labels) < 2:
            res.statistic, res.p_value = 0.0, 1.0
            res.note = "one chi-square cell after pooling rare categories: nothing to test"
            return res
        stat, p, df = chisquare(obs, exp)
        res.statistic, res.p_value = stat, p
        res.stats["df"] = df
        return res

    def evaluate(
        self,
        columns: Mapping[str, Sequence[Any] | np.ndarray],
        predictions: Sequence[Any] | None = None,
        *,
        window_id: int = 0,
        variant: str = "",
        opened_at: float = 0.0,
        closed_at: float = 0.0,
        rows: int | None = None,
    ) -> WindowResult:
        """Test one window: ``columns`` maps each feature to its values (numeric: floats with
        NaN for nulls; categorical: keys as :func:`category_key` gives, None for nulls)."""
        s = self.spec
        results: dict[str, FeatureResult] = {}
        n_rows = 0
        for f in self.features:
            ref, method = self.refs[f], self.methods[f]
            o = s.overrides.get(f, FeatureOverride())
            values = columns.get(f, [])
            n_rows = max(n_rows, len(values))
            if method == "none":
                results[f] = FeatureResult(
                    f, ref.kind, "none", None, None, None, None, n=len(values), note="not monitored"
                )
            elif ref.kind == "numeric":
                results[f] = self._test_numeric(ref, np.asarray(values, dtype=np.float64), method, o.bins or s.psi_bins)
            else:
                results[f] = self._test_categorical(ref, values, method, category_key)
        # decide: Bonferroni over the features tested with a p-value
        p_tested = [r for r in results.values() if r.p_value is not None]
        m = len(p_tested) if s.correction == "bonferroni" else 1
        for f, r in results.items():
            if r.statistic is None:
                continue
            o = s.overrides.get(f, FeatureOverride())
            if r.method == "psi":
                r.threshold = o.threshold if o.threshold is not None else s.psi_threshold
                r.drifted = bool(r.statistic > r.threshold)
            else:
                level = o.threshold if o.threshold is not None else s.alpha
                r.threshold = bonferroni(level, m)
                r.drifted = bool(r.p_value is not None and r.p_value < r.threshold)
        tested = [r for r in results.values() if r.drifted is not None]
        n_drifted = sum(1 for r in tested if r.drifted)
        share = n_drifted / len(tested) if tested else None
        ds = dataset_drifted(n_drifted, len(tested), s.drift_share)
        pred = self.evaluate_predictions(predictions) if predictions is not None else None
        drifted = ("data" in s.trigger_on and ds) or (
            "prediction" in s.trigger_on and pred is not None and bool(pred.drifted)
        )
        return WindowResult(
            window_id=window_id,
            variant=variant,
            opened_at=opened_at,
            closed_at=closed_at,
            rows=rows if rows is not None else n_rows,
            rows_used=n_rows,
            features=results,
            tested=len(tested),
            drifted_features=n_drifted,
            drift_share=share,
            dataset_drifted=ds,
            prediction=pred,
            drifted=bool(drifted),
            correction=s.correction,
            alpha=s.alpha,
        )

    def evaluate_predictions(self, predictions: Sequence[Any]) -> FeatureResult | None:
        """The prediction-drift test of one window's predictions (None: no reference)."""
        ref = self.prediction_ref
        if ref is None:
            return None
        values = [prediction_value(p, self.classes) for p in predictions]
        if ref.kind == "categorical":
            res = self._test_categorical(ref, values, "chi2", class_key)
        else:
            res = self._test_numeric(ref, np.asarray([to_float(v) for v in values]), "ks", self.spec.psi_bins)
        if res.p_value is not None:
            res.threshold = self.spec.prediction.alpha
            res.drifted = bool(res.p_value < res.threshold)
        return res

    def evaluate_performance(
        self, window: PerformanceWindow, *, window_id: int, variant: str, closed_at: float
    ) -> PerformanceResult:
        """The performance result of a window of labelled predictions."""
        p = self.spec.performance
        metric = self.performance_metric or "accuracy"
        value = window.value(metric)
        ref = self.performance_reference
        res = PerformanceResult(
            window_id=window_id,
            variant=variant,
            metric=metric,
            value=value,
            reference=ref,
            change=None,
            threshold=p.max_drop if metric == "accuracy" else p.max_increase,
            n=window.n,
            drifted=None,
            closed_at=closed_at,
        )
        if value is None:
            res.note = "no labelled predictions"
        elif ref is None:
            res.note = "no reference metric (set performance.reference)"
        elif metric == "accuracy":
            res.change = ref - value
            res.drifted = bool(res.change > p.max_drop)
        elif ref > 0:
            res.change = value / ref - 1.0
            res.drifted = bool(res.change > p.max_increase)
        else:
            res.change = math.inf if value > 0 else 0.0
            res.drifted = bool(value > 0)
        return res


@dataclass
class PerformanceWindow:
    """Running sums of labelled predictions (constant memory)."""

    n: int = 0
    correct: int = 0
    sum_abs: float = 0.0
    sum_sq: float = 0.0
    opened_at: float | None = None

    def add(self, prediction: Any, label: Any, task: str | None, at: float) -> bool:
        """Add one pair; False when it cannot be scored (a null, or a non-number for regression)."""
        if self.opened_at is None:
            self.opened_at = at
        if task == "regression":
            p, y = to_float(prediction), to_float(label)
            if not (math.isfinite(p) and math.isfinite(y)):
                return False
            self.n += 1
            self.sum_abs += abs(p - y)
            self.sum_sq += (p - y) ** 2
            return True
        kp, ky = class_key(prediction), class_key(label)
        if kp is None or ky is None:
            return False
        self.n += 1
        self.correct += int(kp == ky)
        return True

    def value(self, metric: str) -> float | None:
        if self.n == 0:
            return None
        if metric == "accuracy":
            return self.correct / self.n
        if metric == "mae":
            return self.sum_abs / self.n
        return math.sqrt(self.sum_sq / self.n)


# --------------------------------------------------------------------------- the window buffer


class WindowBuffer:
    """The open window of one variant: at most ``capacity`` rows (a uniform reservoir,
    Vitter's Algorithm R, once more rows arrive), stored column by column in arrays
    allocated once; ``seen`` counts every row offered."""

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        capacity: int,
        seed: int = 0,
        days: Sequence[str] = (),
    ) -> None:
        self.numeric = list(numeric)
        #: Numeric features whose live values are dates or timestamps (compared as days).
        self.days = set(days)
        self.categorical = list(categorical)
        self.capacity = int(capacity)
        self.num = np.full((self.capacity, len(self.numeric)), np.nan, dtype=np.float64)
        self.cat = np.empty((self.capacity, len(self.categorical)), dtype=object)
        self.pred = np.empty(self.capacity, dtype=object)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.opened_at: float | None = None

    @property
    def size(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, row: Mapping[str, Any], prediction: Any, at: float) -> None:
        if self.opened_at is None:
            self.opened_at = at
        t = self.seen
        self.seen += 1
        if t < self.capacity:
            slot = t
        else:
            slot = int(self.rng.integers(0, t + 1))
            if slot >= self.capacity:
                return
        for j, f in enumerate(self.numeric):
            self.num[slot, j] = to_day(row.get(f)) if f in self.days else to_float(row.get(f))
        for j, f in enumerate(self.categorical):
            self.cat[slot, j] = category_key(row.get(f))
        self.pred[slot] = prediction

    def columns(self) -> dict[str, Any]:
        k = self.size
        out: dict[str, Any] = {f: self.num[:k, j].copy() for j, f in enumerate(self.numeric)}
        out.update({f: list(self.cat[:k, j]) for j, f in enumerate(self.categorical)})
        return out

    def predictions(self) -> list[Any]:
        return list(self.pred[: self.size])

    def reset(self) -> None:
        self.num[:] = np.nan
        self.cat[:] = None
        self.pred[:] = None
        self.seen = 0
        self.opened_at = None

    def nbytes(self) -> int:
        return int(self.num.nbytes + self.cat.nbytes + self.pred.nbytes)


# --------------------------------------------------------------------------- debouncing


@dataclass
class _Episode:
    streak: int = 0
    clean: int = 0
    active: bool = False
    windows: list[int] = field(default_factory=list)
    events: int = 0


@dataclass(frozen=True)
class DebounceDecision:
    """An event to record: ``trigger`` says whether it may start a retraining."""

    key: str
    windows: tuple[int, ...]
    trigger: bool
    note: str


class Debouncer:
    """``consecutive`` drifted windows in a row (per key, e.g. ``v3/data``) -> one event;
    no more for that key until ``reset_windows`` clean windows in a row end the episode.
    Each event claims "a retraining in flight" if none is; later events while it is in
    flight do not trigger.  :meth:`begin_retraining` / :meth:`end_retraining` are for the
    retraining loop (issue 8 part 4); a claim nobody ends lapses after ``in_flight_timeout_s``.
    A successful retraining (new model, new reference) ends every episode."""

    def __init__(self, consecutive: int = 3, reset_windows: int = 3, in_flight_timeout_s: float = 6 * 3600.0) -> None:
        if consecutive < 1 or reset_windows < 1:
            raise ValueError("consecutive and reset_windows must be >= 1")
        self.consecutive = consecutive
        self.reset_windows = reset_windows
        self.in_flight_timeout_s = in_flight_timeout_s
        self.episodes: dict[str, _Episode] = {}
        #: {"event_id", "key", "since", "started": bool, "note"} while a retraining is claimed.
        self.in_flight: dict[str, Any] | None = None
        self.suppressed = 0

    def _expire(self, now: float) -> None:
        if self.in_flight is not None and now - self.in_flight["since"] > self.in_flight_timeout_s:
            self.in_flight = None

    def observe(self, key: str, drifted: bool | None, window_id: int, now: float) -> DebounceDecision | None:
        """Feed one window's verdict (None: the window could not be judged; ignored)."""
        if drifted is None:
            return None
        self._expire(now)
        ep = self.episodes.setdefault(key, _Episode())
        if not drifted:
            ep.streak = 0
            ep.windows.clear()
            ep.clean += 1
            if ep.active and ep.clean >= self.reset_windows:
                ep.active = False
            return None
        ep.clean = 0
        ep.streak += 1
        ep.windows.append(window_id)
        del ep.windows[: -self.consecutive]
        if ep.active or ep.streak < self.consecutive:
            return None
        ep.active = True
        ep.events += 1
        if self.in_flight is None:
            return DebounceDecision(key, tuple(ep.windows), True, f"{self.consecutive} drifted windows in a row")
        self.suppressed += 1
        return DebounceDecision(
            key,
            tuple(ep.windows),
            False,
            f"not triggered: a retraining is in flight (event {self.in_flight.get('event_id')})",
        )

    def claim(self, event_id: int, key: str, now: float) -> None:
        """Mark a retraining in flight for a triggering event."""
        self.in_flight = {"event_id": event_id, "key": key, "since": now, "started": False, "note": ""}

    def begin_retraining(self, event_id: int | None, now: float, note: str = "") -> None:
        """The retraining loop started work for ``event_id`` (claims if nothing is in flight)."""
        self._expire(now)
        if self.in_flight is None:
            self.in_flight = {"event_id": event_id, "key": None, "since": now, "started": True, "note": note}
        else:
            self.in_flight.update(started=True, since=now, note=note)

    def end_retraining(self, ok: bool, now: float) -> None:
        """The retraining finished; on success every episode ends (the model is new)."""
        self.in_flight = None
        if ok:
            self.episodes.clear()

    def state(self, now: float | None = None) -> dict[str, Any]:
        if now is not None:
            self._expire(now)
        return {
            "consecutive": self.consecutive,
            "reset_windows": self.reset_windows,
            "in_flight": dict(self.in_flight) if self.in_flight else None,
            "suppressed": self.suppressed,
            "episodes": {
                k: {"streak": e.streak, "clean": e.clean, "active": e.active, "events": e.events}
                for k, e in self.episodes.items()
            },
        }


# --------------------------------------------------------------------------- helpers


def _finite(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    return _finite(v)
