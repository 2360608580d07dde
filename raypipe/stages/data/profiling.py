"""Per-column statistics of a dataset, one pandas batch at a time (no Ray here).

The profile is the reference that drift monitoring later compares live data with.
It is computed in two passes of ``map_batches``:

1. :func:`partial_profile` per batch, combined with :func:`merge` (associative and
   commutative) into one :class:`Partial`;
2. :func:`histogram_edges` of the merged partial, then :func:`histogram_counts` per
   batch, summed with :func:`add_counts`;

and :func:`finalize` turns both into a JSON-able dict (see its docstring).  The
statistics and partials of each kind of column are :mod:`.profiling_numeric` (numbers,
dates) and :mod:`.profiling_categorical` (categories, other).

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Union

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from raypipe._json import json_safe
from raypipe.models.preprocess import to_days
from raypipe.stages.data.profiling_base import extreme, plain_float, promote
from raypipe.stages.data.profiling_categorical import (
    CategoricalPartial,
    OtherPartial,
    categorical_partial,
    category_key,
    finalize_categorical,
    merge_categorical,
    other_partial,
)
from raypipe.stages.data.profiling_numeric import (
    DatetimePartial,
    NumericPartial,
    datetime_partial,
    finalize_numeric,
    float_values,
    iso_day,
    merge_numeric,
    numeric_partial,
    row_keys,
)

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
                keys = row_keys(df, seed)
            col: ColumnPartial = numeric_partial(s, keys, out) if kind == "numeric" else datetime_partial(s, keys, out)
        elif kind == "categorical":
            col = categorical_partial(s, out)
        else:
            col = other_partial(s)
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
            x = to_days(df[name]) if _kind(df[name]) == "datetime" else float_values(df[name])
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
            "null_fraction": plain_float(col.nulls / partial.rows) if partial.rows else None,
        }
        if isinstance(col, NumericPartial):
            base.update(finalize_numeric(col, partial, name, hist_counts, edges, quantiles))
            if isinstance(col, DatetimePartial):
                base["unit"] = "days since 1970-01-01"
                date = col.dtype == "date"
                base["first"], base["last"] = iso_day(col.min, date), iso_day(col.max, date)
        elif isinstance(col, CategoricalPartial):
            base.update(finalize_categorical(col, partial.max_categories))
        else:
            base.update(min=_jsonable_extreme(col.min), max=_jsonable_extreme(col.max))
        cols[name] = base
    return {"rows": int(partial.rows), "columns": cols}


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


def _merge_column(a: ColumnPartial, b: ColumnPartial, p: Partial) -> ColumnPartial:
    if type(a) is not type(b):
        # One side saw only nulls (e.g. an all-null object column): take the other's kind.
        if a.count == 0 or b.count == 0:
            empty, full = (a, b) if a.count == 0 else (b, a)
            return replace(full, nulls=full.nulls + empty.nulls)
        return OtherPartial(dtype="object", count=a.count + b.count, nulls=a.nulls + b.nulls)
    if isinstance(a, NumericPartial):
        assert isinstance(b, NumericPartial)
        return merge_numeric(a, b, p)
    if isinstance(a, CategoricalPartial):
        assert isinstance(b, CategoricalPartial)
        return merge_categorical(a, b, p)
    assert isinstance(a, OtherPartial) and isinstance(b, OtherPartial)
    return OtherPartial(
        dtype=promote(a.dtype, b.dtype, False),
        count=a.count + b.count,
        nulls=a.nulls + b.nulls,
        min=extreme(a.min, b.min, min),
        max=extreme(a.max, b.max, max),
    )


def _jsonable_extreme(v: Any) -> Any:
    out = json_safe(v, inf_text=True)
    return out if out is None or isinstance(out, (str, int)) else plain_float(out)
