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
"NA", "null", "NaN", ...) are null, as they would have been had the column parsed.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api import types as ptypes
from pydantic import Field, ValidationInfo, field_validator, model_validator

from raypipe.stages.base import StageParams

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

#: The hash every null gets from :func:`series_hashes` (whatever the column's dtype).
NULL_HASH = np.uint64(0x6E756C6C6E756C6C)

#: Order of rules in :meth:`ValidationReport.format` (within a column).
_RULE_ORDER = ("missing", "type", "extra", "nullable", "min", "max", "allowed", "unique", "rows_min", "rows_max")
_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")


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
        return _bound_value(v, info.data["type"])

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
        if lo is not None and hi is not None and _bound_key(lo, self.timezone) > _bound_key(hi, self.timezone):
            raise ValueError(f"min ({_bound_text(lo)}) must be <= max ({_bound_text(hi)})")
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


# --------------------------------------------------------------------------- schema checks


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _type_ok(t: pa.DataType, declared: str) -> bool:
    if pa.types.is_null(t):  # an all-null column: its values are checked by `nullable`
        return True
    is_str = _is_text_type(t)
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
        if rule.type in PARSED_TYPES and name in names and _is_text_type(schema.field(name).type)
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
        if rule.type is None or _type_ok(t, rule.type) or (rule.type in PARSED_TYPES and _is_text_type(t)):
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
    for name, rule in params.columns.items():
        if name not in df.columns:
            continue
        checks: list[tuple[str, str, np.ndarray]] = []
        s, unparsed = _rule_values(df, name, rule, text)
        missing = _null_mask(s)  # null, or text that did not parse
        null = missing
        if unparsed is not None:
            checks.append(("type", _type_expected(rule), unparsed))
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
    return BatchCheck(bad=bad, report=report)


def convert_batch(df: pd.DataFrame, params: ValidateParams, *, text: Collection[str] | None = None) -> pd.DataFrame:
    """``df`` with its parsed text columns (``text``, as in :func:`check_batch`) converted
    to their declared types, each a ``pd.ArrowDtype`` of :data:`PARSED_TYPES` whatever
    its values (an empty, all-null or all-bad batch converts to the same schema); values
    that do not parse become null.  Other columns are untouched; ``df`` itself is not
    changed (it is returned as is when nothing is parsed)."""
    out: pd.DataFrame | None = None
    for name, rule in params.columns.items():
        if name in df.columns and _is_parsed(df, name, rule, text):
            if out is None:
                out = df.copy(deep=False)
            out[name] = _parse_text(df[name], rule)[0]
    return df if out is None else out


def series_hashes(s: pd.Series) -> np.ndarray:
    """A uint64 hash per value that depends on the value only, not on how pandas holds it:
    1 (int64), 1.0 (float64, as ints with nulls become) and 1 (Int64) hash alike; True
    (bool or object, as bools with nulls become) alike; strings alike whether str,
    object, string[pyarrow] or categorical; datetimes alike in any unit.  Every null
    hashes to :data:`NULL_HASH`."""
    null = _null_mask(s)
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
        return series_hashes(_rule_values(df, column, params.columns[column], text)[0])
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
        s = _rule_values(df, column, params.columns[column], text)[0]
    mask = _dup_mask(s, _null_mask(s), dup_hashes)
    report = ValidationReport(rows_checked=0, rows_bad=int(mask.sum()), max_examples=examples)
    if report.rows_bad:
        report.violations.append(
            Violation(column, "unique", "no duplicates", report.rows_bad, _examples(df, mask, column, examples))
        )
    return mask, report


# --------------------------------------------------------------------------- helpers


def _null_mask(s: pd.Series) -> np.ndarray:
    null = np.asarray(s.isna(), dtype=bool)
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_floating(dtype.pyarrow_dtype):
        # Arrow-backed floats (Ray Data's pandas batches) tell NaN from null: both are null here
        null = null | np.isnan(s.to_numpy(dtype="float64", na_value=np.nan))
    return null


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
    ints, _ = _arrow_ints(_arrow_of(s))
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


def _num(x: float) -> str:
    """0.0 -> '0', 2.5 -> '2.5'."""
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


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


# --------------------------------------------------------------------------- text grammar
#
# One grammar for the values of text columns (Arrow's RE2, vectorized) and for min/max
# given as text (Python's re, at plan time): the patterns are written for both.

_INT_CORE = r"[+-]?[0-9]+"
_FLOAT_CORE = (
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])"
)
_DATE_CORE = r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
_TIMESTAMP_CORE = (
    _DATE_CORE + r"(?:[Tt ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]{1,9}))?)?"
    r"(?P<z>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_FLOAT_RE = re.compile(_FLOAT_CORE)
_DATE_RE = re.compile(_DATE_CORE)
_TIMESTAMP_RE = re.compile(_TIMESTAMP_CORE)
_BOOL_TEXTS = ("true", "false", "yes", "no", "1", "0")
_TRUE_TEXTS = ("true", "yes", "1")
_EPOCH_DATE = _dt.date(1970, 1, 1)
_EPOCH = _dt.datetime(1970, 1, 1)
_EPOCH_UTC = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_US = _dt.timedelta(microseconds=1)
_US_PER = {"s": 10**6, "ms": 10**3, "us": 1}
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_I64 = (-(2**63), 2**63 - 1)


def _parse_date_text(text: str) -> _dt.date | None:
    """An ISO date ``YYYY-MM-DD`` (surrounding whitespace ignored), or None."""
    m = _DATE_RE.fullmatch(text.strip())
    if m is None:
        return None
    try:
        return _dt.date(int(m["y"]), int(m["mo"]), int(m["d"]))
    except ValueError:  # 2023-02-30, 0000-01-01
        return None


def _parse_timestamp_text(text: str) -> _dt.datetime | None:
    """An ISO 8601 timestamp ``YYYY-MM-DD[( |T)HH:MM[:SS[.fffffffff]]][Z|±HH[:MM]]`` (naive
    without an offset; digits past microseconds dropped), or None."""
    m = _TIMESTAMP_RE.fullmatch(text.strip())
    if m is None:
        return None
    g = m.groupdict()
    tz: _dt.tzinfo | None = None
    try:
        z = g["z"] or ""
        if z in ("Z", "z"):
            tz = _dt.timezone.utc
        elif z:
            zz = z.replace(":", "")
            minutes = int(zz[3:5] or 0)
            if minutes > 59:
                return None
            offset = _dt.timedelta(hours=int(zz[1:3]), minutes=minutes)
            tz = _dt.timezone(-offset if zz[0] == "-" else offset)
        return _dt.datetime(
            int(g["y"]),
            int(g["mo"]),
            int(g["d"]),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g["s"] or 0),
            int((g["f"] or "").ljust(9, "0")) // 1000,
            tzinfo=tz,
        )
    except ValueError:  # out-of-range fields, an offset of 24 hours or more
        return None


def _type_expected(rule: ColumnRule) -> str:
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


def _bound_value(v: Any, declared: str | None) -> float | _dt.date:
    """A ``min``/``max`` as given (YAML may load an unquoted date as a ``date`` and a
    timestamp as a ``datetime``), checked against the column's type: a float for
    numeric or untyped columns, a ``date`` for date columns, a ``datetime`` (naive or
    aware) for timestamp columns."""
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if declared == "date":
        d = v if isinstance(v, _dt.date) and not isinstance(v, _dt.datetime) else None
        if isinstance(v, str):
            d = _parse_date_text(v)
        if d is None:
            raise ValueError(f"expected an ISO date YYYY-MM-DD (the column's type is date), got {_shown(v)}")
        return d
    if declared == "timestamp":
        if isinstance(v, _dt.datetime):
            return v
        if isinstance(v, _dt.date):
            return _dt.datetime.combine(v, _dt.time())
        t = _parse_timestamp_text(v) if isinstance(v, str) else None
        if t is None:
            raise ValueError(
                "expected an ISO 8601 timestamp such as 2020-01-01T00:00:00Z, or a date "
                f"(the column's type is timestamp), got {_shown(v)}"
            )
        return t
    if declared in (None, "int", "float", "number"):
        if isinstance(v, (_dt.date, _dt.time)) or (isinstance(v, str) and _parse_timestamp_text(v) is not None):
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


def _bound_key(b: float | _dt.date, zone: str | None) -> Any:
    """An orderable form of a normalized bound: naive timestamps in ``zone`` (UTC when None)."""
    if isinstance(b, _dt.datetime):
        if b.tzinfo is None:
            b = b.replace(tzinfo=ZoneInfo(zone or "UTC"))
        return b.astimezone(_dt.timezone.utc)
    return b


def _bound_text(b: float | _dt.date) -> str:
    return b.isoformat() if isinstance(b, _dt.date) else _num(b)


# --------------------------------------------------------------------------- parsing text columns


def _np_bool(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), dtype=bool)


def _arrow_of(s: pd.Series) -> pa.Array:
    """The Arrow array behind an Arrow-backed series (one chunk)."""
    arr = pa.array(s.array)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _arrow_ints(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
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
    if arr is None or not _is_text_type(arr.type):
        null = _null_mask(s)
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


def _parse_int(text: pa.Array, rule: ColumnRule) -> tuple[pa.Array, np.ndarray]:
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


def _parse_float(text: pa.Array, rule: ColumnRule) -> tuple[pa.Array, np.ndarray]:
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


def _parse_bool(text: pa.Array, rule: ColumnRule) -> tuple[pa.Array, np.ndarray]:
    low = pc.utf8_lower(text)
    ok = _np_bool(pc.is_in(low, value_set=pa.array(_BOOL_TEXTS, pa.large_string())))
    true = _np_bool(pc.is_in(low, value_set=pa.array(_TRUE_TEXTS, pa.large_string())))
    return pa.array(true, mask=~ok, type=pa.bool_()), ok


def _parse_date(text: pa.Array, rule: ColumnRule) -> tuple[pa.Array, np.ndarray]:
    parts = pc.extract_regex(text, f"^{_DATE_CORE}$")
    days, ok = _days(
        _group_ints(parts, "y"), _group_ints(parts, "mo"), _group_ints(parts, "d"), _np_bool(pc.is_valid(parts))
    )
    return pa.array(days.astype(np.int32), mask=~ok, type=pa.date32()), ok


def _parse_timestamp(text: pa.Array, rule: ColumnRule) -> tuple[pa.Array, np.ndarray]:
    parts = pc.extract_regex(text, f"^{_TIMESTAMP_CORE}$")
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


_PARSERS: dict[str, Callable[[pa.Array, ColumnRule], tuple[pa.Array, np.ndarray]]] = {
    "int": _parse_int,
    "float": _parse_float,
    "number": _parse_float,
    "bool": _parse_bool,
    "date": _parse_date,
    "timestamp": _parse_timestamp,
}


def _parse_text(s: pd.Series, rule: ColumnRule) -> tuple[pd.Series, np.ndarray]:
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
        return _is_text_type(dtype.pyarrow_dtype)
    if isinstance(dtype, pd.StringDtype):
        return True
    return isinstance(dtype, np.dtype) and dtype.kind == "O" and ptypes.infer_dtype(s, skipna=True) == "string"


def _is_parsed(df: pd.DataFrame, name: str, rule: ColumnRule, text: Collection[str] | None) -> bool:
    if rule.type not in PARSED_TYPES:
        return False
    return name in text if text is not None else _is_text_series(df[name])


def _rule_values(
    df: pd.DataFrame, name: str, rule: ColumnRule, text: Collection[str] | None
) -> tuple[pd.Series, np.ndarray | None]:
    """The values the rules of column ``name`` check: parsed when it is a parsed text
    column (then also the rows whose text does not parse), else as they are."""
    if _is_parsed(df, name, rule, text):
        return _parse_text(df[name], rule)
    return df[name], None


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
        values, valid = _date_ints(s)

        def key(b: Any) -> Any:
            return (b - _EPOCH_DATE).days

    elif rule.type == "timestamp":
        values, valid, unit, aware = _timestamp_ints(s, rule.timezone)

        def key(b: Any) -> Any:
            return _timestamp_bound(b, unit, aware, rule.timezone)

    else:
        values = _comparable(s, missing)
        valid = ~np.isnan(values)

        def key(b: Any) -> Any:
            return b

    present = ~missing
    out: list[tuple[str, str, np.ndarray]] = []
    with np.errstate(invalid="ignore"):
        if rule.min is not None:
            out.append(("min", f">= {_bound_text(rule.min)}", present & (~valid | (values < key(rule.min)))))
        if rule.max is not None:
            out.append(("max", f"<= {_bound_text(rule.max)}", present & (~valid | (values > key(rule.max)))))
    return out


def _date_ints(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970-01-01 of a date column's values, and where a value is a date."""
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_date(dtype.pyarrow_dtype):
        return _arrow_ints(_arrow_of(s).cast(pa.date32()))
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        v = s.to_numpy()
        return v.astype("datetime64[D]").astype(np.int64), ~np.isnat(v)
    days = np.zeros(len(s), dtype=np.int64)
    valid = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s.to_numpy(dtype=object)):
        if isinstance(v, _dt.datetime):
            v = v.date() if v is not pd.NaT else None
        if isinstance(v, _dt.date):
            days[i], valid[i] = (v - _EPOCH_DATE).days, True
    return days, valid


def _timestamp_ints(s: pd.Series, zone: str | None) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """A timestamp column's values as int64 in ``unit`` ("ns" for nanosecond columns, else
    "us"; UTC when ``aware``, wall times when naive), and where a value is a timestamp."""
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_timestamp(dtype.pyarrow_dtype):
        t = dtype.pyarrow_dtype
        ints, valid = _arrow_ints(_arrow_of(s))
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
            ints[i] = _timestamp_bound(v, "us", aware, zone)
    return ints, valid, "us", aware


def _timestamp_bound(b: _dt.datetime, unit: str, aware: bool, zone: str | None) -> int:
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
