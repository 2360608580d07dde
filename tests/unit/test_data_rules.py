"""Declared schema validation (raypipe.stages.data.rules): pure pandas/pyarrow, no Ray."""

from __future__ import annotations

import datetime as _dt
import io
import json
import pickle
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml
from pydantic import ValidationError

from raypipe.models.preprocess import parse_iso
from raypipe.stages.data.rules import (
    NULL_TEXTS,
    PARSED_TYPES,
    ColumnRule,
    ValidateParams,
    check_batch,
    check_row_count,
    check_schema,
    convert_batch,
    duplicate_hashes,
    key_hashes,
    text_columns,
    unique_violations,
)
from raypipe.stages.data.textparse import bound_value, parse_text
from raypipe.stages.data.value_hashes import NULL_HASH, series_hashes
from raypipe.stages.data.violations import ValidationReport, Violation, merge_reports


def params(**columns: dict) -> ValidateParams:
    return ValidateParams.model_validate({"columns": columns})


def by_rule(report: ValidationReport) -> dict[tuple[str | None, str], Violation]:
    return {(v.column, v.rule): v for v in report.violations}


@pytest.fixture
def people() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [30, -3, 45, None, 200, -1, 20],
            "country": ["DE", "FR", "US", "DE", None, "XX", "FR"],
            "name": ["a", "b", "c", "d", "e", None, "g"],
        }
    )


# --------------------------------------------------------------------------- params


def test_params_defaults_and_types() -> None:
    p = params(age={"type": "int", "min": 0, "max": 150}, name={})
    assert p.on_error == "fail" and p.extra_columns == "allow" and p.examples == 5
    assert p.columns["age"].min == 0.0 and p.columns["name"].nullable
    assert p.rows.min is None
    allowed = ColumnRule(allowed=["a", 1, 2.5, True]).allowed
    assert allowed == ["a", 1, 2.5, True] and type(allowed[1]) is int and type(allowed[3]) is bool


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"columns": {"a": {"min": 5, "max": 1}}}, "min (5) must be <= max (1)"),
        (
            {"columns": {"a": {"type": "string", "min": 0}}},
            "min/max need a numeric column (type int, float or number), a date or a timestamp column",
        ),
        (
            {"columns": {"a": {"type": "bool", "max": 1}}},
            "min/max need a numeric column (type int, float or number), a date or a timestamp column",
        ),
        (
            {"columns": {"a": {"type": "category", "min": 1}}},
            "min/max need a numeric column (type int, float or number), a date or a timestamp column",
        ),
        ({"columns": {"a": {"nullabel": False}}}, "Extra inputs are not permitted"),
        ({"columns": {"a": {}}, "bogus": 1}, "Extra inputs are not permitted"),
        ({"columns": {}}, "at least one column"),
        ({"columns": {"a": {}}, "rows": {"min": 10, "max": 5}}, "min (10) must be <= max (5)"),
        ({"columns": {"a": {}}, "rows": {"min": -1}}, "greater than or equal to 0"),
        ({"columns": {"a": {"type": "text"}}}, "Input should be"),
        ({"columns": {"a": {}}, "examples": 101}, "less than or equal to 100"),
        ({"columns": {"a": {}}, "on_error": "drop"}, "Input should be"),
    ],
)
def test_params_errors(raw: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ValidateParams.model_validate(raw)


def test_min_max_allowed_on_numeric_and_unset_types() -> None:
    for t in (None, "int", "float", "number"):
        ColumnRule(type=t, min=0, max=0)


# --------------------------------------------------------------------------- row rules


def test_each_rule_counts_and_examples(people: pd.DataFrame) -> None:
    p = params(
        age={"nullable": False, "min": 0, "max": 150},
        country={"allowed": ["DE", "FR"]},
        name={"nullable": False},
    )
    check = check_batch(people, p)
    r = by_rule(check.report)
    assert set(r) == {("age", "nullable"), ("age", "min"), ("age", "max"), ("country", "allowed"), ("name", "nullable")}
    assert r[("age", "nullable")].count == 1
    assert r[("age", "min")].count == 2 and r[("age", "min")].expected == ">= 0"
    assert [e["age"] for e in r[("age", "min")].examples] == [-3.0, -1.0]
    assert r[("age", "max")].count == 1 and r[("age", "max")].examples[0]["age"] == 200.0
    assert r[("country", "allowed")].count == 2  # US and XX; the null is not "not allowed"
    assert [e["country"] for e in r[("country", "allowed")].examples] == ["US", "XX"]
    assert r[("name", "nullable")].count == 1
    # examples are whole rows, the checked column first, JSON-able (NaN -> None)
    ex = r[("name", "nullable")].examples[0]
    assert list(ex) == ["name", "age", "country"] and ex == {"name": None, "age": -1.0, "country": "XX"}
    assert r[("age", "nullable")].examples[0] == {"age": None, "country": "DE", "name": "d"}
    assert not any(v.fatal for v in check.report.violations)
    # rows 1 (-3, FR ok), 2 (US), 3 (null age), 4 (200), 5 (-1, XX, null name)
    assert check.bad.tolist() == [False, True, True, True, True, True, False]
    assert check.report.rows_bad == 5 and check.report.rows_checked == 7
    assert not check.report.ok
    json.dumps(check.report.to_dict(), allow_nan=False)


def test_nulls_only_break_nullable() -> None:
    df = pd.DataFrame(
        {
            "x": [np.nan, None, 1.0],
            "y": [np.nan, None, 1.0],
            "s": pd.Series([None, "a", None], dtype="str"),
            "o": pd.Series([None, pd.NA, "a"], dtype=object),
            "i": pd.array([None, 2, 3], dtype="Int64"),
        }
    )
    p = params(
        x={"min": 5, "allowed": [7]},
        y={"max": 0.5},
        s={"allowed": ["a"]},
        o={"allowed": ["a"]},
        i={"min": 0, "allowed": [2, 3]},
    )
    r = by_rule(check_batch(df, p).report)
    # only the non-null 1.0 breaks x's rules; no other column breaks anything
    assert set(r) == {("x", "min"), ("x", "allowed"), ("y", "max")}
    assert all(v.count == 1 for v in r.values())
    p2 = params(x={"nullable": False}, s={"nullable": False}, o={"nullable": False}, i={"nullable": False})
    r2 = by_rule(check_batch(df, p2).report)
    assert {k: v.count for k, v in r2.items()} == {
        ("x", "nullable"): 2,
        ("s", "nullable"): 2,
        ("o", "nullable"): 2,
        ("i", "nullable"): 1,
    }


def test_min_max_on_non_numbers_and_bounds_inclusive() -> None:
    df = pd.DataFrame({"v": pd.Series([0, 10, "x", 5.5, None], dtype=object), "w": [0.0, 10.0, 5.0, 10.0, 0.0]})
    r = by_rule(check_batch(df, params(v={"min": 0, "max": 10}, w={"min": 0, "max": 10})).report)
    assert {k: v.count for k, v in r.items()} == {("v", "min"): 1, ("v", "max"): 1}  # "x" is not a number
    assert r[("v", "min")].examples[0]["v"] == "x"


def test_allowed_on_category_bool_and_numbers() -> None:
    df = pd.DataFrame(
        {
            "c": pd.Categorical(["a", "b", None, "z"]),
            "b": [True, False, True, True],
            "n": [1, 2, 3, 2],
        }
    )
    r = by_rule(check_batch(df, params(c={"allowed": ["a", "b"]}, b={"allowed": [True]}, n={"allowed": [1, 2]})).report)
    assert {k: v.count for k, v in r.items()} == {("c", "allowed"): 1, ("b", "allowed"): 1, ("n", "allowed"): 1}
    assert r[("c", "allowed")].expected == "in ['a', 'b']"


def test_examples_limit_and_plain_values() -> None:
    df = pd.DataFrame(
        {
            "x": np.arange(20, dtype=np.int64) - 10,
            "t": pd.date_range("2024-01-01", periods=20, freq="D"),
            "f": np.float32(1.5),
        }
    )
    p = ValidateParams.model_validate({"columns": {"x": {"min": 0}}, "examples": 3})
    v = check_batch(df, p).report.violations[0]
    assert v.count == 10 and len(v.examples) == 3
    assert v.examples[0] == {"x": -10, "t": "2024-01-01T00:00:00", "f": 1.5}
    assert type(v.examples[0]["x"]) is int and type(v.examples[0]["f"]) is float
    p0 = ValidateParams.model_validate({"columns": {"x": {"min": 0}}, "examples": 0})
    assert check_batch(df, p0).report.violations[0].examples == []


def test_missing_columns_are_skipped_by_check_batch() -> None:
    df = pd.DataFrame({"a": [1, 2]})
    check = check_batch(df, params(a={"min": 0}, b={"nullable": False}))
    assert check.report.ok and check.report.rows_checked == 2 and not check.bad.any()
    assert check.report.format() == "validation passed: 2 rows checked"


def test_merge_of_batches_equals_check_of_concatenation(people: pd.DataFrame) -> None:
    p = ValidateParams.model_validate(
        {
            "columns": {"age": {"nullable": False, "min": 0, "max": 150}, "country": {"allowed": ["DE", "FR"]}},
            "examples": 2,
        }
    )
    whole = check_batch(people, p)
    parts = [check_batch(people.iloc[:3], p), check_batch(people.iloc[3:5], p), check_batch(people.iloc[5:], p)]
    merged = merge_reports(part.report for part in parts)
    assert merged.to_dict() == whole.report.to_dict()
    assert np.concatenate([part.bad for part in parts]).tolist() == whole.bad.tolist()
    # merge is pure and the pieces pickle
    again = pickle.loads(pickle.dumps(parts[0].report)).merge(parts[1].report).merge(parts[2].report)
    assert again.to_dict() == whole.report.to_dict()
    assert ValidationReport.from_dict(json.loads(json.dumps(merged.to_dict()))).to_dict() == merged.to_dict()
    assert merge_reports([]).ok


def test_merge_keeps_examples_in_order_up_to_limit() -> None:
    a = ValidationReport(5, [Violation("x", "min", ">= 0", 2, [{"x": -1}, {"x": -2}])], rows_bad=2, max_examples=3)
    b = ValidationReport(4, [Violation("x", "min", ">= 0", 3, [{"x": -3}, {"x": -4}, {"x": -5}])], 3, 3)
    m = a.merge(b)
    assert m.rows_checked == 9 and m.rows_bad == 5
    assert m.violations[0].count == 5 and m.violations[0].examples == [{"x": -1}, {"x": -2}, {"x": -3}]
    assert len(a.violations[0].examples) == 2  # inputs untouched


# --------------------------------------------------------------------------- uniqueness


def test_uniqueness_across_two_batches() -> None:
    b1 = pd.DataFrame({"id": [1, 2, 3, None], "v": ["a", "b", "c", "d"]})  # float64 because of the null
    b2 = pd.DataFrame({"id": [3, 4, 5, 5, 6], "v": ["e", "f", "g", "h", "i"]})  # int64
    b3 = pd.DataFrame({"id": pd.Series([None, 7], dtype="Int64"), "v": ["j", "k"]})
    dups = duplicate_hashes([key_hashes(b, "id") for b in (b1, b2, b3)])
    assert dups.dtype == np.uint64 and np.all(np.diff(dups.astype(np.float64)) >= 0)
    m1, r1 = unique_violations(b1, "id", dups, examples=5)
    m2, r2 = unique_violations(b2, "id", dups, examples=5)
    m3, r3 = unique_violations(b3, "id", dups, examples=5)
    assert m1.tolist() == [False, False, True, False]  # 3 is also in b2; the two nulls are no duplicates
    assert m2.tolist() == [True, False, True, True, False]
    assert not m3.any() and r3.ok
    merged = merge_reports([r1, r2, r3])
    (v,) = merged.violations
    assert (v.column, v.rule, v.count) == ("id", "unique", 4) and merged.rows_checked == 0
    assert [e["v"] for e in v.examples] == ["c", "e", "g", "h"]
    # the same through check_batch, combined with the other rules (rows_bad counts rows once)
    p = params(id={"unique": True, "max": 4})
    c2 = check_batch(b2, p, dup_hashes={"id": dups})
    assert {(x.rule, x.count) for x in c2.report.violations} == {("unique", 3), ("max", 3)}
    assert c2.report.rows_bad == 4 and c2.bad.tolist() == [True, False, True, True, True]  # 3 + 3 rules, 4 rows
    # without dup_hashes, check_batch does not check uniqueness
    assert by_rule(check_batch(b2, p).report).keys() == {("id", "max")}


def test_series_hashes_ignore_pandas_representation() -> None:
    same = [
        pd.Series([1, 2, 3]),
        pd.Series([1.0, 2.0, 3.0]),
        pd.Series([1, 2, 3], dtype="Int64"),
        pd.Series([1, 2, 3], dtype="uint8"),
        pd.Series([1, 2, 3], dtype=object),
    ]
    for s in same[1:]:
        assert series_hashes(s).tolist() == series_hashes(same[0]).tolist()
    strs = [
        pd.Series(["a", "b"], dtype="str"),
        pd.Series(["a", "b"], dtype=object),
        pd.Series(["a", "b"], dtype="category"),
        pd.Series(["a", "b"], dtype="string[python]"),
    ]
    for s in strs[1:]:
        assert series_hashes(s).tolist() == series_hashes(strs[0]).tolist()
    assert (
        series_hashes(pd.Series([True, False])).tolist()
        == series_hashes(pd.Series([True, False], dtype=object)).tolist()
    )
    t = pd.Series(pd.to_datetime(["2024-01-01", "2024-06-01"]))
    assert series_hashes(t.dt.as_unit("s")).tolist() == series_hashes(t.dt.as_unit("ns")).tolist()
    nulls = [pd.Series([None], dtype=object), pd.Series([np.nan]), pd.Series([None], dtype="str"), pd.Series([pd.NaT])]
    assert {int(series_hashes(s)[0]) for s in nulls} == {int(NULL_HASH)}
    assert len(set(series_hashes(pd.Series([1.5, 2.5, 1, -1, 0.0, -0.0])).tolist())) == 5


# --------------------------------------------------------------------------- schema and rows


def test_check_schema_missing_type_extra() -> None:
    schema = pa.schema(
        [
            ("age", pa.int32()),
            ("score", pa.bool_()),
            ("country", pa.dictionary(pa.int8(), pa.string())),
            ("when", pa.date32()),
            ("stamp", pa.date32()),
            ("count", pa.string()),
            ("flag", pa.bool_()),
            ("empty", pa.null()),
            ("note", pa.large_string()),
            ("__index_level_0__", pa.int64()),
        ]
    )
    p = ValidateParams.model_validate(
        {
            "columns": {
                "age": {"type": "number"},
                "score": {"type": "float"},
                "country": {"type": "category"},
                "when": {"type": "date"},
                "stamp": {"type": "timestamp"},
                "count": {"type": "int"},
                "flag": {"type": "bool"},
                "empty": {"type": "int"},
                "missing": {"type": "float"},
                "anything": {},
            },
            "extra_columns": "forbid",
        }
    )
    got = {(v.column, v.rule): v for v in check_schema(schema, p)}
    # "count" is a string column declared int: parsed row by row, not a schema problem
    assert set(got) == {
        ("score", "type"),
        ("stamp", "type"),
        ("missing", "missing"),
        ("anything", "missing"),
        ("note", "extra"),
    }
    assert all(v.fatal for v in got.values())
    assert got[("score", "type")].expected == "a float column, got bool"
    assert got[("stamp", "type")].expected == "a timestamp column, got date32[day] (a date column: declare type: date)"
    assert text_columns(schema, p) == ["count"]
    assert got[("missing", "missing")].expected == "a float column"
    p.extra_columns = "allow"
    assert ("note", "extra") not in {(v.column, v.rule) for v in check_schema(schema, p)}


@pytest.mark.parametrize(
    ("declared", "ok", "bad"),
    [
        (
            "int",
            [pa.int8(), pa.uint64(), pa.string()],
            [pa.float32(), pa.bool_(), pa.dictionary(pa.int8(), pa.string())],
        ),
        ("float", [pa.float16(), pa.float64(), pa.large_string()], [pa.int64(), pa.decimal128(5, 2)]),
        ("number", [pa.int64(), pa.float32(), pa.string()], [pa.bool_(), pa.date32()]),
        ("string", [pa.string(), pa.large_string(), pa.string_view()], [pa.dictionary(pa.int8(), pa.string())]),
        ("bool", [pa.bool_(), pa.string()], [pa.int8()]),
        ("date", [pa.date32(), pa.date64(), pa.string(), pa.string_view()], [pa.timestamp("s"), pa.int64()]),
        (
            "timestamp",
            [pa.timestamp("us"), pa.timestamp("ns", tz="UTC"), pa.timestamp("s", tz="Europe/Berlin"), pa.string()],
            [pa.date32(), pa.date64(), pa.int64()],
        ),
        ("category", [pa.string(), pa.dictionary(pa.int32(), pa.large_string())], [pa.int64()]),
    ],
)
def test_type_mapping(declared: str, ok: list[pa.DataType], bad: list[pa.DataType]) -> None:
    p = params(c={"type": declared})
    for t in ok:
        assert check_schema(pa.schema([("c", t)]), p) == [], t
        # string columns are parsed into the types that can be parsed
        parsed = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
        assert text_columns(pa.schema([("c", t)]), p) == (["c"] if parsed and declared in PARSED_TYPES else []), t
    for t in bad:
        assert [v.rule for v in check_schema(pa.schema([("c", t)]), p)] == ["type"], t


def test_check_row_count() -> None:
    p = ValidateParams.model_validate({"columns": {"a": {}}, "rows": {"min": 100, "max": 1000}})
    assert check_row_count(500, p) == [] and check_row_count(100, p) == [] and check_row_count(1000, p) == []
    (low,) = check_row_count(10, p)
    assert (low.column, low.rule, low.count, low.fatal, low.expected) == (None, "rows_min", 10, True, "at least 100")
    (high,) = check_row_count(1001, p)
    assert high.rule == "rows_max" and high.expected == "at most 1,000"


# --------------------------------------------------------------------------- format


def test_format_text(people: pd.DataFrame) -> None:
    p = ValidateParams.model_validate(
        {
            "columns": {
                "age": {"min": 0, "nullable": False},
                "country": {"allowed": ["DE", "FR"]},
                "score": {"type": "float"},
            },
            "rows": {"min": 100},
        }
    )
    report = check_batch(people, p).report
    schema_report = ValidationReport(violations=check_schema(pa.Schema.from_pandas(people), p) + check_row_count(7, p))
    text = report.merge(schema_report).format(max_examples=1)
    lines = text.splitlines()
    assert lines[0] == "validation failed: 5 rules broken in 7 rows (4 rows bad)"
    assert (
        lines[1] == "  column 'age': rule nullable (not null): 1 row, e.g. {'age': None, 'country': 'DE', 'name': 'd'}"
    )
    assert lines[2] == "  column 'age': rule min >= 0: 2 rows, e.g. {'age': -3.0, 'country': 'FR', 'name': 'b'}"
    assert lines[3].startswith("  column 'country': rule allowed in ['DE', 'FR']: 2 rows, e.g. {'country': 'US'")
    assert lines[4] == "  column 'score': missing (expected a float column)"
    assert lines[5] == "  rows: 7 rows; expected at least 100"
    assert str(report).startswith("validation failed: 3 rules broken in 7 rows")


def test_format_truncates_wide_examples() -> None:
    wide = pd.DataFrame({f"col{i}": [i] for i in range(50)} | {"x": [-1]})
    text = check_batch(wide, params(x={"min": 0})).report.format()
    line = text.splitlines()[1]
    assert line.startswith("  column 'x': rule min >= 0: 1 row, e.g. {'x': -1, 'col0': 0,") and line.endswith(", ...}")
    assert len(line) < 200


# --------------------------------------------------------------------------- dates, timestamps and text columns


def arrow_series(values: list, t: pa.DataType) -> pd.Series:
    """A column as Ray Data's pandas batches hold it (Arrow-backed)."""
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.array([None if pd.isna(v) else v for v in values], t)))


def counts(report: ValidationReport) -> dict[tuple[str | None, str], int]:
    return {(v.column, v.rule): v.count for v in report.violations}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"type": "date", "min": "2020-13-01"},
            "expected an ISO date YYYY-MM-DD (the column's type is date), got '2020-13-01'",
        ),
        ({"type": "date", "max": "2023-02-29"}, "expected an ISO date YYYY-MM-DD"),
        ({"type": "date", "min": "01.02.2020"}, "expected an ISO date YYYY-MM-DD"),
        ({"type": "date", "min": 5}, "expected an ISO date YYYY-MM-DD (the column's type is date), got the number 5"),
        ({"type": "date", "min": "2020-01-01T10:00:00"}, "expected an ISO date YYYY-MM-DD"),
        (
            {"type": "date", "max": _dt.datetime(2020, 1, 1, 10)},
            "expected an ISO date YYYY-MM-DD (the column's type is date), got the timestamp 2020-01-01T10:00:00",
        ),
        ({"type": "timestamp", "min": "yesterday"}, "expected an ISO 8601 timestamp such as 2020-01-01T00:00:00Z"),
        ({"type": "timestamp", "min": "2020-01-01T25:00"}, "expected an ISO 8601 timestamp"),
        ({"type": "timestamp", "max": 1.5}, "expected an ISO 8601 timestamp"),
        (
            {"type": "int", "min": _dt.date(2020, 1, 1)},
            "a date or time bound needs type: date or timestamp (the column's type is int), got the date 2020-01-01",
        ),
        (
            {"min": "2020-01-01"},
            "a date or time bound needs type: date or timestamp (the column's type is not declared)",
        ),
        ({"type": "float", "max": "abc"}, "expected a number (the column's type is float), got 'abc'"),
        ({"type": "float", "max": float("nan")}, "expected a number"),
        ({"type": "int", "min": True}, "expected a number"),
        (
            {"type": "timestamp", "timezone": "Mars/Olympus"},
            "expected an IANA time zone name such as UTC or Europe/Berlin",
        ),
        ({"type": "timestamp", "timezone": "../etc/passwd"}, "expected an IANA time zone name"),
        ({"type": "date", "timezone": "UTC"}, "timezone applies to timestamp columns only"),
        ({"timezone": "UTC"}, "timezone applies to timestamp columns only"),
        ({"type": "date", "allowed": ["2020-01-01"]}, "allowed is not supported for date columns: use min and max"),
        ({"type": "datetime"}, "Input should be"),
    ],
)
def test_date_and_timestamp_params_errors(rule: dict, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        ValidateParams.model_validate({"columns": {"a": rule}})
    assert message in str(e.value)


def test_bound_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as e:
        ValidateParams.model_validate({"columns": {"day": {"type": "date", "min": "2020-01-01", "max": "2020-13-01"}}})
    (err,) = e.value.errors()
    assert err["loc"] == ("columns", "day", "max") and "ISO date" in err["msg"]
    with pytest.raises(ValidationError) as e:
        ValidateParams.model_validate({"columns": {"at": {"type": "timestamp", "timezone": "Nowhere"}}})
    assert e.value.errors()[0]["loc"] == ("columns", "at", "timezone")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"type": "date", "min": "2021-01-01", "max": "2020-12-31"}, "min (2021-01-01) must be <= max (2020-12-31)"),
        (
            # 01:00+02:00 is 23:00 UTC the day before: after 22:30 UTC
            {"type": "timestamp", "min": "2020-01-01T01:00:00+02:00", "max": "2019-12-31T22:30:00Z"},
            "min (2020-01-01T01:00:00+02:00) must be <= max (2019-12-31T22:30:00+00:00)",
        ),
        (
            # a naive bound is taken in `timezone`: 00:30 in Berlin is 23:30 UTC the day before
            {"type": "timestamp", "timezone": "Europe/Berlin", "min": "2020-01-01T00:30", "max": "2019-12-31T23:00Z"},
            "must be <= max",
        ),
    ],
)
def test_min_above_max_is_refused_for_dates_and_timestamps(rule: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ValidateParams.model_validate({"columns": {"a": rule}})


def test_date_and_timestamp_bounds_from_yaml_and_iso_strings() -> None:
    raw = yaml.safe_load(
        """
        columns:
          day: {type: date, min: 2020-01-01, max: "2020-12-31"}
          at: {type: timestamp, min: 2020-01-01, max: 2020-06-01T12:00:00Z}
          naive: {type: timestamp, min: 2020-01-01T08:00:00, max: "2020-01-02 10:00:00.5+02:00"}
          n: {type: int, min: "5", max: 10}
        """
    )
    assert isinstance(raw["columns"]["day"]["min"], _dt.date) and isinstance(raw["columns"]["at"]["max"], _dt.datetime)
    p = ValidateParams.model_validate(raw)
    c = p.columns
    assert c["day"].min == _dt.date(2020, 1, 1) and c["day"].max == _dt.date(2020, 12, 31)
    assert type(c["day"].min) is _dt.date
    assert c["at"].min == _dt.datetime(2020, 1, 1) and c["at"].min.tzinfo is None  # a date: midnight, naive
    assert c["at"].max == _dt.datetime(2020, 6, 1, 12, tzinfo=_dt.timezone.utc)
    assert c["naive"].min == _dt.datetime(2020, 1, 1, 8)
    assert c["naive"].max == _dt.datetime(2020, 1, 2, 10, 0, 0, 500000, tzinfo=_dt.timezone(_dt.timedelta(hours=2)))
    assert c["n"].min == 5.0 and type(c["n"].min) is float
    # what the cache key and the run record hold (JSON) validates to the same params
    dumped = p.model_dump(mode="json")
    assert dumped["columns"]["day"]["min"] == "2020-01-01"
    again = ValidateParams.model_validate(json.loads(json.dumps(dumped)))
    assert again == p and again.model_dump(mode="json") == dumped


def test_native_date_columns_min_max() -> None:
    days = [_dt.date(2019, 12, 31), _dt.date(2020, 1, 1), None, _dt.date(2021, 1, 1), _dt.date(2020, 7, 1)]
    p = params(d={"type": "date", "min": "2020-01-01", "max": _dt.date(2020, 12, 31)})
    frames = {
        "arrow date32": pd.DataFrame({"d": arrow_series(days, pa.date32()), "k": range(5)}),
        "arrow date64": pd.DataFrame({"d": arrow_series(days, pa.date64()), "k": range(5)}),
        "object dates": pd.DataFrame({"d": pd.Series(days, dtype=object), "k": range(5)}),
        "datetime64": pd.DataFrame({"d": pd.to_datetime(pd.Series(days)), "k": range(5)}),
    }
    for what, df in frames.items():
        check = check_batch(df, p)
        r = by_rule(check.report)
        assert counts(check.report) == {("d", "min"): 1, ("d", "max"): 1}, what
        assert r[("d", "min")].expected == ">= 2020-01-01" and r[("d", "max")].expected == "<= 2020-12-31"
        assert r[("d", "min")].examples[0]["d"].startswith("2019-12-31"), what  # ISO text
        assert r[("d", "max")].examples[0] == {"d": r[("d", "max")].examples[0]["d"], "k": 3}
        assert check.bad.tolist() == [True, False, False, True, False]
    text = check_batch(frames["arrow date32"], p).report.format()
    assert "column 'd': rule min >= 2020-01-01: 1 row, e.g. {'d': '2019-12-31', 'k': 0}" in text
    # a value that is no date breaks both bounds (as text does in a number column)
    odd = pd.DataFrame({"d": pd.Series([_dt.date(2020, 5, 5), "soon", None], dtype=object)})
    assert counts(check_batch(odd, p).report) == {("d", "min"): 1, ("d", "max"): 1}


def test_native_timestamp_columns_and_time_zones() -> None:
    utc = pd.Series(pd.to_datetime(["2019-12-31T23:30:00Z", "2020-01-01T00:30:00Z", None], utc=True))
    berlin = utc.dt.tz_convert("Europe/Berlin")  # the same instants: 00:30 and 01:30 local
    frames = {
        "tz-aware numpy": pd.DataFrame({"t": berlin}),
        "arrow ns UTC": pd.DataFrame({"t": arrow_series(list(utc), pa.timestamp("ns", tz="UTC"))}),
        "arrow s Berlin": pd.DataFrame({"t": arrow_series(list(utc), pa.timestamp("s", tz="Europe/Berlin"))}),
    }
    naive_bound = params(t={"type": "timestamp", "min": "2020-01-01T00:00:00"})  # taken as UTC
    berlin_bound = params(t={"type": "timestamp", "min": "2020-01-01T00:00:00", "timezone": "Europe/Berlin"})
    aware_bound = params(t={"type": "timestamp", "min": "2020-01-01T01:00:00+01:00", "max": "2020-01-01T00:30:00Z"})
    for what, df in frames.items():
        r = by_rule(check_batch(df, naive_bound).report)
        assert counts(check_batch(df, naive_bound).report) == {("t", "min"): 1}, what
        assert r[("t", "min")].expected == ">= 2020-01-01T00:00:00"
        ex = pd.Timestamp(r[("t", "min")].examples[0]["t"])
        assert ex == pd.Timestamp("2019-12-31T23:30:00Z"), what  # ISO text with its offset
        assert check_batch(df, berlin_bound).report.ok, what  # midnight Berlin = 23:00 UTC
        # aware bounds compare as instants; the max is inclusive
        assert counts(check_batch(df, aware_bound).report) == {("t", "min"): 1}, what
    # a naive column against an aware bound: its wall times are taken in `timezone` (UTC when unset)
    naive = pd.DataFrame({"t": pd.to_datetime(["2020-01-01T00:30", "2020-01-01T02:00", None])})
    p = params(t={"type": "timestamp", "min": "2020-01-01T01:00:00Z"})
    assert check_batch(naive, p).bad.tolist() == [True, False, False]
    p = params(t={"type": "timestamp", "min": "2020-01-01T01:00:00Z", "timezone": "Asia/Tokyo"})  # 10:00 Tokyo
    assert check_batch(naive, p).bad.tolist() == [True, True, False]
    # nanosecond columns against bounds outside what nanoseconds can hold
    wide = params(t={"type": "timestamp", "min": "0001-01-01", "max": "9999-12-31T23:59:59Z"})
    assert check_batch(naive, wide).report.ok and check_batch(frames["arrow ns UTC"], wide).report.ok


def test_int_text_column() -> None:
    values = [" 7", "-3", "+12", "007", "1.0", "1e3", "x", "", "NA", None, "9223372036854775807"]
    values += ["9223372036854775808", "-9223372036854775808", "99999999999999999999", "-0"]
    df = pd.DataFrame({"n": values, "k": range(len(values))})
    before = df.copy()
    p = params(n={"type": "int"})
    check = check_batch(df, p)
    (v,) = check.report.violations
    assert (v.rule, v.count, v.fatal) == ("type", 5, False)
    assert v.expected == "an integer: optional sign and digits, within int64"
    assert [e["n"] for e in v.examples] == ["1.0", "1e3", "x", "9223372036854775808", "99999999999999999999"]
    assert v.examples[0] == {"n": "1.0", "k": 4}  # the text as it was read
    out = convert_batch(df, p)
    assert str(out["n"].dtype) == "int64[pyarrow]" and out["k"].dtype == df["k"].dtype
    assert out["n"].tolist() == [
        7,
        -3,
        12,
        7,
        pd.NA,
        pd.NA,
        pd.NA,
        pd.NA,
        pd.NA,
        pd.NA,
        2**63 - 1,
        pd.NA,
        -(2**63),
        pd.NA,
        0,
    ]
    pd.testing.assert_frame_equal(df, before)  # the input batch is not changed
    line = check.report.format(max_examples=1).splitlines()[1]
    assert line == (
        "  column 'n': rule type (an integer: optional sign and digits, within int64): 5 rows, e.g. {'n': '1.0', 'k': 4}"
    )


def test_float_and_number_text_columns() -> None:
    values = ["1.5", "-2", "1e-3", ".5", "5.", "inf", "-Infinity", "nan", "1,5", "1_000", "0x10", "abc", " 2.5 ", ""]
    values.append("n.a.")
    df = pd.DataFrame({"f": values, "g": values})
    p = params(f={"type": "float"}, g={"type": "number", "min": 0})
    r = by_rule(check_batch(df, p).report)
    assert counts(check_batch(df, p).report) == {("f", "type"): 5, ("g", "type"): 5, ("g", "min"): 2}
    assert [e["f"] for e in r[("f", "type")].examples] == ["1,5", "1_000", "0x10", "abc", "n.a."]
    assert r[("f", "type")].expected == "a number such as 3, -1.5, 2e-3 or inf"
    assert [e["g"] for e in r[("g", "min")].examples] == ["-2", "-Infinity"]  # min on the parsed numbers
    out = convert_batch(df, p)
    assert str(out["f"].dtype) == str(out["g"].dtype) == "double[pyarrow]"
    got = out["f"].to_numpy(dtype="float64", na_value=np.nan)
    want = [1.5, -2, 1e-3, 0.5, 5.0, np.inf, -np.inf, np.nan, np.nan, np.nan, np.nan, np.nan, 2.5, np.nan, np.nan]
    np.testing.assert_array_equal(got, want)
    assert out["f"].isna().sum() == 7  # "nan" is null, not NaN: it only breaks `nullable`


def test_bool_text_column() -> None:
    values = ["true", "FALSE", "Yes", "no", "1", "0", "y", "2", "", None, " True "]
    df = pd.DataFrame({"b": values})
    p = params(b={"type": "bool", "nullable": False, "allowed": [True]})
    check = check_batch(df, p)
    r = by_rule(check.report)
    assert counts(check.report) == {("b", "type"): 2, ("b", "nullable"): 2, ("b", "allowed"): 3}
    assert [e["b"] for e in r[("b", "type")].examples] == ["y", "2"]
    assert r[("b", "type")].expected == "a bool: true/false, yes/no or 1/0, any case"
    assert check.report.rows_bad == 7
    out = convert_batch(df, p)
    assert str(out["b"].dtype) == "bool[pyarrow]"
    assert out["b"].tolist() == [True, False, True, False, True, False, pd.NA, pd.NA, pd.NA, pd.NA, True]


def test_date_text_column() -> None:
    values = ["2020-01-01", "2024-02-29", "2023-02-29", "2023-13-45", "2020-1-1", "20200101", "2020-01-01T00:00:00"]
    values += ["n.a.", "0000-01-01", " 2021-05-06 ", "", "NA", "2019-12-31"]
    df = pd.DataFrame({"d": values, "k": range(len(values))})
    p = params(d={"type": "date", "min": "2020-01-01", "nullable": False})
    check = check_batch(df, p)
    r = by_rule(check.report)
    assert counts(check.report) == {("d", "type"): 7, ("d", "nullable"): 2, ("d", "min"): 1}
    assert r[("d", "type")].expected == "an ISO date YYYY-MM-DD"
    assert [e["d"] for e in r[("d", "type")].examples] == ["2023-02-29", "2023-13-45", "2020-1-1", "20200101"] + [
        "2020-01-01T00:00:00"
    ]
    assert r[("d", "min")].examples == [{"d": "2019-12-31", "k": 12}]
    line = check.report.format().splitlines()[1]
    assert line.startswith("  column 'd': rule type (an ISO date YYYY-MM-DD): 7 rows, e.g. {'d': '2023-02-29', 'k': 2}")
    out = convert_batch(df, p)
    assert str(out["d"].dtype) == "date32[day][pyarrow]"
    d = _dt.date
    assert out["d"].tolist() == [d(2020, 1, 1), d(2024, 2, 29)] + [pd.NA] * 7 + [d(2021, 5, 6), pd.NA, pd.NA] + [
        d(2019, 12, 31)
    ]


TIMESTAMP_TEXTS = [
    "2020-01-01T10:00:00Z",
    "2020-01-01 10:00:00+02:00",
    "2020-01-01T10:00",
    "2020-01-01",
    "2020-01-01T10:00:00.123456789+0530",
    "2020-01-01t10:00:00,5-01",
    "2020-01-01T24:00",
    "2020-01-01T10:00:00+24:00",
    "2020/01/01 10:00",
    "10:00",
    "2020-01-01T10:60",
    "2020-01-01Z",
    "2023-02-29T00:00:00",
    None,
]


def test_timestamp_text_column_naive_times_in_utc() -> None:
    df = pd.DataFrame({"t": TIMESTAMP_TEXTS})
    p = params(t={"type": "timestamp", "max": "2020-01-01T09:00:00Z"})
    check = check_batch(df, p)
    r = by_rule(check.report)
    assert counts(check.report) == {("t", "type"): 7, ("t", "max"): 3}
    assert r[("t", "type")].expected == (
        "an ISO 8601 timestamp YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|±HH:MM], naive times in UTC"
    )
    assert [e["t"] for e in r[("t", "type")].examples] == TIMESTAMP_TEXTS[6:11]
    assert r[("t", "max")].expected == "<= 2020-01-01T09:00:00+00:00"
    out = convert_batch(df, p)
    assert str(out["t"].dtype) == "timestamp[us, tz=UTC][pyarrow]"
    ts = pd.Timestamp
    assert out["t"].tolist()[:6] == [
        ts("2020-01-01T10:00Z"),
        ts("2020-01-01T08:00Z"),
        ts("2020-01-01T10:00Z"),
        ts("2020-01-01T00:00Z"),
        ts("2020-01-01T04:30:00.123456Z"),  # digits past microseconds are dropped
        ts("2020-01-01T11:00:00.5Z"),
    ]
    assert out["t"].isna().tolist()[6:] == [True] * 8


def test_timestamp_text_column_with_a_time_zone() -> None:
    texts = ["2023-06-01T12:00", "2023-06-01T12:00Z", "2023-10-29T02:30", "2023-03-26T02:30", "2023-06-01", None]
    df = pd.DataFrame({"t": texts})
    p = params(t={"type": "timestamp", "timezone": "Europe/Berlin", "min": "2023-06-01T11:00"})
    check = check_batch(df, p)
    r = by_rule(check.report)
    # 02:30 on 2023-03-26 does not exist in Berlin (clocks went from 02:00 to 03:00)
    assert counts(check.report) == {("t", "type"): 1, ("t", "min"): 1}
    assert r[("t", "type")].examples == [{"t": "2023-03-26T02:30"}]
    assert r[("t", "type")].expected.endswith(", naive times in Europe/Berlin (not skipped by a clock change)")
    # the naive bound is Berlin time too: 09:00 UTC; midnight Berlin on 2023-06-01 is before it
    assert r[("t", "min")].examples == [{"t": "2023-06-01"}]
    got = convert_batch(df, p)["t"].tolist()
    assert got[:3] == [
        pd.Timestamp("2023-06-01T10:00Z"),  # CEST, +02:00
        pd.Timestamp("2023-06-01T12:00Z"),  # an offset wins over the zone
        pd.Timestamp("2023-10-29T00:30Z"),  # 02:30 happened twice: the earlier one (+02:00)
    ]
    assert got[3] is pd.NA and got[4] == pd.Timestamp("2023-05-31T22:00Z") and got[5] is pd.NA


#: Texts for the agreement of the scalar and the vectorized ISO 8601 parsers.
ISO_TEXTS = [t for t in TIMESTAMP_TEXTS if t is not None] + [
    "2024-02-29",
    "2023-02-29",
    "2000-02-29",
    "1900-02-29",
    "2020-04-31",
    "2020-13-01",
    "2020-00-10",
    "0000-01-01",
    "0001-01-01",
    "9999-12-31",
    "2020-1-01",
    "20200101",
    "+2020-01-01",
    "2020-W01-1",
    "\uff12\uff10\uff12\uff10-01-01",  # full-width digits
    " 2020-01-01 ",
    "\u00a02020-01-01\u00a0",  # no-break spaces
    "\t2020-01-01T10:00Z\n",
    "2020-01-01t10:00z",
    "2020-01-01T10",
    "2020-01-01T10:00:00",
    "2020-01-01T24:00:00",
    "2020-01-01T23:59:60",
    "2024-02-29T23:59:59.999999",
    "2020-01-01T10:00:00.1",
    "2020-01-01T10:00:00.123456789",
    "2020-01-01T10:00:00.1234567891",
    "2020-01-01T10:00:00.",
    "2020-01-01T10:00.5",
    "2020-01-01T10:00:00+23:59",
    "2020-01-01T10:00+05:61",
    "2020-01-01T10:00+05",
    "2020-01-01T10:00-0800",
    "2020-01-01T10:00:00+01:30:00",
    "2020-01-01T10:00:00 Z",
    "2020-01-01T10:00:00+5",
    "2020-01-01T-1:00",
    "2020-01-01  10:00",
]


def test_scalar_and_vectorized_iso_parsers_agree() -> None:
    """parse_iso (serving, to_days, min/max) and the vectorized parsing of text columns
    accept the same texts and read the same instants."""
    assert not set(ISO_TEXTS) & set(NULL_TEXTS)
    stamps, stamps_bad = parse_text(pd.Series(ISO_TEXTS), ColumnRule(type="timestamp"))
    dates, dates_bad = parse_text(pd.Series(ISO_TEXTS), ColumnRule(type="date"))
    rows = zip(ISO_TEXTS, stamps.tolist(), stamps_bad.tolist(), dates.tolist(), dates_bad.tolist(), strict=True)
    accepted = 0
    for text, stamp, stamp_bad, date, date_bad in rows:
        scalar = parse_iso(text)
        # a date alone is a date, read as midnight in a timestamp column
        is_date = isinstance(scalar, _dt.date) and not isinstance(scalar, _dt.datetime)
        assert date_bad == (not is_date), text
        assert stamp_bad == (scalar is None), text
        if is_date:
            assert date == scalar, text
            assert bound_value(text, "date") == scalar, text
            scalar = _dt.datetime.combine(scalar, _dt.time())
        if scalar is not None:
            accepted += 1
            assert bound_value(text, "timestamp") == scalar, text
            as_utc = scalar if scalar.tzinfo else scalar.replace(tzinfo=_dt.timezone.utc)
            assert stamp == pd.Timestamp(as_utc), text
    assert 0 < accepted < len(ISO_TEXTS)


def test_null_texts_are_arrows_csv_nulls_and_break_only_nullable() -> None:
    assert list(NULL_TEXTS) == pacsv.ConvertOptions().null_values
    df = pd.DataFrame({c: ["", " ", "NA", "null", "N/A", "#N/A", "nan", None, "5"] for c in ("i", "d")})
    df.loc[8, "d"] = "2020-01-01"
    p = params(i={"type": "int", "min": 6, "unique": True}, d={"type": "date", "max": "2010-01-01"})
    assert counts(check_batch(df, p).report) == {("i", "min"): 1, ("d", "max"): 1}
    p2 = params(i={"type": "int", "nullable": False}, d={"type": "date", "nullable": False})
    assert counts(check_batch(df, p2).report) == {("i", "nullable"): 8, ("d", "nullable"): 8}
    out = convert_batch(df, p2)
    assert out["i"].isna().sum() == 8 and out["d"].isna().sum() == 8


def test_rules_apply_to_parsed_values_and_unique_across_batches() -> None:
    b1 = pd.DataFrame({"id": ["7", "007", "8", "x"], "day": ["2020-01-01", " 2020-01-01 ", "2020-01-02", None]})
    b2 = pd.DataFrame({"id": ["+8", "9", "", "x"], "day": ["2020-01-03", "2020-01-04", "bad", "2020-01-02"]})
    p = params(id={"type": "int", "unique": True, "allowed": [7, 8]}, day={"type": "date", "unique": True})
    dups = {c: duplicate_hashes([key_hashes(b, c, p) for b in (b1, b2)]) for c in ("id", "day")}
    # "7" = "007" and "8" = "+8"; unparsable text is no duplicate (it is already bad)
    c1, c2 = check_batch(b1, p, dup_hashes=dups), check_batch(b2, p, dup_hashes=dups)
    assert counts(c1.report) == {("id", "type"): 1, ("id", "unique"): 3, ("day", "unique"): 3}
    assert counts(c2.report) == {
        ("id", "type"): 1,
        ("id", "unique"): 1,
        ("id", "allowed"): 1,
        ("day", "type"): 1,
        ("day", "unique"): 1,
    }
    assert c1.bad.tolist() == [True, True, True, True] and c2.bad.tolist() == [True, True, True, True]
    mask, report = unique_violations(b1, "id", dups["id"], params=p)
    assert mask.tolist() == [True, True, True, False] and report.violations[0].count == 3
    # without params, key_hashes and unique_violations see the text as it is: only "x" repeats
    raw = duplicate_hashes([key_hashes(b, "id") for b in (b1, b2)])
    assert unique_violations(b1, "id", raw)[0].tolist() == [False, False, False, True]
    # parsed values and native ones of the same type hash alike
    native = arrow_series([_dt.date(2020, 1, 1), None], pa.date32())
    assert series_hashes(native)[0] == key_hashes(b1, "day", p)[0]


def test_conversion_output_schema_is_the_same_for_every_batch() -> None:
    schema = pa.schema(
        [
            ("i", pa.string()),
            ("f", pa.large_string()),
            ("n", pa.string()),
            ("b", pa.string()),
            ("d", pa.string()),
            ("t", pa.string()),
            ("s", pa.string()),
            ("x", pa.float64()),
        ]
    )
    p = params(
        i={"type": "int"},
        f={"type": "float"},
        n={"type": "number"},
        b={"type": "bool"},
        d={"type": "date"},
        t={"type": "timestamp", "timezone": "America/New_York"},
        s={"type": "string"},
        x={"type": "float"},
    )
    text = text_columns(schema, p)
    assert text == ["i", "f", "n", "b", "d", "t"]
    good = {"i": "1", "f": "1.5", "n": "2", "b": "yes", "d": "2020-01-01", "t": "2020-01-01T10:00", "s": "a", "x": 1.0}
    tables = {
        "good": pa.Table.from_pylist([good, good], schema=schema),
        "all null": pa.Table.from_pylist([dict.fromkeys(good)] * 3, schema=schema),
        "all bad": pa.Table.from_pylist([{**dict.fromkeys(good, "?"), "x": None}] * 2, schema=schema),
        "empty": schema.empty_table(),
    }
    want = pa.schema([(c, PARSED_TYPES[p.columns[c].type]) for c in text] + [("s", pa.string()), ("x", pa.float64())])
    for what, table in tables.items():
        # as Ray Data's batches hold them (Arrow-backed), and as plain pandas
        for arrow_backed in (True, False):
            df = table.to_pandas(types_mapper=pd.ArrowDtype if arrow_backed else None)
            check = check_batch(df, p, text=text)
            for part in (convert_batch(df, p, text=text), convert_batch(df[~check.bad], p, text=text)):
                got = pa.Table.from_pandas(part, preserve_index=False).schema.remove_metadata()
                # all columns when Arrow-backed; the parsed ones when not (pandas types the others)
                n = len(want) if arrow_backed else len(text)
                assert got.names == want.names and got.types[:n] == want.types[:n], (what, got)
                # Arrow-backed: Ray Data's pandas -> Arrow keeps the type even when every value is null
                assert all(isinstance(part[c].dtype, pd.ArrowDtype) for c in text), what
    assert counts(check_batch(tables["all bad"].to_pandas(), p, text=text).report) == {(c, "type"): 2 for c in text}
    # nothing to parse: the batch itself comes back
    plain = tables["good"].to_pandas()
    assert convert_batch(plain, p, text=[]) is plain


def test_explicit_text_columns_and_inference() -> None:
    df = pd.DataFrame(
        {
            "str": pd.Series(["1", None], dtype="str"),
            "obj": pd.Series(["1", None], dtype=object),
            "arrow": arrow_series(["1", None], pa.large_string()),
            "nulls": pd.Series([None, None], dtype=object),
            "native": [1, 2],
        }
    )
    p = params(**{c: {"type": "int"} for c in df.columns})
    inferred = convert_batch(df, p)
    assert {c: str(t) for c, t in inferred.dtypes.items()} == {
        "str": "int64[pyarrow]",
        "obj": "int64[pyarrow]",
        "arrow": "int64[pyarrow]",
        "nulls": "object",  # no strings in this batch: not inferred as text
        "native": "int64",
    }
    # the stage names the text columns from the dataset's schema: an all-null batch converts too
    explicit = convert_batch(df, p, text=["nulls"])
    assert str(explicit["nulls"].dtype) == "int64[pyarrow]" and explicit["str"].dtype == df["str"].dtype


def test_quarantine_keeps_the_text_and_data_gets_converted_values(tmp_path) -> None:
    """validate's one pass over a block: the rows that pass, converted, to `data`; the others
    as read to `quarantine`; the types of every other column as they were (Arrow)."""
    import pickle

    import pyarrow.parquet as pq

    from raypipe.stages.data.validate import _part, _split_block
    from raypipe.store.artifacts import ArtifactStore
    from raypipe.store.datasets import StagedDataset

    table = pa.table(
        {
            "d": ["2020-01-01", "2023-13-45", "2020-02-01"],
            "n": ["1", "2", "n.a."],
            "k": [1, 2, 3],
            "c": pa.array(["x", "y", "x"]).dictionary_encode(),
        }
    )
    p = params(d={"type": "date"}, n={"type": "int"})
    text = text_columns(table.schema, p)
    store = ArtifactStore(str(tmp_path))
    data, quarantine = StagedDataset(store), StagedDataset(store)
    row = _split_block(table, p, {}, text, store.root, data.staging, quarantine.staging).to_pylist()[0]
    assert pickle.loads(row["report"]).rows_bad == 2
    good = pq.read_table(tmp_path / data.staging / _part(row, "d_")["file"])
    bad = pq.read_table(tmp_path / quarantine.staging / _part(row, "q_")["file"])
    assert good.to_pydict() == {"d": [_dt.date(2020, 1, 1)], "n": [1], "k": [1], "c": ["x"]}
    assert good.schema.field("d").type == pa.date32() and good.schema.field("n").type == pa.int64()
    assert pa.types.is_dictionary(good.schema.field("c").type)  # untouched columns keep their type
    assert bad.to_pydict() == {"d": ["2023-13-45", "2020-02-01"], "n": ["2", "n.a."], "k": [2, 3], "c": ["y", "x"]}
    ref = data.commit([_part(row, "d_")], table.schema)
    assert ref.schema["num_rows"] == 1 and ref.schema["columns"]["d"] == "date32[day]"
    data.discard()
    quarantine.discard()


def test_csv_with_one_malformed_date_end_to_end_without_ray() -> None:
    raw = b"id,day,score,ok\n1,2024-01-02,0.5,true\n2,2023-13-45,n.a.,false\n3,2024-01-04,1.25,\n4,,2,TRUE\n"
    table = pacsv.read_csv(io.BytesIO(raw))
    assert table.schema.field("day").type == pa.string() and table.schema.field("score").type == pa.string()
    p = params(
        id={"type": "int", "unique": True},
        day={"type": "date", "min": "2024-01-01"},
        score={"type": "float", "min": 0},
        ok={"type": "bool"},
    )
    assert check_schema(table.schema, p) == []
    text = text_columns(table.schema, p)
    assert text == ["day", "score"]  # id and ok were read as int64 and bool
    df = table.to_pandas(types_mapper=pd.ArrowDtype)
    check = check_batch(df, p, text=text)
    assert counts(check.report) == {("day", "type"): 1, ("score", "type"): 1}
    assert check.bad.tolist() == [False, True, False, False] and check.report.rows_bad == 1
    data = convert_batch(df[~check.bad], p, text=text)
    back = pa.Table.from_pandas(data, preserve_index=False)
    assert back.schema.field("day").type == pa.date32() and back.schema.field("score").type == pa.float64()
    assert back.column("day").to_pylist() == [_dt.date(2024, 1, 2), _dt.date(2024, 1, 4), None]


def test_arrow_backed_columns_nan_dates_and_mixed_allowed() -> None:
    df = pd.DataFrame(
        {
            "f": arrow_series([float("nan"), None, 5.0, -1.0], pa.float64()),
            "i": arrow_series([1, 2, None, 3], pa.int64()),
            "t": arrow_series([1, 1, None, 2], pa.timestamp("us", tz="UTC")),
        }
    )
    p = params(f={"min": 0}, i={"allowed": [1, 2.5, "x"]}, t={"type": "timestamp", "unique": True})
    dups = {"t": duplicate_hashes([key_hashes(df, "t", p)])}
    # NaN is null: it breaks neither min nor unique; an int column takes a mixed allowed list
    assert counts(check_batch(df, p, dup_hashes=dups).report) == {
        ("f", "min"): 1,
        ("i", "allowed"): 2,
        ("t", "unique"): 2,
    }
    # Arrow-backed dates and timestamps hash like their numpy forms
    naive = pd.Series(pd.to_datetime(["2024-01-01T00:00", "2024-06-01T10:00"]))
    assert series_hashes(arrow_series(list(naive), pa.timestamp("ms"))).tolist() == series_hashes(naive).tolist()
    aware = naive.dt.tz_localize("Europe/Berlin")
    assert (
        series_hashes(arrow_series(list(aware), pa.timestamp("us", tz="UTC"))).tolist() == series_hashes(aware).tolist()
    )
    days = [_dt.date(2024, 1, 1), None]
    assert (
        series_hashes(arrow_series(days, pa.date32())).tolist() == series_hashes(pd.Series(days, dtype=object)).tolist()
    )


def test_rules_agree_on_ray_data_frames_and_arrow_backed_frames() -> None:
    """validate checks blocks as Arrow-backed frames (no copy); Ray Data's pandas batches
    (dictionary columns as Categoricals) give the same report and the same bad rows."""
    import pandas as pd
    from ray.data.block import BlockAccessor

    rng = np.random.default_rng(5)
    n = 500
    days = [f"2024-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}" for _ in range(n)]
    days[7], days[8], days[9] = "2023-02-30", None, "n.a."
    table = pa.table(
        {
            "id": pa.array(np.where(np.arange(n) == 3, 4, np.arange(n))),
            "amount": pa.array(np.where(rng.random(n) < 0.05, -1.0, rng.random(n) * 100)),
            "segment": pa.array(rng.choice(["retail", "online", "TEST"], n)).dictionary_encode(),
            "signup": pa.array(days, pa.string()),
            "active": pa.array(rng.random(n) < 0.5),
        }
    )
    p = params(
        id={"type": "int", "unique": True},
        amount={"type": "number", "min": 0},
        segment={"type": "category", "allowed": ["retail", "online"]},
        signup={"type": "date", "min": "2024-01-01"},
        active={"type": "bool"},
    )
    text = text_columns(table.schema, p)
    dup = {"id": np.unique(series_hashes(pd.Series([4])))}
    ray_frame = BlockAccessor.for_block(table).to_pandas()
    arrow_frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    a = check_batch(ray_frame, p, dup_hashes=dup, text=text)
    b = check_batch(arrow_frame, p, dup_hashes=dup, text=text)
    assert a.bad.tolist() == b.bad.tolist() and a.bad.sum() > 10
    assert a.report.to_dict() == b.report.to_dict()
    assert {(v.column, v.rule) for v in b.report.violations} >= {
        ("id", "unique"),
        ("amount", "min"),
        ("segment", "allowed"),
        ("signup", "type"),
    }
