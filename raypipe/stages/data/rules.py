"""Declared schema validation for tabular data, one pandas batch at a time (no Ray here).

A ``data.validate`` stage declares per-column rules (:class:`ValidateParams`) and
checks them on a Ray Data dataset in ``map_batches`` tasks; every function here
works on one batch and returns something small, picklable and mergeable:

- :func:`check_schema` checks the dataset's arrow schema once (missing, wrong-typed
  and, with ``extra_columns: forbid``, undeclared columns: fatal, no row fixes them);
- :func:`check_batch` checks the row rules (``nullable``, ``min``, ``max``,
  ``allowed`` and, in a second pass, ``unique``) and returns a mask of bad rows and a
  :class:`ValidationReport`; reports of batches are combined with
  :meth:`ValidationReport.merge` (or :func:`merge_reports`);
- uniqueness needs every batch: pass 1 collects :func:`key_hashes` of each unique
  column, :func:`duplicate_hashes` finds the keys seen more than once, and pass 2
  flags their rows with ``check_batch(..., dup_hashes=...)`` (exact ``rows_bad``) or
  :func:`unique_violations`;
- :func:`check_row_count` checks the total row count at the end.

A null value (None, NaN, NaT, pd.NA) only ever breaks ``nullable``: never ``min``,
``max``, ``allowed`` or ``unique`` (nulls are not duplicates of each other, as in SQL).

Text columns: Arrow's CSV reader makes a whole column a string when one value does not
parse (a date "2023-13-45", a number "n.a.").  A string column declared ``int``,
``float``, ``number``, ``bool``, ``date`` or ``timestamp`` (see :func:`text_columns`)
is therefore not a schema error: each value is parsed (:data:`PARSED_TYPES`), a value
that does not parse breaks the row rule ``type``, and the other rules apply to the
parsed values.  :func:`convert_batch` gives a batch with those columns converted
(always the same Arrow type, whatever the values: the ``data`` output's schema does
not depend on which rows a block holds).  Surrounding whitespace is ignored, and the
texts Arrow's CSV reader takes as null in a typed column (:data:`NULL_TEXTS`: "",
"NA", "null", "NaN", ...) are null, as they would have been had the column parsed.  The
parsing itself, and the reading of ``min``/``max``, is :mod:`raypipe.stages.data.textparse`.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes
from pydantic import Field, ValidationInfo, field_validator, model_validator

from raypipe.stages.base import StageParams
from raypipe.stages.data.textparse import (
    NULL_TEXTS,
    PARSED_TYPES,
    arrow_ints,
    arrow_of,
    bound_key,
    bound_text,
    bound_value,
    date_ints,
    epoch_days,
    is_parsed,
    is_text_type,
    null_mask,
    parse_text,
    rule_values,
    timestamp_bound,
    timestamp_ints,
    type_expected,
)

__all__ = [
    "NULL_HASH",
    "NULL_TEXTS",
    "PARSED_TYPES",
    "BatchCheck",
    "ColumnRule",
    "ColumnType",
    "RowBounds",
    "ValidateParams",
    "ValidationReport",
    "Violation",
    "check_batch",
    "check_row_count",
    "check_schema",
    "convert_batch",
    "duplicate_hashes",
    "jsonable",
    "key_hashes",
    "merge_reports",
    "series_hashes",
    "text_columns",
    "unique_violations",
]

ColumnType = Literal["int", "float", "number", "string", "bool", "date", "timestamp", "category"]

#: The hash every null gets from :func:`series_hashes` (whatever the column's dtype).
NULL_HASH = np.uint64(0x6E756C6C6E756C6C)

#: Order of rules in :meth:`ValidationReport.format` (within a column).
_RULE_ORDER = ("missing", "type", "extra", "nullable", "min", "max", "allowed", "unique", "rows_min", "rows_max")
_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


# --------------------------------------------------------------------------- params


class ColumnRule(StageParams):
    """The rules of one column; every rule is optional."""

    #: ``number`` is int or float; ``date`` an Arrow date, ``timestamp`` an Arrow timestamp
    #: (with or without a time zone); ``category`` is a string or dictionary (categorical)
    #: column.  A string column declared int, float, number, bool, date or timestamp is
    #: parsed (see the module doc).
    type: ColumnType | None = None
    nullable: bool = True
    #: Inclusive bounds: numbers for int/float/number (and untyped) columns, ISO dates
    #: (``2020-01-01``) for date columns, ISO 8601 timestamps or dates for timestamp
    #: columns.  Aware timestamps compare in UTC; a naive bound against a tz-aware column
    #: is taken in ``timezone`` (UTC when unset).
    min: float | _dt.datetime | _dt.date | None = None
    max: float | _dt.datetime | _dt.date | None = None
    allowed: list[str | int | float | bool] | None = None
    #: No two rows share a (non-null) value; checked across the whole dataset.
    unique: bool = False
    #: Timestamp columns: the IANA zone of naive times (text parsed from a string column,
    #: naive bounds against aware values); UTC when unset.
    timezone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded_type(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("type") in ("string", "bool", "category"):
            if data.get("min") is not None or data.get("max") is not None:
                raise ValueError(
                    "min/max need a numeric column (type int, float or number), a date or a timestamp column, "
                    f"not type {data['type']!r}"
                )
        return data

    @field_validator("min", "max", mode="before")
    @classmethod
    def _bound(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or "type" not in info.data:  # an invalid `type` is reported on its own
            return v
        return bound_value(v, info.data["type"])

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ValueError(f"expected an IANA time zone name such as UTC or Europe/Berlin, got {v!r}") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> ColumnRule:
        lo, hi = self.min, self.max
        if lo is not None and hi is not None and bound_key(lo, self.timezone) > bound_key(hi, self.timezone):
            raise ValueError(f"min ({bound_text(lo)}) must be <= max ({bound_text(hi)})")
        if self.timezone is not None and self.type != "timestamp":
            raise ValueError(
                f"timezone applies to timestamp columns only (the zone of naive times), not type {self.type!r}"
            )
        if self.allowed is not None and not self.allowed:
            raise ValueError("allowed must list at least one value")
        if self.allowed is not None and self.type in ("date", "timestamp"):
            raise ValueError(f"allowed is not supported for {self.type} columns: use min and max")
        return self


class RowBounds(StageParams):
    """Bounds of the dataset's total row count (inclusive)."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> RowBounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class ValidateParams(StageParams):
    """Params of ``data.validate``."""

    columns: dict[str, ColumnRule]
    rows: RowBounds = RowBounds()
    #: ``fail``: the stage fails on any violation; ``quarantine``: bad rows go to a separate output.
    on_error: Literal["fail", "quarantine"] = "fail"
    extra_columns: Literal["allow", "forbid"] = "allow"
    #: Example rows kept per (column, rule).
    examples: int = Field(default=5, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> ValidateParams:
        if not self.columns:
            raise ValueError("columns: declare at least one column")
        return self


# --------------------------------------------------------------------------- results


@dataclass
class Violation:
    """One broken rule: of a column (``column``) or of the row count (``column=None``)."""

    column: str | None
    #: missing, type, extra, nullable, min, max, allowed, unique, rows_min or rows_max.
    rule: str
    #: What was expected, as text: ">= 0", "in ['DE', 'FR']", "a float column, got string".
    expected: str
    #: Rows breaking the rule (row rules), the row count (rows_min/rows_max), 0 for schema problems.
    count: int
    #: Example rows (JSON-able dicts, the checked column first).
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: A dataset-level problem that dropping rows cannot fix.
    fatal: bool = False


@dataclass
class ValidationReport:
    """Violations found in some rows; mergeable across batches."""

    rows_checked: int = 0
    violations: list[Violation] = field(default_factory=list)
    #: Rows breaking at least one row rule (a row breaking two rules counts once).
    rows_bad: int = 0
    #: Examples kept per (column, rule).
    max_examples: int = 5

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def fatal(self) -> bool:
        """Whether a violation cannot be fixed by dropping rows (quarantine cannot help)."""
        return any(v.fatal for v in self.violations)

    def merge(self, other: ValidationReport) -> ValidationReport:
        """Sum the counts per (column, rule) and keep the first examples, in merge order.
        Fatal violations are not per row: the first one of a (column, rule) is kept."""
        limit = max(self.max_examples, other.max_examples)
        merged: dict[tuple[str | None, str], Violation] = {}
        for v in [*self.violations, *other.violations]:
            key = (v.column, v.rule)
            cur = merged.get(key)
            if cur is None:
                merged[key] = replace(v, examples=list(v.examples[:limit]))
            elif not (cur.fatal or v.fatal):
                cur.count += v.count
                cur.examples.extend(v.examples[: max(0, limit - len(cur.examples))])
        return ValidationReport(
            rows_checked=self.rows_checked + other.rows_checked,
            violations=list(merged.values()),
            rows_bad=self.rows_bad + other.rows_bad,
            max_examples=limit,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``allow_nan=False`` safe)."""
        return {
            "ok": self.ok,
            "rows_checked": self.rows_checked,
            "rows_bad": self.rows_bad,
            "max_examples": self.max_examples,
            "violations": [asdict(v) for v in self._sorted()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationReport:
        return cls(
            rows_checked=int(d["rows_checked"]),
            violations=[Violation(**v) for v in d.get("violations", [])],
            rows_bad=int(d.get("rows_bad", 0)),
            max_examples=int(d.get("max_examples", 5)),
        )

    def format(self, max_examples: int = 3) -> str:
        """A human-readable report, one line per violation."""
        if self.ok:
            return f"validation passed: {_rows(self.rows_checked)} checked"
        k = len(self.violations)
        lines = [
            f"validation failed: {k} rule{'' if k == 1 else 's'} broken in {_rows(self.rows_checked)}"
            f" ({_rows(self.rows_bad)} bad)"
        ]
        for v in self._sorted():
            lines.append("  " + _format_violation(v, max_examples))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def _sorted(self) -> list[Violation]:
        def key(v: Violation) -> tuple[int, str, int]:
            rank = _RULE_ORDER.index(v.rule) if v.rule in _RULE_ORDER else len(_RULE_ORDER)
            return (v.column is None, "" if v.column is None else str(v.column), rank)

        return sorted(self.violations, key=key)


def merge_reports(reports: Iterable[ValidationReport]) -> ValidationReport:
    """Merge any number of reports, in order (an empty iterable gives an empty report)."""
    out: ValidationReport | None = None
    for r in reports:
        out = r if out is None else out.merge(r)
    return out if out is not None else ValidationReport()


@dataclass
class BatchCheck:
    """The result of :func:`check_batch` on one batch."""

    #: One bool per row of the batch: the row breaks at least one row rule.
    bad: np.ndarray
    report: ValidationReport
    #: The parsed values of the text columns that were parsed (name -> ``pd.ArrowDtype``
    #: series, null where the text is null or did not parse): the converted column.
    parsed: dict[str, pd.Series] = field(default_factory=dict)


# --------------------------------------------------------------------------- schema checks


def _type_ok(t: pa.DataType, declared: str) -> bool:
    if pa.types.is_null(t):  # an all-null column: its values are checked by `nullable`
        return True
    is_str = is_text_type(t)
    if declared == "int":
        return pa.types.is_integer(t)
    if declared == "float":
        return pa.types.is_floating(t)
    if declared == "number":
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if declared == "string":
        return is_str
    if declared == "bool":
        return pa.types.is_boolean(t)
    if declared == "date":
        return pa.types.is_date(t)
    if declared == "timestamp":
        return pa.types.is_timestamp(t)
    if declared == "category":
        return is_str or pa.types.is_dictionary(t)
    raise ValueError(f"unknown column type {declared!r}")


def _type_hint(t: pa.DataType, declared: str) -> str:
    if declared == "timestamp" and pa.types.is_date(t):
        return " (a date column: declare type: date)"
    if declared == "date" and pa.types.is_timestamp(t):
        return " (a timestamp column: declare type: timestamp)"
    return ""


def text_columns(schema: pa.Schema, params: ValidateParams) -> list[str]:
    """The declared columns whose values are parsed: string (or large_string/string_view)
    columns of ``schema`` declared int, float, number, bool, date or timestamp."""
    names = set(schema.names)
    return [
        name
        for name, rule in params.columns.items()
        if rule.type in PARSED_TYPES and name in names and is_text_type(schema.field(name).type)
    ]


def check_schema(schema: pa.Schema, params: ValidateParams) -> list[Violation]:
    """Column-level problems of a dataset's schema (all ``fatal``): declared columns that
    are missing or of the wrong type, and with ``extra_columns: forbid`` undeclared ones
    (pandas index columns ``__index_level_N__`` are ignored).  An arrow ``null`` column
    (every value null) passes any type; a string column passes the types it is parsed
    into (:func:`text_columns`: its values are checked row by row)."""
    out: list[Violation] = []
    names = list(schema.names)
    for name, rule in params.columns.items():
        what = f"a {rule.type} column" if rule.type else "a column"
        if name not in names:
            out.append(Violation(name, "missing", what, 0, fatal=True))
            continue
        t = schema.field(name).type
        if rule.type is None or _type_ok(t, rule.type) or (rule.type in PARSED_TYPES and is_text_type(t)):
            continue
        out.append(Violation(name, "type", f"{what}, got {t}{_type_hint(t, rule.type)}", 0, fatal=True))
    if params.extra_columns == "forbid":
        for name in names:
            if name not in params.columns and not _PANDAS_INDEX.match(name):
                out.append(Violation(name, "extra", "no undeclared columns (extra_columns: forbid)", 0, fatal=True))
    return out


def check_row_count(n: int, params: ValidateParams) -> list[Violation]:
    """The dataset's total row count against ``params.rows`` (fatal violations)."""
    out: list[Violation] = []
    if params.rows.min is not None and n < params.rows.min:
        out.append(Violation(None, "rows_min", f"at least {params.rows.min:,}", n, fatal=True))
    if params.rows.max is not None and n > params.rows.max:
        out.append(Violation(None, "rows_max", f"at most {params.rows.max:,}", n, fatal=True))
    return out


# --------------------------------------------------------------------------- row checks


def check_batch(
    df: pd.DataFrame,
    params: ValidateParams,
    *,
    dup_hashes: Mapping[str, np.ndarray] | None = None,
    text: Collection[str] | None = None,
) -> BatchCheck:
    """Check the row rules of every declared column present in ``df`` (missing columns are
    :func:`check_schema`'s business).  With ``dup_hashes`` (column -> the result of
    :func:`duplicate_hashes`), the ``unique`` rule of those columns is checked too, so
    ``bad`` and ``rows_bad`` count each row once over all rules.

    ``text`` names the text columns to parse (:func:`text_columns` of the dataset's
    schema); None: the columns of ``df`` holding strings.  A value of a parsed column that
    does not parse breaks the rule ``type``; the other rules check the parsed values.
    Examples show the rows as they are in ``df``."""
    n = len(df)
    bad = np.zeros(n, dtype=bool)
    report = ValidationReport(rows_checked=n, max_examples=params.examples)
    parsed: dict[str, pd.Series] = {}
    for name, rule in params.columns.items():
        if name not in df.columns:
            continue
        checks: list[tuple[str, str, np.ndarray]] = []
        s, unparsed = rule_values(df, name, rule, text)
        missing = null_mask(s)  # null, or text that did not parse
        null = missing
        if unparsed is not None:
            parsed[name] = s
            checks.append(("type", type_expected(rule), unparsed))
            null = missing & ~unparsed
        if not rule.nullable:
            checks.append(("nullable", "not null", null))
        if rule.min is not None or rule.max is not None:
            checks += _bound_checks(s, missing, rule)
        if rule.allowed is not None:
            inside = _isin(s, rule.allowed)
            checks.append(("allowed", f"in {_short_list(rule.allowed)}", ~missing & ~inside))
        if rule.unique and dup_hashes is not None and name in dup_hashes:
            checks.append(("unique", "no duplicates", _dup_mask(s, missing, dup_hashes[name])))
        for rule_name, expected, mask in checks:
            count = int(mask.sum())
            if count:
                bad |= mask
                examples = _examples(df, mask, name, params.examples)
                report.violations.append(Violation(name, rule_name, expected, count, examples))
    report.rows_bad = int(bad.sum())
    return BatchCheck(bad=bad, report=report, parsed=parsed)


def convert_batch(df: pd.DataFrame, params: ValidateParams, *, text: Collection[str] | None = None) -> pd.DataFrame:
    """``df`` with its parsed text columns (``text``, as in :func:`check_batch`) converted
    to their declared types, each a ``pd.ArrowDtype`` of :data:`PARSED_TYPES` whatever
    its values (an empty, all-null or all-bad batch converts to the same schema); values
    that do not parse become null.  Other columns are untouched; ``df`` itself is not
    changed (it is returned as is when nothing is parsed)."""
    out: pd.DataFrame | None = None
    for name, rule in params.columns.items():
        if name in df.columns and is_parsed(df, name, rule, text):
            if out is None:
                out = df.copy(deep=False)
            out[name] = parse_text(df[name], rule)[0]
    return df if out is None else out


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


def key_hashes(
    df: pd.DataFrame, column: str, params: ValidateParams | None = None, *, text: Collection[str] | None = None
) -> np.ndarray:
    """Pass 1 of ``unique``: the :func:`series_hashes` of ``df[column]``; with ``params``,
    of its parsed values when it is a parsed text column (``text`` as in
    :func:`check_batch`; a value that does not parse hashes as null)."""
    if params is not None and column in params.columns:
        return series_hashes(rule_values(df, column, params.columns[column], text)[0])
    return series_hashes(df[column])


def duplicate_hashes(hash_arrays: Iterable[np.ndarray]) -> np.ndarray:
    """The sorted hashes occurring more than once over all arrays (uint64)."""
    arrays = [np.asarray(a, dtype=np.uint64).ravel() for a in hash_arrays]
    if not arrays:
        return np.empty(0, dtype=np.uint64)
    values, counts = np.unique(np.concatenate(arrays), return_counts=True)
    return values[counts > 1]


def unique_violations(
    df: pd.DataFrame,
    column: str,
    dup_hashes: np.ndarray,
    examples: int = 5,
    *,
    params: ValidateParams | None = None,
    text: Collection[str] | None = None,
) -> tuple[np.ndarray, ValidationReport]:
    """Pass 2 of ``unique`` on its own: the rows of ``df`` whose non-null ``column`` value is
    in ``dup_hashes`` (with ``params``: its parsed value, as in :func:`key_hashes`).  The
    report has ``rows_checked=0`` (merge it with the :func:`check_batch` reports without
    counting rows twice) and ``rows_bad`` = the flagged rows, which double counts rows
    breaking other rules too; use ``check_batch(..., dup_hashes=...)`` for an exact
    ``rows_bad``."""
    s = df[column]
    if params is not None and column in params.columns:
        s = rule_values(df, column, params.columns[column], text)[0]
    mask = _dup_mask(s, null_mask(s), dup_hashes)
    report = ValidationReport(rows_checked=0, rows_bad=int(mask.sum()), max_examples=examples)
    if report.rows_bad:
        report.violations.append(
            Violation(column, "unique", "no duplicates", report.rows_bad, _examples(df, mask, column, examples))
        )
    return mask, report


# --------------------------------------------------------------------------- helpers


def _dup_mask(s: pd.Series, null: np.ndarray, dup_hashes: np.ndarray) -> np.ndarray:
    dup = np.asarray(dup_hashes, dtype=np.uint64)
    if len(dup) == 0 or len(s) == 0:
        return np.zeros(len(s), dtype=bool)
    h = series_hashes(s)
    pos = np.minimum(np.searchsorted(dup, h), len(dup) - 1)
    return (dup[pos] == h) & ~null


def _comparable(s: pd.Series, null: np.ndarray) -> np.ndarray:
    """float64 values to compare with min/max; NaN where a non-null value is not a number
    (so it breaks both bounds)."""
    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        s, dtype = s.astype(object), np.dtype(object)
    if ptypes.is_bool_dtype(dtype) or (ptypes.is_numeric_dtype(dtype) and not ptypes.is_complex_dtype(dtype)):
        return np.asarray(s.to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)
    out = np.full(len(s), np.nan)
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        for i, v in enumerate(s.to_numpy()):
            if not null[i] and isinstance(v, (int, float, np.integer, np.floating, np.bool_, decimal.Decimal)):
                out[i] = float(v)
    return out


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


def _examples(df: pd.DataFrame, mask: np.ndarray, column: str, k: int) -> list[dict[str, Any]]:
    if k <= 0:
        return []
    rows = df.iloc[np.flatnonzero(mask)[:k]]
    out = []
    for rec in rows.to_dict("records"):
        ex = {str(column): jsonable(rec[column])}
        ex.update((str(c), jsonable(v)) for c, v in rec.items() if c != column)
        out.append(ex)
    return out


def jsonable(v: Any) -> Any:
    """A plain JSON-able Python value: numpy scalars unwrapped, nulls (None, NaN, NaT,
    pd.NA) -> None, ±inf -> "inf"/"-inf", datetimes -> ISO strings, bytes decoded,
    arrays -> lists; anything else unknown -> ``str``."""
    if v is None or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating, decimal.Decimal)):
        f = float(v)
        if math.isnan(f):
            return None
        return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")
    if isinstance(v, str):
        return v
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, np.datetime64):
        return None if np.isnat(v) else pd.Timestamp(v).isoformat()
    if isinstance(v, (np.timedelta64, _dt.timedelta)):
        td = pd.Timedelta(v)
        return None if td is pd.NaT else str(td)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "backslashreplace")
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray, set, frozenset)):
        return [jsonable(x) for x in v]
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _short_list(values: list[Any], limit: int = 10) -> str:
    if len(values) <= limit:
        return repr(list(values))
    return repr(list(values[:limit]))[:-1] + f", ... ({len(values)} values)]"


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _format_example(ex: Mapping[str, Any], width: int = 100) -> str:
    parts: list[str] = []
    used = 0
    for k, v in ex.items():
        part = f"{k!r}: {v!r}"
        if parts and used + len(part) > width:
            parts.append("...")
            break
        parts.append(part)
        used += len(part) + 2
    return "{" + ", ".join(parts) + "}"


def _format_violation(v: Violation, max_examples: int) -> str:
    if v.column is None:
        return f"rows: {_rows(v.count)}; expected {v.expected}"
    col = f"column {v.column!r}"
    if v.rule == "missing":
        return f"{col}: missing (expected {v.expected})"
    if v.rule == "type" and v.fatal:
        return f"{col}: wrong type (expected {v.expected})"
    if v.rule == "extra":
        return f"{col}: extra column ({v.expected})"
    if v.rule == "unique":
        label = "rule unique"
    elif v.rule in ("nullable", "type"):
        label = f"rule {v.rule} ({v.expected})"
    else:
        label = f"rule {v.rule} {v.expected}".rstrip()
    line = f"{col}: {label}: {_rows(v.count)}"
    shown = v.examples[: max(0, max_examples)]
    if shown:
        line += ", e.g. " + ", ".join(_format_example(e) for e in shown)
    return line


# --------------------------------------------------------------------------- comparisons


def _isin(s: pd.Series, values: list[Any]) -> np.ndarray:
    try:
        return np.asarray(s.isin(values), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        # Arrow-backed columns refuse values of another type (an int column, allowed: [1, "x"])
        return np.asarray(s.astype(object).isin(values), dtype=bool)


def _bound_checks(s: pd.Series, missing: np.ndarray, rule: ColumnRule) -> list[tuple[str, str, np.ndarray]]:
    """The ``min``/``max`` checks of a column's non-missing values; a value of another kind
    (text in a number column, a string in a date column) breaks both bounds."""
    if rule.type == "date":
        values, valid = date_ints(s)

        def key(b: Any) -> Any:
            return epoch_days(b)

    elif rule.type == "timestamp":
        values, valid, unit, aware = timestamp_ints(s, rule.timezone)

        def key(b: Any) -> Any:
            return timestamp_bound(b, unit, aware, rule.timezone)

    else:
        values = _comparable(s, missing)
        valid = ~np.isnan(values)

        def key(b: Any) -> Any:
            return b

    present = ~missing
    out: list[tuple[str, str, np.ndarray]] = []
    with np.errstate(invalid="ignore"):
        if rule.min is not None:
            out.append(("min", f">= {bound_text(rule.min)}", present & (~valid | (values < key(rule.min)))))
        if rule.max is not None:
            out.append(("max", f"<= {bound_text(rule.max)}", present & (~valid | (values > key(rule.max)))))
    return out
