"""Declared schema validation (raypipe.stages.data.rules): pure pandas/pyarrow, no Ray."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from raypipe.stages.data.rules import (
    NULL_HASH,
    ColumnRule,
    ValidateParams,
    ValidationReport,
    Violation,
    check_batch,
    check_row_count,
    check_schema,
    duplicate_hashes,
    key_hashes,
    merge_reports,
    series_hashes,
    unique_violations,
)


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
        ({"columns": {"a": {"type": "string", "min": 0}}}, "numeric column"),
        ({"columns": {"a": {"type": "bool", "max": 1}}}, "numeric column"),
        ({"columns": {"a": {"type": "category", "min": 1}}}, "numeric column"),
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
            ("score", pa.string()),
            ("country", pa.dictionary(pa.int8(), pa.string())),
            ("when", pa.date32()),
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
                "when": {"type": "timestamp"},
                "flag": {"type": "bool"},
                "empty": {"type": "int"},
                "missing": {"type": "float"},
                "anything": {},
            },
            "extra_columns": "forbid",
        }
    )
    got = {(v.column, v.rule): v for v in check_schema(schema, p)}
    assert set(got) == {("score", "type"), ("missing", "missing"), ("anything", "missing"), ("note", "extra")}
    assert all(v.fatal for v in got.values())
    assert got[("score", "type")].expected == "a float column, got string"
    assert got[("missing", "missing")].expected == "a float column"
    p.extra_columns = "allow"
    assert ("note", "extra") not in {(v.column, v.rule) for v in check_schema(schema, p)}


@pytest.mark.parametrize(
    ("declared", "ok", "bad"),
    [
        ("int", [pa.int8(), pa.uint64()], [pa.float32(), pa.string(), pa.bool_()]),
        ("float", [pa.float16(), pa.float64()], [pa.int64(), pa.decimal128(5, 2)]),
        ("number", [pa.int64(), pa.float32()], [pa.string(), pa.bool_()]),
        ("string", [pa.string(), pa.large_string(), pa.string_view()], [pa.dictionary(pa.int8(), pa.string())]),
        ("bool", [pa.bool_()], [pa.int8()]),
        ("timestamp", [pa.timestamp("us"), pa.timestamp("ns", tz="UTC"), pa.date64()], [pa.string(), pa.int64()]),
        ("category", [pa.string(), pa.dictionary(pa.int32(), pa.large_string())], [pa.int64()]),
    ],
)
def test_type_mapping(declared: str, ok: list[pa.DataType], bad: list[pa.DataType]) -> None:
    p = params(c={"type": declared})
    for t in ok:
        assert check_schema(pa.schema([("c", t)]), p) == [], t
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
