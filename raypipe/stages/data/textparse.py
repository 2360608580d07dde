"""Text values of declared column types: parsing, conversion, bounds (no Ray here).

The values of a string column declared ``int``, ``float``, ``number``, ``bool``, ``date``
or ``timestamp`` are parsed here, vectorized with Arrow compute (:func:`parse_text`:
the :data:`PARSED_TYPES` values and the rows whose text does not parse), after trimming
whitespace and taking the :data:`NULL_TEXTS` as null.  Dates and timestamps follow the
ISO 8601 grammar of :func:`raypipe.models.preprocess.parse_iso` (its patterns, so a
validated CSV and a served request accept the same texts); naive times of a timestamp
column are taken in the rule's ``timezone``.  Also here: a rule's ``min``/``max`` read
and checked at plan time (:func:`bound_value`), and dates and timestamps of any pandas
or Arrow form as int64 to compare with those bounds (:func:`date_ints`,
:func:`timestamp_ints`, :func:`timestamp_bound`).  :mod:`raypipe.stages.data.rules`
checks the rules with all this.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import re
from collections.abc import Callable, Collection
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api import types as ptypes

from raypipe.models.preprocess import ISO_DATE_PATTERN, ISO_TIMESTAMP_PATTERN, parse_iso

__all__ = [
    "NULL_TEXTS",
    "PARSED_TYPES",
    "arrow_ints",
    "arrow_of",
    "bound_key",
    "bound_text",
    "bound_value",
    "date_ints",
    "epoch_days",
    "is_parsed",
    "is_text_type",
    "null_mask",
    "parse_text",
    "rule_values",
    "timestamp_bound",
    "timestamp_ints",
    "type_expected",
]


class TypedRule(Protocol):
    """What parsing reads of a column's rule (a :class:`~raypipe.stages.data.rules.ColumnRule`)."""

    @property
    def type(self) -> str | None: ...

    @property
    def timezone(self) -> str | None: ...


#: The declared types a text (string) column is parsed into, and the Arrow type of the
#: converted column: ``int`` is int64, ``float`` and ``number`` float64, ``date`` date32,
#: ``timestamp`` microseconds in UTC.
PARSED_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "number": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}

#: Texts (after trimming whitespace) that are null in a text column being parsed: the
#: default ``null_values`` of Arrow's CSV reader, which a typed column would have had as null.
NULL_TEXTS: tuple[str, ...] = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "n/a",
    "nan",
    "null",
)


# --------------------------------------------------------------------------- text grammar
#
# One grammar for the values of text columns (Arrow's RE2, vectorized) and for min/max
# given as text (Python's re, at plan time): the patterns are written for both.  Dates
# and timestamps: the patterns of raypipe.models.preprocess (parse_iso's grammar).

_INT_CORE = r"[+-]?[0-9]+"
_FLOAT_CORE = (
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])"
)
_FLOAT_RE = re.compile(_FLOAT_CORE)
_BOOL_TEXTS = ("true", "false", "yes", "no", "1", "0")
_TRUE_TEXTS = ("true", "yes", "1")
_EPOCH_DATE = _dt.date(1970, 1, 1)
_EPOCH = _dt.datetime(1970, 1, 1)
_EPOCH_UTC = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_US = _dt.timedelta(microseconds=1)
_US_PER = {"s": 10**6, "ms": 10**3, "us": 1}
_I64 = (-(2**63), 2**63 - 1)


def is_text_type(t: pa.DataType) -> bool:
    """Whether an Arrow type holds text (string, large_string or string_view)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def null_mask(s: pd.Series) -> np.ndarray:
    """Where the values of ``s`` are null (None, NaN, NaT, pd.NA; NaN of Arrow floats too)."""
    null = np.asarray(s.isna(), dtype=bool)
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_floating(dtype.pyarrow_dtype):
        # Arrow-backed floats (Ray Data's pandas batches) tell NaN from null: both are null here
        null = null | np.isnan(s.to_numpy(dtype="float64", na_value=np.nan))
    return null


def type_expected(rule: TypedRule) -> str:
    """What a value of a parsed text column must look like (the ``type`` rule's ``expected``)."""
    t = rule.type
    if t == "int":
        return "an integer: optional sign and digits, within int64"
    if t in ("float", "number"):
        return "a number such as 3, -1.5, 2e-3 or inf"
    if t == "bool":
        return "a bool: true/false, yes/no or 1/0, any case"
    if t == "date":
        return "an ISO date YYYY-MM-DD"
    zone = "UTC" if rule.timezone is None else f"{rule.timezone} (not skipped by a clock change)"
    return f"an ISO 8601 timestamp YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|±HH:MM], naive times in {zone}"


# --------------------------------------------------------------------------- bounds (plan time)


def _shown(v: Any) -> str:
    if isinstance(v, _dt.datetime):
        return f"the timestamp {v.isoformat()}"
    if isinstance(v, _dt.date):
        return f"the date {v.isoformat()}"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"the number {v!r}"
    return repr(v)


def bound_value(v: Any, declared: str | None) -> float | _dt.date:
    """A ``min``/``max`` as given (YAML may load an unquoted date as a ``date`` and a
    timestamp as a ``datetime``), checked against the column's type: a float for
    numeric or untyped columns, a ``date`` for date columns, a ``datetime`` (naive or
    aware) for timestamp columns."""
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    parsed = parse_iso(v) if isinstance(v, str) else v
    if declared == "date":
        if not isinstance(parsed, _dt.date) or isinstance(parsed, _dt.datetime):
            raise ValueError(f"expected an ISO date YYYY-MM-DD (the column's type is date), got {_shown(v)}")
        return parsed
    if declared == "timestamp":
        if isinstance(parsed, _dt.datetime):
            return parsed
        if isinstance(parsed, _dt.date):
            return _dt.datetime.combine(parsed, _dt.time())
        raise ValueError(
            "expected an ISO 8601 timestamp such as 2020-01-01T00:00:00Z, or a date "
            f"(the column's type is timestamp), got {_shown(v)}"
        )
    if declared in (None, "int", "float", "number"):
        if isinstance(parsed, (_dt.date, _dt.time)):
            raise ValueError(
                f"a date or time bound needs type: date or timestamp (the column's type is "
                f"{declared or 'not declared'}), got {_shown(v)}"
            )
        f: float | None = None
        if isinstance(v, (int, float, decimal.Decimal, np.integer, np.floating)) and not isinstance(
            v, (bool, np.bool_)
        ):
            f = float(v)
        elif isinstance(v, str) and _FLOAT_RE.fullmatch(v.strip()):
            f = float(v.strip())
        if f is None or math.isnan(f):
            raise ValueError(f"expected a number (the column's type is {declared or 'not declared'}), got {_shown(v)}")
        return f
    raise ValueError(f"min/max need a numeric, date or timestamp column, not type {declared!r}")


def bound_key(b: float | _dt.date, zone: str | None) -> Any:
    """An orderable form of a normalized bound: naive timestamps in ``zone`` (UTC when None)."""
    if isinstance(b, _dt.datetime):
        if b.tzinfo is None:
            b = b.replace(tzinfo=ZoneInfo(zone or "UTC"))
        return b.astimezone(_dt.timezone.utc)
    return b


def bound_text(b: float | _dt.date) -> str:
    """A normalized bound as shown in reports and errors."""
    return b.isoformat() if isinstance(b, _dt.date) else _num(b)


def _num(x: float) -> str:
    """0.0 -> '0', 2.5 -> '2.5'."""
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


# --------------------------------------------------------------------------- parsing text columns


def _np_bool(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), dtype=bool)


def arrow_of(s: pd.Series) -> pa.Array:
    """The Arrow array behind an Arrow-backed series (one chunk)."""
    arr = pa.array(s.array)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def arrow_ints(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The int64 storage of a date/timestamp array (0 where null) and where it is valid."""
    width = pa.int32() if pa.types.is_date32(arr.type) else pa.int64()
    ints = pc.fill_null(arr.view(width), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return ints, _np_bool(pc.is_valid(arr))


def _text_array(s: pd.Series) -> pa.Array:
    """The values of a text column as a large_string array (nulls as nulls; other values
    than strings as their text)."""
    arr: pa.Array | pa.ChunkedArray | None = None
    values = s.array if hasattr(s.array, "__arrow_array__") else s.to_numpy(dtype=object)
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if arr is None or not is_text_type(arr.type):
        null = null_mask(s)
        arr = pa.array(
            [
                None if n else (v if isinstance(v, str) else str(v))
                for v, n in zip(s.to_numpy(dtype=object), null, strict=True)
            ],
            pa.large_string(),
        )
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if arr.type == pa.large_string() else arr.cast(pa.large_string())


def _digits(g: pa.Array, pad: int = 0) -> np.ndarray:
    """Text of ASCII digits (or empty or null: 0) as int64, right-padded with zeros to ``pad``."""
    g = pc.fill_null(g, "")
    if pad:
        g = pc.utf8_rpad(g, width=pad, padding="0")
    g = pc.if_else(pc.equal(g, ""), pa.scalar("0", g.type), g)
    return np.asarray(pc.cast(g, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _group_ints(parts: pa.Array, name: str, pad: int = 0) -> np.ndarray:
    """The digits captured by group ``name`` of ``extract_regex`` as int64 (0 where absent)."""
    return _digits(pc.struct_field(parts, name), pad)


def _days(y: np.ndarray, m: np.ndarray, d: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970-01-01 of the valid calendar dates (year >= 1) among ``ok``; where they are."""
    ok = ok & (y >= 1) & (m >= 1) & (m <= 12) & (d >= 1)
    months = np.where(ok, (y - 1970) * 12 + (m - 1), 0)
    first = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    following = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    ok &= d - 1 < following - first
    return np.where(ok, first + d - 1, 0), ok


def _parse_int(text: pa.Array, rule: TypedRule) -> tuple[pa.Array, np.ndarray]:
    fmt = _np_bool(pc.match_substring_regex(text, f"^{_INT_CORE}$"))
    # up to 18 characters always fit int64; longer ones (rare) are checked one by one
    ok = fmt & (pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False) <= 18)
    values = np.zeros(len(text), dtype=np.int64)
    if ok.any():
        digits = pc.replace_substring_regex(pc.filter(text, pa.array(ok)), r"^\+", "")  # Arrow refuses "+5"
        values[ok] = pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(fmt & ~ok):
        v = int(text[int(i)].as_py())
        if _I64[0] <= v <= _I64[1]:
            values[i], ok[i] = v, True
    return pa.array(values, mask=~ok, type=pa.int64()), ok


def _parse_float(text: pa.Array, rule: TypedRule) -> tuple[pa.Array, np.ndarray]:
    ok = _np_bool(pc.match_substring_regex(text, f"^{_FLOAT_CORE}$"))
    values = np.full(len(text), np.nan)
    if ok.any():
        sub = pc.filter(text, pa.array(ok))
        try:
            values[ok] = pc.cast(sub, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a form Arrow does not read
            values[ok] = [float(x) for x in sub.to_pylist()]
    # "nan" parses, as null (NaN is null here, and Arrow's CSV reader reads "NaN" as null)
    return pa.array(values, mask=~ok | np.isnan(values), type=pa.float64()), ok


def _parse_bool(text: pa.Array, rule: TypedRule) -> tuple[pa.Array, np.ndarray]:
    low = pc.utf8_lower(text)
    ok = _np_bool(pc.is_in(low, value_set=pa.array(_BOOL_TEXTS, pa.large_string())))
    true = _np_bool(pc.is_in(low, value_set=pa.array(_TRUE_TEXTS, pa.large_string())))
    return pa.array(true, mask=~ok, type=pa.bool_()), ok


def _parse_date(text: pa.Array, rule: TypedRule) -> tuple[pa.Array, np.ndarray]:
    """Dates in the ISO grammar, faster than the grammar's regex alone: text shaped
    ``NNNN-NN-NN`` goes through Arrow's ``strptime``, and a date is taken from it only when
    its day is the text's day (strptime rolls ``2023-02-30`` over to March 2) and its year
    is not 0; everything else goes through the grammar (:func:`_parse_date_regex`), which
    decides alone what is a date."""
    n = len(text)
    days = np.zeros(n, dtype=np.int32)
    ok = np.zeros(n, dtype=bool)
    shape = _np_bool(pc.match_substring_regex(text, "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))
    if shape.any():
        sub = pc.filter(text, pa.array(shape))
        fast = pc.strptime(sub, format="%Y-%m-%d", unit="s", error_is_null=True)
        same_day = pc.equal(pc.day(fast), pc.cast(pc.utf8_slice_codeunits(sub, 8, 10), pa.int64()))
        good = _np_bool(pc.and_(same_day, pc.greater(pc.year(fast), 0)))
        if good.any():
            where = np.flatnonzero(shape)[good]
            dated = pc.cast(pc.filter(fast, pa.array(good)), pa.date32())
            days[where] = pc.cast(dated, pa.int32()).to_numpy(zero_copy_only=False)
            ok[where] = True
    rest = _np_bool(pc.is_valid(text)) & ~ok
    if rest.any():
        values, sub_ok = _parse_date_regex(pc.filter(text, pa.array(rest)), rule)
        where = np.flatnonzero(rest)
        days[where] = pc.cast(values, pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
        ok[where] = sub_ok
    return pa.array(days, mask=~ok, type=pa.date32()), ok


def _parse_date_regex(text: pa.Array, rule: TypedRule) -> tuple[pa.Array, np.ndarray]:
    parts = pc.extract_regex(text, f"^{ISO_DATE_PATTERN}$")
    days, ok = _days(
        _group_ints(parts, "y"), _group_ints(parts, "mo"), _group_ints(parts, "d"), _np_bool(pc.is_valid(parts))
    )
    return pa.array(days.astype(np.int32), mask=~ok, type=pa.date32()), ok


def _parse_timestamp(text: pa.Array, rule: TypedRule) -> tuple[pa.Array, np.ndarray]:
    parts = pc.extract_regex(text, f"^{ISO_TIMESTAMP_PATTERN}$")
    days, ok = _days(
        _group_ints(parts, "y"), _group_ints(parts, "mo"), _group_ints(parts, "d"), _np_bool(pc.is_valid(parts))
    )
    h, mi, s = _group_ints(parts, "h"), _group_ints(parts, "mi"), _group_ints(parts, "s")
    z = pc.fill_null(pc.struct_field(parts, "z"), "")
    zz = pc.replace_substring(z, ":", "")
    off_h, off_m = _digits(pc.utf8_slice_codeunits(zz, 1, 3)), _digits(pc.utf8_slice_codeunits(zz, 3, 5))
    sign = np.where(_np_bool(pc.starts_with(zz, "-")), -1, 1)
    naive = _np_bool(pc.equal(z, ""))
    ok &= (h <= 23) & (mi <= 59) & (s <= 59) & (off_h <= 23) & (off_m <= 59)
    local = days * 86_400_000_000 + (h * 3600 + mi * 60 + s) * 1_000_000 + _group_ints(parts, "f", pad=9) // 1000
    values = local - sign * (off_h * 3600 + off_m * 60) * 1_000_000
    if rule.timezone is not None:
        at = np.flatnonzero(ok & naive)
        if len(at):
            values[at], ok[at] = _localize(local[at], rule.timezone)
    return pa.array(np.where(ok, values, 0), mask=~ok, type=PARSED_TYPES["timestamp"]), ok


def _localize(local_us: np.ndarray, zone: str) -> tuple[np.ndarray, np.ndarray]:
    """UTC microseconds of wall times in ``zone``: a time a DST change repeats is its
    earlier instant; a time it skips does not exist (``ok`` False)."""
    wall = pd.DatetimeIndex(local_us.astype("datetime64[us]"))
    n = len(wall)
    a = wall.tz_localize(zone, ambiguous=np.ones(n, dtype=bool), nonexistent="NaT").asi8
    b = wall.tz_localize(zone, ambiguous=np.zeros(n, dtype=bool), nonexistent="NaT").asi8
    nat = np.iinfo(np.int64).min
    return np.minimum(a, b), (a != nat) & (b != nat)


_PARSERS: dict[str, Callable[[pa.Array, TypedRule], tuple[pa.Array, np.ndarray]]] = {
    "int": _parse_int,
    "float": _parse_float,
    "number": _parse_float,
    "bool": _parse_bool,
    "date": _parse_date,
    "timestamp": _parse_timestamp,
}


def parse_text(s: pd.Series, rule: TypedRule) -> tuple[pd.Series, np.ndarray]:
    """The values of text series ``s`` parsed as ``rule.type`` (a ``pd.ArrowDtype`` series of
    :data:`PARSED_TYPES`, null where the text is null or does not parse) and the rows
    whose non-null text does not parse."""
    parse = _PARSERS[str(rule.type)]
    text = pc.utf8_trim_whitespace(_text_array(s))
    text = pc.if_else(
        pc.is_in(text, value_set=pa.array(NULL_TEXTS, pa.large_string())), pa.scalar(None, pa.large_string()), text
    )
    values, ok = parse(text, rule)
    bad = _np_bool(pc.is_valid(text)) & ~ok
    return pd.Series(pd.arrays.ArrowExtensionArray(values), index=s.index, name=s.name, copy=False), bad


def _is_text_series(s: pd.Series) -> bool:
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return is_text_type(dtype.pyarrow_dtype)
    if isinstance(dtype, pd.StringDtype):
        return True
    return isinstance(dtype, np.dtype) and dtype.kind == "O" and ptypes.infer_dtype(s, skipna=True) == "string"


def is_parsed(df: pd.DataFrame, name: str, rule: TypedRule, text: Collection[str] | None) -> bool:
    if rule.type not in PARSED_TYPES:
        return False
    return name in text if text is not None else _is_text_series(df[name])


def rule_values(
    df: pd.DataFrame, name: str, rule: TypedRule, text: Collection[str] | None
) -> tuple[pd.Series, np.ndarray | None]:
    """The values the rules of column ``name`` check: parsed when it is a parsed text
    column (then also the rows whose text does not parse), else as they are."""
    if is_parsed(df, name, rule, text):
        return parse_text(df[name], rule)
    return df[name], None


# --------------------------------------------------------------------------- dates and timestamps as int64


def epoch_days(d: _dt.date) -> int:
    """Days since 1970-01-01 of a date."""
    return (d - _EPOCH_DATE).days


def date_ints(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970-01-01 of a date column's values, and where a value is a date."""
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_date(dtype.pyarrow_dtype):
        return arrow_ints(arrow_of(s).cast(pa.date32()))
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        v = s.to_numpy()
        return v.astype("datetime64[D]").astype(np.int64), ~np.isnat(v)
    days = np.zeros(len(s), dtype=np.int64)
    valid = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s.to_numpy(dtype=object)):
        if isinstance(v, _dt.datetime):
            v = v.date() if v is not pd.NaT else None
        if isinstance(v, _dt.date):
            days[i], valid[i] = epoch_days(v), True
    return days, valid


def timestamp_ints(s: pd.Series, zone: str | None) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """A timestamp column's values as int64 in ``unit`` ("ns" for nanosecond columns, else
    "us"; UTC when ``aware``, wall times when naive), and where a value is a timestamp."""
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_timestamp(dtype.pyarrow_dtype):
        t = dtype.pyarrow_dtype
        ints, valid = arrow_ints(arrow_of(s))
        unit, aware = t.unit, t.tz is not None
    elif isinstance(dtype, pd.DatetimeTZDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "M"):
        aware = isinstance(dtype, pd.DatetimeTZDtype)
        v = (s.dt.tz_convert("UTC").dt.tz_localize(None) if aware else s).to_numpy()
        unit = np.datetime_data(v.dtype)[0]
        ints, valid = v.view(np.int64).copy(), ~np.isnat(v)
    else:
        return _object_timestamp_ints(s, zone)
    if unit != "ns":
        ints, unit = ints * np.int64(_US_PER[unit]), "us"
    return np.where(valid, ints, 0), valid, unit, aware


def _object_timestamp_ints(s: pd.Series, zone: str | None) -> tuple[np.ndarray, np.ndarray, str, bool]:
    stamps: list[_dt.datetime | None] = []
    for v in s.to_numpy(dtype=object):
        if isinstance(v, np.datetime64):
            v = pd.Timestamp(v)
        if isinstance(v, pd.Timestamp):
            v = None if v is pd.NaT else v.floor("us").to_pydatetime()
        if isinstance(v, _dt.date) and not isinstance(v, _dt.datetime):
            v = _dt.datetime.combine(v, _dt.time())
        stamps.append(v if isinstance(v, _dt.datetime) else None)
    aware = any(v is not None and v.tzinfo is not None for v in stamps)
    ints = np.zeros(len(stamps), dtype=np.int64)
    valid = np.array([v is not None for v in stamps], dtype=bool)
    for i, v in enumerate(stamps):
        if v is not None:
            ints[i] = timestamp_bound(v, "us", aware, zone)
    return ints, valid, "us", aware


def timestamp_bound(b: _dt.datetime, unit: str, aware: bool, zone: str | None) -> int:
    """A timestamp as the int64 of a column holding ``unit`` ("us" or "ns"): against an
    aware column in UTC (naive values taken in ``zone``, UTC when None), against a naive
    one as a wall time in ``zone``.  Clipped to the int64 range."""
    z = ZoneInfo(zone or "UTC")
    if aware:
        us = (b.replace(tzinfo=z) if b.tzinfo is None else b) - _EPOCH_UTC
    else:
        us = (b.astimezone(z).replace(tzinfo=None) if b.tzinfo is not None else b) - _EPOCH
    v = (us // _US) * (1000 if unit == "ns" else 1)
    return max(_I64[0], min(_I64[1], v))
