"""Per-column statistics of a dataset, one pandas batch at a time (no Ray here).

The profile is the reference that drift monitoring later compares live data with.
It is computed in two passes of ``map_batches``:

1. :func:`partial_profile` per batch, combined with :func:`merge` (associative and
   commutative) into one :class:`Partial`;
2. :func:`histogram_edges` of the merged partial, then :func:`histogram_counts` per
   batch, summed with :func:`add_counts`;

and :func:`finalize` turns both into a JSON-able dict (see its docstring).

Determinism: the profile does not depend on how rows are split into batches or on
their order (exactly, bit for bit, up to the one documented approximation below):

- sums are exact: every finite float64 is an integer multiple of 2**-1126, so sums
  and sums of squares are kept as Python ints and mean and std are rounded once at
  the end (std is then as accurate as a two-pass computation, with no cancellation);
- the sample of a numeric column is a bottom-k sample: each row gets a pseudo-random
  key that is a hash of (seed, the row's content), and the sample keeps the
  ``sample_size`` values with the smallest (key, value); merging keeps the smallest of
  the union.  It is a uniform sample of the rows, except that rows that are equal in
  every column share a key and so are sampled together;
- numeric columns with few distinct values (at most ``max(sample_size,
  10 * max_categories)``) also keep their exact value counts; their quantiles are
  then exact, and their sample is a systematic sample (seeded random start) of the
  exact sorted values, so heavy duplication cannot skew it;
- the value counts of a categorical column are exact while it has at most
  ``10 * max_categories`` distinct values.  Past that (the approximation), each
  partial keeps only its ``10 * max_categories`` most frequent values (ties by value)
  and adds the rest to ``other``: a kept value's count can then miss occurrences that
  were folded into ``other`` in a batch where it was not frequent (counts are lower
  bounds), which values are kept can depend on the batching, and ``distinct`` is
  reported as null.  ``frequencies`` + ``other`` always add up to ``count``.

Non-finite values: NaN (and None, NaT, pd.NA) is null; ±inf counts as a value
(``count``, like pandas) and in ``infinite``, but mean, std, min, max, quantiles,
the sample and the histogram use the finite values only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api import types as ptypes

from raypipe.models.preprocess import category_key as preprocess_key
from raypipe.models.preprocess import to_days
from raypipe.stages.data.rules import jsonable, series_hashes

__all__ = [
    "DEFAULT_QUANTILES",
    "CategoricalPartial",
    "NumericPartial",
    "OtherPartial",
    "Partial",
    "add_counts",
    "category_key",
    "finalize",
    "histogram_counts",
    "histogram_edges",
    "merge",
    "partial_profile",
]

DEFAULT_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

#: Every finite float64 is an integer multiple of 2**-_P (the smallest subnormal is 2**-1074,
#: written as a 53-bit mantissa times 2**-1126).
_P = 1126
_M64 = (1 << 64) - 1


# --------------------------------------------------------------------------- partials


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


@dataclass
class CategoricalPartial:
    """Mergeable statistics of a string, bool, categorical or object column."""

    kind: ClassVar[str] = "categorical"
    dtype: str
    count: int = 0
    nulls: int = 0
    #: Value (as :func:`category_key`) -> occurrences; every value while ``exact``.
    counts: dict[str, int] = field(default_factory=dict)
    #: Occurrences of values no longer tracked.
    other: int = 0
    exact: bool = True


@dataclass
class OtherPartial:
    """Counts (and, for datetimes, min and max) of any other column."""

    kind: ClassVar[str] = "other"
    dtype: str
    count: int = 0
    nulls: int = 0
    min: Any = None
    max: Any = None


ColumnPartial = Union[NumericPartial, DatetimePartial, CategoricalPartial, OtherPartial]


@dataclass
class Partial:
    """The profile of some rows, before :func:`finalize`."""

    sample_size: int
    seed: int
    max_categories: int
    rows: int = 0
    columns: dict[str, ColumnPartial] = field(default_factory=dict)

    def merge(self, other: Partial) -> Partial:
        return merge(self, other)


# --------------------------------------------------------------------------- pass 1


def partial_profile(df: pd.DataFrame, *, sample_size: int, seed: int, max_categories: int) -> Partial:
    """The partial profile of one batch.  ``sample_size`` values are sampled per numeric
    column; ``max_categories`` values are reported per categorical column."""
    if sample_size < 0:
        raise ValueError(f"sample_size must be >= 0, got {sample_size}")
    if max_categories < 1:
        raise ValueError(f"max_categories must be >= 1, got {max_categories}")
    out = Partial(sample_size=sample_size, seed=seed, max_categories=max_categories, rows=len(df))
    keys: np.ndarray | None = None
    for name in df.columns:
        s = df[name]
        kind = _kind(s)
        if kind in ("numeric", "datetime"):
            if keys is None:
                keys = _row_keys(df, seed)
            col: ColumnPartial = (
                _numeric_partial(s, keys, out) if kind == "numeric" else _datetime_partial(s, keys, out)
            )
        elif kind == "categorical":
            col = _categorical_partial(s, out)
        else:
            col = _other_partial(s)
        out.columns[str(name)] = col
    return out


def merge(a: Partial, b: Partial) -> Partial:
    """Combine the partials of two disjoint sets of rows (associative and commutative)."""
    if (a.sample_size, a.seed, a.max_categories) != (b.sample_size, b.seed, b.max_categories):
        raise ValueError(
            "cannot merge profiles made with different settings: "
            f"(sample_size, seed, max_categories) {(a.sample_size, a.seed, a.max_categories)} "
            f"!= {(b.sample_size, b.seed, b.max_categories)}"
        )
    cols: dict[str, ColumnPartial] = dict(a.columns)
    for name, col in b.columns.items():
        cols[name] = _merge_column(cols[name], col, a) if name in cols else col
    return replace(a, rows=a.rows + b.rows, columns=cols)


# --------------------------------------------------------------------------- pass 2


def histogram_edges(partial: Partial, bins: int) -> dict[str, np.ndarray]:
    """``bins`` equal-width bins between min and max of every numeric column (a constant
    column v gets edges from v - 0.5 to v + 0.5, like numpy; a column without finite
    values gets no edges and no bins)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    out: dict[str, np.ndarray] = {}
    for name, col in partial.columns.items():
        if not isinstance(col, NumericPartial):
            continue
        if col.min is None or col.max is None:
            out[name] = np.empty(0, dtype=np.float64)
            continue
        lo, hi = float(col.min), float(col.max)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        with np.errstate(over="ignore", invalid="ignore"):
            edges = np.linspace(lo, hi, bins + 1)
            if not np.all(np.isfinite(edges)):  # hi - lo overflows
                t = np.linspace(0.0, 1.0, bins + 1)
                edges = lo * (1.0 - t) + hi * t
        edges[0], edges[-1] = lo, hi
        out[name] = np.maximum.accumulate(edges)
    return out


def histogram_counts(df: pd.DataFrame, edges: Mapping[str, np.ndarray], *, clip: bool = False) -> dict[str, np.ndarray]:
    """Counts (int64) of the finite non-null values of one batch per bin.  Bins are
    ``[e_i, e_i+1)``, the last one closed.  Values outside the edges are not counted, or
    with ``clip`` counted in the first or last bin (for data other than the profiled)."""
    out: dict[str, np.ndarray] = {}
    for name, e in edges.items():
        e = np.asarray(e, dtype=np.float64)
        nb = max(len(e) - 1, 0)
        counts = np.zeros(nb, dtype=np.int64)
        if nb and name in df.columns:
            x = to_days(df[name]) if _kind(df[name]) == "datetime" else _float_values(df[name])
            x = x[np.isfinite(x)]
            idx = np.searchsorted(e, x, side="right") - 1
            idx[x == e[-1]] = nb - 1
            if clip:
                idx = np.clip(idx, 0, nb - 1)
            idx = idx[(idx >= 0) & (idx < nb)]
            counts += np.bincount(idx, minlength=nb).astype(np.int64)
        out[name] = counts
    return out


def add_counts(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum two :func:`histogram_counts` results."""
    out = {k: np.asarray(v, dtype=np.int64).copy() for k, v in a.items()}
    for k, v in b.items():
        out[k] = out[k] + np.asarray(v, dtype=np.int64) if k in out else np.asarray(v, dtype=np.int64).copy()
    return out


# --------------------------------------------------------------------------- finalize


def finalize(
    partial: Partial,
    hist_counts: Mapping[str, np.ndarray] | None,
    edges: Mapping[str, np.ndarray] | None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> dict[str, Any]:
    """The JSON-able profile (floats are plain and finite; None where undefined)::

        {"rows": N, "columns": {
           "x": {"kind": "numeric", "dtype": "float64", "count", "nulls", "null_fraction",
                 "infinite", "distinct" (exact, or None when too many), "mean",
                 "std" (ddof=1), "min", "max", "quantiles": {"0.01": ..},
                 "histogram": {"edges": [..], "counts": [..]} (or None),
                 "sample": [sorted values]},
           "c": {"kind": "categorical", "dtype", "count", "nulls", "null_fraction",
                 "distinct" (exact, or None), "frequencies": {value: count, ..}, "other"},
           "t": {"kind": "other", "dtype", "count", "nulls", "null_fraction", "min", "max"}}}

    Quantiles use numpy's (and pandas') linear interpolation: exact while the column has
    few distinct values (so always when count <= sample_size), else from the sample.
    ``frequencies`` holds the ``max_categories`` most frequent values (ties by value),
    ``other`` the count of the rest."""
    cols: dict[str, Any] = {}
    for name, col in partial.columns.items():
        base = {
            "kind": col.kind,
            "dtype": col.dtype,
            "count": int(col.count),
            "nulls": int(col.nulls),
            "null_fraction": _f(col.nulls / partial.rows) if partial.rows else None,
        }
        if isinstance(col, NumericPartial):
            base.update(_finalize_numeric(col, partial, name, hist_counts, edges, quantiles))
            if isinstance(col, DatetimePartial):
                base["unit"] = "days since 1970-01-01"
                date = col.dtype == "date"
                base["first"], base["last"] = _iso_day(col.min, date), _iso_day(col.max, date)
        elif isinstance(col, CategoricalPartial):
            base.update(_finalize_categorical(col, partial.max_categories))
        else:
            base.update(min=_jsonable_extreme(col.min), max=_jsonable_extreme(col.max))
        cols[name] = base
    return {"rows": int(partial.rows), "columns": cols}


def category_key(value: Any) -> str:
    """The key of a (non-null) categorical value in ``frequencies``: the one encoding of
    :func:`raypipe.models.preprocess.category_key` (compare live values with it)."""
    key = preprocess_key(value)
    return key if key is not None else "None"


# --------------------------------------------------------------------------- internals: kinds


def _kind(s: pd.Series) -> str:
    dtype = s.dtype
    if ptypes.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    if ptypes.is_numeric_dtype(dtype) and not ptypes.is_complex_dtype(dtype):
        return "numeric"
    if ptypes.is_datetime64_any_dtype(dtype):
        return "datetime"
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        inferred = ptypes.infer_dtype(s, skipna=True)
        if inferred in ("datetime64", "datetime", "date"):
            return "datetime"
        if inferred in ("timedelta64", "timedelta", "period", "interval"):
            return "other"
        if inferred == "complex":
            return "other"
        return "categorical"
    if ptypes.is_string_dtype(dtype):
        return "categorical"
    return "other"


def _is_integer_dtype(dtype: str) -> bool:
    try:
        return bool(ptypes.is_integer_dtype(pd.api.types.pandas_dtype(dtype)))
    except TypeError:
        return False


def _promote(a: str, b: str, numeric: bool) -> str:
    if a == b:
        return a
    if numeric:
        try:
            return np.result_type(np.dtype(a), np.dtype(b)).name
        except TypeError:
            return "float64"
    return "object"


def _merge_column(a: ColumnPartial, b: ColumnPartial, p: Partial) -> ColumnPartial:
    if type(a) is not type(b):
        # One side saw only nulls (e.g. an all-null object column): take the other's kind.
        if a.count == 0 or b.count == 0:
            empty, full = (a, b) if a.count == 0 else (b, a)
            return replace(full, nulls=full.nulls + empty.nulls)
        return OtherPartial(dtype="object", count=a.count + b.count, nulls=a.nulls + b.nulls)
    if isinstance(a, NumericPartial):
        assert isinstance(b, NumericPartial)
        return _merge_numeric(a, b, p)
    if isinstance(a, CategoricalPartial):
        assert isinstance(b, CategoricalPartial)
        counts = dict(a.counts)
        for k, c in b.counts.items():
            counts[k] = counts.get(k, 0) + c
        out = CategoricalPartial(
            dtype=_promote(a.dtype, b.dtype, False),
            count=a.count + b.count,
            nulls=a.nulls + b.nulls,
            counts=counts,
            other=a.other + b.other,
            exact=a.exact and b.exact,
        )
        return _truncate(out, 10 * p.max_categories)
    assert isinstance(a, OtherPartial) and isinstance(b, OtherPartial)
    return OtherPartial(
        dtype=_promote(a.dtype, b.dtype, False),
        count=a.count + b.count,
        nulls=a.nulls + b.nulls,
        min=_extreme(a.min, b.min, min),
        max=_extreme(a.max, b.max, max),
    )


# --------------------------------------------------------------------------- internals: numeric


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _row_keys(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per row: a hash of the seed and of the row's content (its
    columns in name order), so the same row gets the same key in any batch."""
    n = len(df)
    with np.errstate(over="ignore"):
        h = _mix(np.full(n, np.uint64(seed & _M64) ^ np.uint64(0x7261797069706521)))
        for name in sorted(df.columns, key=str):
            name_hash = np.asarray(pd.util.hash_array(np.array([str(name)], dtype=object)), dtype=np.uint64)[0]
            h = _mix(h ^ _mix(series_hashes(df[name]) ^ name_hash))
        return _mix(h ^ np.uint64(seed & _M64))


def _float_values(s: pd.Series) -> np.ndarray:
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


def _numeric_partial(s: pd.Series, keys: np.ndarray, p: Partial) -> NumericPartial:
    x = _float_values(s)
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


def _datetime_partial(s: pd.Series, keys: np.ndarray, p: Partial) -> DatetimePartial:
    days = pd.Series(to_days(s), index=s.index)
    col = _numeric_partial(days, keys, p)
    dtype = str(s.dtype) if s.dtype.kind != "O" else ptypes.infer_dtype(s, skipna=True)
    return DatetimePartial(**{**col.__dict__, "dtype": dtype})


def _iso_day(days: float | int | None, date: bool) -> str | None:
    """A day count (fractional for timestamps) as an ISO date, or date-time (UTC)."""
    if days is None or not math.isfinite(float(days)):
        return None
    t = np.datetime64(round(float(days) * 86_400_000_000), "us")
    return (
        str(t.astype("datetime64[D]"))
        if date
        else str(t.astype("datetime64[s]" if t.astype(np.int64) % 1_000_000 == 0 else "datetime64[us]"))
    )


def _exact_cap(p: Partial) -> int:
    return max(p.sample_size, 10 * p.max_categories)


def _merge_numeric(a: NumericPartial, b: NumericPartial, p: Partial) -> NumericPartial:
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
        dtype=a.dtype if isinstance(a, DatetimePartial) else _promote(a.dtype, b.dtype, True),
        count=a.count + b.count,
        nulls=a.nulls + b.nulls,
        infinite=a.infinite + b.infinite,
        sum=a.sum + b.sum,
        sumsq=a.sumsq + b.sumsq,
        min=_extreme(a.min, b.min, min),
        max=_extreme(a.max, b.max, max),
        sample_keys=keys,
        sample_values=vals,
        values=values,
        counts=counts,
    )


def _finalize_numeric(
    col: NumericPartial,
    p: Partial,
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
        histogram = {"edges": [_f(v) for v in e], "counts": [int(v) for v in c]}

    def num(v: float | int | None) -> float | int | None:
        if v is None:
            return None
        return int(v) if is_int and float(v).is_integer() else _f(v)

    return {
        "infinite": int(col.infinite),
        "distinct": int(len(col.values)) if exact and col.values is not None else None,
        "mean": _f(mean),
        "std": _f(std),
        "min": num(col.min),
        "max": num(col.max),
        "quantiles": {_qkey(q): _f(v) for q, v in zip(quantiles, qs, strict=True)},
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


# --------------------------------------------------------------------------- internals: categorical / other


def _categorical_partial(s: pd.Series, p: Partial) -> ColumnPartial:
    nulls = int(s.isna().sum())
    try:
        vc = s.value_counts(sort=False, dropna=True)
    except TypeError:  # unhashable values (arrays, dicts)
        return OtherPartial(dtype=str(s.dtype), count=len(s) - nulls, nulls=nulls)
    vc = vc[vc > 0]  # a categorical's unused categories
    counts = vc.to_numpy(dtype=np.int64)
    if isinstance(s.dtype, pd.StringDtype) or ptypes.infer_dtype(vc.index, skipna=False) == "string":
        ser = pd.Series(counts, index=pd.Index(vc.index.astype(object), dtype=object))
    else:  # keys of other values may collide (1 and "1"): add them up
        keys = np.array([category_key(v) for v in vc.index], dtype=object)
        ser = pd.Series(counts).groupby(keys, sort=False).sum()
        ser.index = pd.Index(ser.index, dtype=object)
    col = CategoricalPartial(dtype=str(s.dtype), count=len(s) - nulls, nulls=nulls)
    cap = 10 * p.max_categories
    if len(ser) > cap:
        top = _top(ser, cap)
        col.other = int(ser.sum() - top.sum())
        col.exact = False
        ser = top
    col.counts = {str(k): int(v) for k, v in ser.items()}
    return col


def _top(ser: pd.Series, k: int) -> pd.Series:
    """The k largest counts (str keys), ties broken by the smaller key, in that order."""
    if len(ser) > 4 * k:  # select in arrow first: sorting many Python strings is slow
        try:
            table = pa.table({"c": ser.to_numpy(dtype=np.int64), "k": pa.array(ser.index, type=pa.large_string())})
        except (pa.ArrowException, UnicodeError):  # e.g. lone surrogates
            pass
        else:
            idx = pc.select_k_unstable(table, k, sort_keys=[("c", "descending"), ("k", "ascending")])
            ser = ser.iloc[np.asarray(idx)]
    return ser.sort_index(kind="stable").sort_values(ascending=False, kind="stable").head(k)


def _truncate(col: CategoricalPartial, cap: int) -> CategoricalPartial:
    if len(col.counts) <= cap:
        return col
    ser = pd.Series(col.counts, dtype=np.int64)
    ser.index = pd.Index(ser.index, dtype=object)
    top = _top(ser, cap)
    col.other += int(ser.sum() - top.sum())
    col.counts = {str(k): int(v) for k, v in top.items()}
    col.exact = False
    return col


def _finalize_categorical(col: CategoricalPartial, max_categories: int) -> dict[str, Any]:
    ser = pd.Series(col.counts, dtype=np.int64)
    ser.index = pd.Index(ser.index, dtype=object)
    top = _top(ser, max_categories) if len(ser) else ser
    freqs = {str(k): int(v) for k, v in top.items()}
    return {
        "distinct": len(col.counts) if col.exact else None,
        "frequencies": freqs,
        "other": int(col.count - sum(freqs.values())),
    }


def _other_partial(s: pd.Series) -> OtherPartial:
    null = np.asarray(s.isna(), dtype=bool)
    col = OtherPartial(dtype=str(s.dtype), count=int((~null).sum()), nulls=int(null.sum()))
    if col.count and (ptypes.is_datetime64_any_dtype(s.dtype) or ptypes.is_timedelta64_dtype(s.dtype)):
        col.min, col.max = s.min(), s.max()
    elif col.count and s.dtype.kind == "O" and ptypes.infer_dtype(s, skipna=True) in ("datetime", "date", "datetime64"):
        try:
            t = pd.to_datetime(s[~null])
            col.min, col.max = t.min(), t.max()
        except (ValueError, TypeError):
            pass
    return col


# --------------------------------------------------------------------------- small helpers


def _extreme(a: Any, b: Any, pick: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    try:
        return pick(a, b)
    except TypeError:  # e.g. tz-aware vs naive timestamps
        return None


def _jsonable_extreme(v: Any) -> Any:
    out = jsonable(v)
    return out if out is None or isinstance(out, (str, int)) else _f(out)


def _f(v: Any) -> float | None:
    """A plain finite float, or None."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _qkey(q: float) -> str:
    return str(float(q))
