"""The categorical and other columns of a profile: exact or top-k value counts, and min/max of the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api import types as ptypes

from raypipe.models.preprocess import category_key as preprocess_key
from raypipe.stages.data.profiling_base import Settings, promote


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


def category_key(value: Any) -> str:
    """The key of a (non-null) categorical value in ``frequencies``: the one encoding of
    :func:`raypipe.models.preprocess.category_key` (compare live values with it)."""
    key = preprocess_key(value)
    return key if key is not None else "None"


def categorical_partial(s: pd.Series, p: Settings) -> CategoricalPartial | OtherPartial:
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


def merge_categorical(a: CategoricalPartial, b: CategoricalPartial, p: Settings) -> CategoricalPartial:
    """Value counts added up, kept exact up to ``10 * max_categories`` values."""
    counts = dict(a.counts)
    for k, c in b.counts.items():
        counts[k] = counts.get(k, 0) + c
    out = CategoricalPartial(
        dtype=promote(a.dtype, b.dtype, False),
        count=a.count + b.count,
        nulls=a.nulls + b.nulls,
        counts=counts,
        other=a.other + b.other,
        exact=a.exact and b.exact,
    )
    return _truncate(out, 10 * p.max_categories)


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


def finalize_categorical(col: CategoricalPartial, max_categories: int) -> dict[str, Any]:
    ser = pd.Series(col.counts, dtype=np.int64)
    ser.index = pd.Index(ser.index, dtype=object)
    top = _top(ser, max_categories) if len(ser) else ser
    freqs = {str(k): int(v) for k, v in top.items()}
    return {
        "distinct": len(col.counts) if col.exact else None,
        "frequencies": freqs,
        "other": int(col.count - sum(freqs.values())),
    }


def other_partial(s: pd.Series) -> OtherPartial:
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
