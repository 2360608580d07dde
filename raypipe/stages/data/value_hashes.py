"""Hashes of pandas values that depend on the value only, not on how pandas holds it (:func:`series_hashes`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes

from raypipe.stages.data.textparse import arrow_ints, arrow_of, null_mask

__all__ = ["NULL_HASH", "series_hashes"]

#: The hash every null gets from :func:`series_hashes` (whatever the column's dtype).
NULL_HASH = np.uint64(0x6E756C6C6E756C6C)
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def series_hashes(s: pd.Series) -> np.ndarray:
    """A uint64 hash per value that depends on the value only, not on how pandas holds it:
    1 (int64), 1.0 (float64, as ints with nulls become) and 1 (Int64) hash alike; True
    (bool or object, as bools with nulls become) alike; strings alike whether str,
    object, string[pyarrow] or categorical; datetimes alike in any unit.  Every null
    hashes to :data:`NULL_HASH`."""
    null = null_mask(s)
    h = _value_hashes(s, null)
    h[null] = NULL_HASH
    return h


def _value_hashes(s: pd.Series, null: np.ndarray) -> np.ndarray:
    dtype = s.dtype
    n = len(s)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    if isinstance(dtype, pd.CategoricalDtype):
        return _value_hashes(s.astype(object), null)
    if isinstance(dtype, pd.ArrowDtype) and (
        pa.types.is_timestamp(dtype.pyarrow_dtype) or pa.types.is_date(dtype.pyarrow_dtype)
    ):
        return _hash_ints(_arrow_temporal_ns(s))
    if ptypes.is_bool_dtype(dtype):
        return _hash_ints(s.to_numpy(dtype="int64", na_value=0))
    if ptypes.is_integer_dtype(dtype):
        if ptypes.is_unsigned_integer_dtype(dtype):
            return _hash_ints(s.to_numpy(dtype="uint64", na_value=0).view(np.int64))
        return _hash_ints(s.to_numpy(dtype="int64", na_value=0))
    if ptypes.is_float_dtype(dtype):
        return _hash_floats(np.asarray(s.to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64))
    if ptypes.is_datetime64_any_dtype(dtype) or ptypes.is_timedelta64_dtype(dtype):
        return _hash_ints(_datetime_ints(s))
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        inferred = ptypes.infer_dtype(s, skipna=True)
        if inferred == "boolean":
            return _hash_ints(
                np.fromiter((0 if b else int(bool(v)) for v, b in zip(s, null, strict=True)), np.int64, n)
            )
        if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
            return _value_hashes(pd.Series(pd.to_numeric(s, errors="coerce"), copy=False), null)
        if inferred in ("datetime64", "datetime", "date"):
            try:
                return _value_hashes(pd.Series(pd.to_datetime(s, utc=inferred != "date"), copy=False), null)
            except (ValueError, TypeError):
                pass
        values = s.to_numpy(dtype=object)
    elif ptypes.is_string_dtype(dtype):
        values = s.to_numpy(dtype=object, na_value=None)
    else:
        values = s.astype(str).to_numpy(dtype=object)
    try:
        return np.asarray(pd.util.hash_array(values, categorize=False), dtype=np.uint64)
    except TypeError:  # unhashable objects (dicts, lists): hash their text
        return np.asarray(pd.util.hash_array(np.array([str(v) for v in values], dtype=object)), dtype=np.uint64)


def _hash_ints(a: np.ndarray) -> np.ndarray:
    return np.asarray(pd.util.hash_array(np.ascontiguousarray(a, dtype=np.int64)), dtype=np.uint64)


def _hash_floats(f: np.ndarray) -> np.ndarray:
    """Integral floats hash as the int they equal; others by their float64 bits."""
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(f) & (f == np.floor(f)) & (f >= -(2.0**63)) & (f < 2.0**63)
    ints = np.where(integral, f, 0.0).astype(np.int64)
    h = np.asarray(pd.util.hash_array(np.where(integral, 0.0, f) + 0.0), dtype=np.uint64)
    return np.where(integral, _hash_ints(ints), h)


def _arrow_temporal_ns(s: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC for tz-aware values) of an Arrow-backed date or
    timestamp series, as :func:`_datetime_ints` gives them for numpy datetimes."""
    t = s.dtype.pyarrow_dtype
    ints, _ = arrow_ints(arrow_of(s))
    if pa.types.is_date32(t):
        return ints * np.int64(86_400 * 10**9)
    if pa.types.is_date64(t):
        return ints * np.int64(10**6)
    return ints * np.int64(_NS_PER[t.unit])


def _datetime_ints(s: pd.Series) -> np.ndarray:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    try:
        s = s.dt.as_unit("ns")
    except (AttributeError, ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        pass
    return np.asarray(s.to_numpy()).view(np.int64)
