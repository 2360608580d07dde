"""The numeric and datetime columns of a profile: exact sums, bottom-k samples, exact or sampled quantiles."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from raypipe.models.preprocess import to_days
from raypipe.stages.data.profiling_base import Settings, extreme, plain_float, promote
from raypipe.stages.data.value_hashes import series_hashes
from raypipe.store.dataset_hash import mix64

#: Every finite float64 is an integer multiple of 2**-_P (the smallest subnormal is 2**-1074,
#: written as a 53-bit mantissa times 2**-1126).
_P = 1126
_M64 = (1 << 64) - 1


@dataclass
class NumericPartial:
    """Mergeable statistics of an int or float column."""

    kind: ClassVar[str] = "numeric"
    dtype: str
    #: Non-null values (including ±inf).
    count: int = 0
    nulls: int = 0
    infinite: int = 0
    #: Exact sum of the finite values, in units of 2**-1126.
    sum: int = 0
    #: Exact sum of their squares, in units of 2**-2252.
    sumsq: int = 0
    min: float | int | None = None
    max: float | int | None = None
    #: The bottom-k sample: keys (uint64) and values (float64), sorted by (key, value).
    sample_keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    sample_values: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    #: Exact distinct finite values (sorted) and their counts, while few; else None.
    values: np.ndarray | None = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    counts: np.ndarray | None = field(default_factory=lambda: np.empty(0, dtype=np.int64))


@dataclass
class DatetimePartial(NumericPartial):
    """A date or timestamp column, as the numeric statistics of its days since 1970-01-01
    (:func:`raypipe.models.preprocess.to_days`: the encoding models and drift use)."""

    kind: ClassVar[str] = "datetime"


def row_keys(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per row: a hash of the seed and of the row's content (its
    columns in name order), so the same row gets the same key in any batch."""
    n = len(df)
    with np.errstate(over="ignore"):
        h = mix64(np.full(n, np.uint64(seed & _M64) ^ np.uint64(0x7261797069706521)))
        for name in sorted(df.columns, key=str):
            name_hash = np.asarray(pd.util.hash_array(np.array([str(name)], dtype=object)), dtype=np.uint64)[0]
            h = mix64(h ^ mix64(series_hashes(df[name]) ^ name_hash))
        return mix64(h ^ np.uint64(seed & _M64))


def float_values(s: pd.Series) -> np.ndarray:
    """float64 values of a column (NaN for nulls and non-numbers)."""
    if ptypes.is_bool_dtype(s.dtype) or (ptypes.is_numeric_dtype(s.dtype) and not ptypes.is_complex_dtype(s.dtype)):
        return np.asarray(s.to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)
    return np.asarray(pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)


def _exact_sums(x: np.ndarray) -> tuple[int, int]:
    """Exact sum and sum of squares of finite float64 values, in units of 2**-P and 2**-2P."""
    if len(x) == 0:
        return 0, 0
    mant, exp = np.frexp(x)
    m = (mant * 2.0**53).astype(np.int64)  # x == m * 2**(exp - 53), |m| < 2**53
    shift = exp.astype(np.int64) - 53 + _P  # >= 0 for every finite float64
    order = np.argsort(shift, kind="stable")
    m, shift = m[order], shift[order]
    starts = np.flatnonzero(np.r_[True, shift[1:] != shift[:-1]])
    a = np.abs(m)
    # m = hi * 2**26 + lo; m**2 = p4 * 2**72 + p3 * 2**54 + p2 * 2**36 + p1 * 2**18 + p0 (18-bit limbs)
    hi, lo = m >> 26, m & ((1 << 26) - 1)
    l2, l1, l0 = a >> 36, (a >> 18) & ((1 << 18) - 1), a & ((1 << 18) - 1)
    sums = [np.add.reduceat(v, starts) for v in (hi, lo)]
    sqs = [np.add.reduceat(v, starts) for v in (l2 * l2, 2 * l2 * l1, 2 * l2 * l0 + l1 * l1, 2 * l1 * l0, l0 * l0)]
    total = total_sq = 0
    for g, st in enumerate(starts):
        sh = int(shift[st])
        total += ((int(sums[0][g]) << 26) + int(sums[1][g])) << sh
        q = (int(sqs[0][g]) << 72) + (int(sqs[1][g]) << 54) + (int(sqs[2][g]) << 36)
        total_sq += (q + (int(sqs[3][g]) << 18) + int(sqs[4][g])) << (2 * sh)
    return total, total_sq


def _sums(x: np.ndarray, ints: np.ndarray | None) -> tuple[int, int]:
    """Exact sums, chunked so that no int64 limb sum can overflow."""
    if ints is not None:  # integers beyond 2**53: exact in Python ints
        vals = [int(v) for v in ints]
        return sum(vals) << _P, sum(v * v for v in vals) << (2 * _P)
    total = total_sq = 0
    chunk = 1 << 24
    for i in range(0, len(x), chunk):
        t, q = _exact_sums(x[i : i + chunk])
        total += t
        total_sq += q
    return total, total_sq


def _bottom_k(keys: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest (key, value) pairs, sorted."""
    if len(keys) > k:
        if k == 0:
            return keys[:0], values[:0]
        kth = np.partition(keys, k - 1)[k - 1]
        sel = keys <= kth
        keys, values = keys[sel], values[sel]
    order = np.lexsort((values, keys))[:k]
    return keys[order], values[order]


def numeric_partial(s: pd.Series, keys: np.ndarray, p: Settings) -> NumericPartial:
    x = float_values(s)
    null = np.asarray(s.isna(), dtype=bool) | np.isnan(x)
    nonnull = x[~null]
    finite_mask = np.isfinite(nonnull)
    f = nonnull[finite_mask] + 0.0  # -0.0 -> 0.0
    col = NumericPartial(dtype=str(s.dtype), count=len(nonnull), nulls=int(null.sum()))
    col.infinite = int(len(nonnull) - len(f))
    if len(f) == 0:
        return col
    big_ints = None
    if ptypes.is_integer_dtype(s.dtype) and not ptypes.is_bool_dtype(s.dtype):
        iv = s[~null].to_numpy(dtype="uint64" if ptypes.is_unsigned_integer_dtype(s.dtype) else "int64")
        col.min, col.max = int(iv.min()), int(iv.max())
        if col.max > 2**53 or col.min < -(2**53):
            big_ints = iv
    else:
        col.min, col.max = float(f.min()), float(f.max())
    col.sum, col.sumsq = _sums(f, big_ints)
    col.sample_keys, col.sample_values = _bottom_k(keys[~null][finite_mask], f, p.sample_size)
    values, counts = np.unique(f, return_counts=True)
    if len(values) <= _exact_cap(p):
        col.values, col.counts = values, counts.astype(np.int64)
    else:
        col.values = col.counts = None
    return col


def datetime_partial(s: pd.Series, keys: np.ndarray, p: Settings) -> DatetimePartial:
    days = pd.Series(to_days(s), index=s.index)
    col = numeric_partial(days, keys, p)
    dtype = str(s.dtype) if s.dtype.kind != "O" else ptypes.infer_dtype(s, skipna=True)
    return DatetimePartial(**{**col.__dict__, "dtype": dtype})


def iso_day(days: float | int | None, date: bool) -> str | None:
    """A day count (fractional for timestamps) as an ISO date, or date-time (UTC)."""
    if days is None or not math.isfinite(float(days)):
        return None
    t = np.datetime64(round(float(days) * 86_400_000_000), "us")
    return (
        str(t.astype("datetime64[D]"))
        if date
        else str(t.astype("datetime64[s]" if t.astype(np.int64) % 1_000_000 == 0 else "datetime64[us]"))
    )


def _exact_cap(p: Settings) -> int:
    return max(p.sample_size, 10 * p.max_categories)


def merge_numeric(a: NumericPartial, b: NumericPartial, p: Settings) -> NumericPartial:
    keys, vals = _bottom_k(
        np.concatenate([a.sample_keys, b.sample_keys]),
        np.concatenate([a.sample_values, b.sample_values]),
        p.sample_size,
    )
    values = counts = None
    if a.values is not None and b.values is not None and a.counts is not None and b.counts is not None:
        values, inverse = np.unique(np.concatenate([a.values, b.values]), return_inverse=True)
        counts = np.zeros(len(values), dtype=np.int64)
        np.add.at(counts, inverse.ravel(), np.concatenate([a.counts, b.counts]))
        if len(values) > _exact_cap(p):
            values = counts = None
    return type(a)(
        dtype=a.dtype if isinstance(a, DatetimePartial) else promote(a.dtype, b.dtype, True),
        count=a.count + b.count,
        nulls=a.nulls + b.nulls,
        infinite=a.infinite + b.infinite,
        sum=a.sum + b.sum,
        sumsq=a.sumsq + b.sumsq,
        min=extreme(a.min, b.min, min),
        max=extreme(a.max, b.max, max),
        sample_keys=keys,
        sample_values=vals,
        values=values,
        counts=counts,
    )


def finalize_numeric(
    col: NumericPartial,
    p: Settings,
    name: str,
    hist_counts: Mapping[str, np.ndarray] | None,
    edges: Mapping[str, np.ndarray] | None,
    quantiles: Sequence[float],
) -> dict[str, Any]:
    n = col.count - col.infinite
    is_int = _is_integer_dtype(col.dtype)
    exact = col.values is not None and col.counts is not None
    mean = col.sum / (n << _P) if n else None
    std = _sqrt_ratio(n * col.sumsq - col.sum * col.sum, (n * (n - 1)) << (2 * _P)) if n >= 2 else None
    if n == 0:
        qs: list[float | None] = [None] * len(quantiles)
        sample = np.empty(0, dtype=np.float64)
    elif exact:
        assert col.values is not None and col.counts is not None
        qs = _exact_quantiles(col.values, col.counts, quantiles)
        sample = _systematic_sample(col.values, col.counts, p.sample_size, p.seed)
    else:
        sample = np.sort(col.sample_values)
        qs = [float(v) for v in np.quantile(sample, list(quantiles))] if len(sample) else [None] * len(quantiles)
    histogram = None
    if edges is not None and name in edges:
        e = np.asarray(edges[name], dtype=np.float64)
        c = np.asarray(hist_counts[name], dtype=np.int64) if hist_counts and name in hist_counts else None
        if c is None:
            c = np.zeros(max(len(e) - 1, 0), dtype=np.int64)
        histogram = {"edges": [plain_float(v) for v in e], "counts": [int(v) for v in c]}

    def num(v: float | int | None) -> float | int | None:
        if v is None:
            return None
        return int(v) if is_int and float(v).is_integer() else plain_float(v)

    return {
        "infinite": int(col.infinite),
        "distinct": int(len(col.values)) if exact and col.values is not None else None,
        "mean": plain_float(mean),
        "std": plain_float(std),
        "min": num(col.min),
        "max": num(col.max),
        "quantiles": {_qkey(q): plain_float(v) for q, v in zip(quantiles, qs, strict=True)},
        "histogram": histogram,
        "sample": [num(v) for v in sample],
    }


def _sqrt_ratio(num: int, den: int) -> float:
    """sqrt(num / den) for big non-negative ints, without overflow."""
    if num <= 0:
        return 0.0
    k = (num.bit_length() - den.bit_length()) // 2
    r = num / (den << (2 * k)) if k >= 0 else (num << (-2 * k)) / den
    return math.ldexp(math.sqrt(r), k)


def _exact_quantiles(values: np.ndarray, counts: np.ndarray, quantiles: Sequence[float]) -> list[float | None]:
    """numpy's ``quantile(method="linear")`` of the data ``repeat(values, counts)``."""
    n = int(counts.sum())
    cum = np.cumsum(counts)

    def at(rank: int) -> np.float64:
        return values[int(np.searchsorted(cum, rank, side="right"))]

    out: list[float | None] = []
    for q in quantiles:
        q = np.float64(q)
        vi = np.float64(n) * q + (np.float64(1.0) + q * np.float64(-1.0)) - np.float64(1.0)
        if vi >= n - 1:
            out.append(float(at(n - 1)))
            continue
        if vi < 0:
            out.append(float(at(0)))
            continue
        prev = np.floor(vi)
        t = vi - prev
        a, b = at(int(prev)), at(int(prev) + 1)
        diff = b - a
        out.append(float(b - diff * (1 - t) if t >= 0.5 else a + diff * t))
    return out


def _systematic_sample(values: np.ndarray, counts: np.ndarray, k: int, seed: int) -> np.ndarray:
    """All values when there are at most k, else k of the sorted data at equal steps from a
    seeded random start (each row is picked with probability k/n)."""
    n = int(counts.sum())
    if n <= k:
        return np.repeat(values, counts)
    start = np.random.default_rng([seed & _M64, 0x70726F66]).random()
    ranks = np.floor((np.arange(k) + start) * (n / k)).astype(np.int64)
    return values[np.searchsorted(np.cumsum(counts), np.minimum(ranks, n - 1), side="right")]


def _is_integer_dtype(dtype: str) -> bool:
    try:
        return bool(ptypes.is_integer_dtype(pd.api.types.pandas_dtype(dtype)))
    except TypeError:
        return False


def _qkey(q: float) -> str:
    return str(float(q))
