"""Declared schema validation for tabular data, one pandas batch at a time (no Ray here).

A ``data.validate`` stage declares per-column rules (:class:`ValidateParams`) and
checks them on a Ray Data dataset in ``map_batches`` tasks; every function here
works on one batch and returns something small, picklable and mergeable:

- :func:`check_schema` checks the dataset's arrow schema once (missing, wrong-typed
  and, with ``extra_columns: forbid``, undeclared columns: fatal, no row fixes them);
- :func:`check_batch` checks the row rules (``nullable``, ``min``, ``max``,
  ``allowed`` and, in a second pass, ``unique``) and returns a mask of bad rows and a
  :class:`ValidationReport`; reports of batches are combined with
  :meth:`ValidationReport.merge` (or :func:`~raypipe.stages.data.violations.merge_reports`);
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
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes
from pydantic import Field, ValidationInfo, field_validator, model_validator

from raypipe._json import json_safe
from raypipe.stages.base import StageParams
from raypipe.stages.data.textparse import (
    NULL_TEXTS,
    PARSED_TYPES,
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
from raypipe.stages.data.value_hashes import series_hashes
from raypipe.stages.data.violations import ValidationReport, Violation

__all__ = [
    "NULL_TEXTS",
    "PARSED_TYPES",
    "BatchCheck",
    "ColumnRule",
    "ColumnType",
    "RowBounds",
    "ValidateParams",
    "check_batch",
    "check_row_count",
    "check_schema",
    "convert_batch",
    "duplicate_hashes",
    "key_hashes",
    "text_columns",
    "unique_violations",
]

ColumnType = Literal["int", "float", "number", "string", "bool", "date", "timestamp", "category"]

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


def _examples(df: pd.DataFrame, mask: np.ndarray, column: str, k: int) -> list[dict[str, Any]]:
    if k <= 0:
        return []
    rows = df.iloc[np.flatnonzero(mask)[:k]]
    out = []
    for rec in rows.to_dict("records"):
        ex = {str(column): json_safe(rec[column], inf_text=True)}
        ex.update((str(c), json_safe(v, inf_text=True)) for c, v in rec.items() if c != column)
        out.append(ex)
    return out


def _short_list(values: list[Any], limit: int = 10) -> str:
    if len(values) <= limit:
        return repr(list(values))
    return repr(list(values[:limit]))[:-1] + f", ... ({len(values)} values)]"


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
