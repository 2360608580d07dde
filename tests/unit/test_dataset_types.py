"""Dataset versions of every Arrow type a reader produces (raypipe.store.datasets), without Ray."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import pickle
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raypipe.exceptions import StorageError
from raypipe.store.artifacts import ArtifactStore
from raypipe.store.dataset_hash import column_words, content_digest, dataset_version, row_hashes, schema_text
from raypipe.store.datasets import _write_part, storage_error_message, write_dataset

D = decimal.Decimal


def version(*tables: pa.Table) -> str:
    sums = [content_digest(t) for t in tables]
    rows = sum(t.num_rows for t in tables)
    return dataset_version(schema_text(tables[0].schema), rows, sum(s for s, _ in sums), sum(s for _, s in sums))


def _ext(t: pa.DataType, storage: pa.Array) -> pa.Array:
    return pa.ExtensionArray.from_storage(t, storage)


def _cases() -> dict[str, pa.Array]:
    """One column per type, with nulls and repeated values."""
    ints = [0, 1, -1, 7, None, 7, 100, -100, None, 42]
    day = dt.date(2026, 3, 1)
    instants = [1_767_225_600 + k * 3_601 for k in range(8)] + [None, 1_767_225_600]
    string_values = ["a", "bb", None, "", "é✓", "a", "bb", None, "x" * 40, "0"]
    list_values: list[Any] = [[1, None], None, [], [None], [1], [None, 1], [1, None], [None, None], [2, 3, 4], []]
    struct_values: list[Any] = [
        {"a": 1, "b": "x"},
        None,
        {"a": None, "b": None},
        {"a": 1, "b": None},
        {"a": None, "b": "x"},
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
        None,
    ]
    cases: dict[str, pa.Array] = {
        "null": pa.nulls(6),
        "bool": pa.array([True, False, None, True, False, None, True]),
        "float16": pa.array(np.array([1.5, -0.0, 0.0, np.nan, -np.nan, 2.0, 65504.0], np.float16)),
        "float32": pa.array([1.5, -0.0, 0.0, float("nan"), None, 3.25, 1e30], pa.float32()),
        "float64": pa.array([1.5, -0.0, 0.0, float("nan"), None, -float("nan"), 1e-300, math.inf], pa.float64()),
        "uint64": pa.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, None, 2**63, 12345], pa.uint64()),
        "date32": pa.array([day + dt.timedelta(days=k) for k in (0, 1, -1, 400, 0, -30_000)] + [None], pa.date32()),
        "date64": pa.array([(20_500 + k) * 86_400_000 for k in (0, 1, -1, 3, 0)] + [None], pa.date64()),
        "decimal32": pa.array([D("1.10"), D("-0.05"), None, D("0.00"), D("1.10"), D("999.99")], pa.decimal32(5, 2)),
        "decimal64": pa.array([D("1.100000000"), D("-3E-9"), None, D("0E-9")], pa.decimal64(18, 9)),
        "decimal128": pa.array(
            [D("1.10"), D("-0.05"), None, D("0.00"), D("1.10"), D("123456789.01")], pa.decimal128(38, 2)
        ),
        "decimal128_neg_scale": pa.array([D("1.23E+4"), D("0E+2"), None, D("-9.9E+5")], pa.decimal128(5, -2)),
        "decimal256": pa.array([D("1." + "0" * 39 + "1"), D("-1E-40"), None, D("0E-40")], pa.decimal256(76, 40)),
        "string": pa.array(string_values, pa.string()),
        "large_string": pa.array(string_values, pa.large_string()),
        "string_view": pa.array(string_values, pa.string_view()),
        "binary": pa.array([b"a", b"\x00\xff", None, b"", b"a"], pa.binary()),
        "large_binary": pa.array([b"a", b"\x00\xff", None, b"", b"a"], pa.large_binary()),
        "binary_view": pa.array([b"a", b"\x00\xff", None, b"", b"a"], pa.binary_view()),
        "fixed_size_binary": pa.array([b"ab", b"\x00\x00", None, b"ab", b"zz"], pa.binary(2)),
        "dictionary_string": pa.array(string_values, pa.string()).dictionary_encode(),
        "dictionary_int8_string": pa.DictionaryArray.from_arrays(
            pa.array([0, 1, None, 2, 0, 1], pa.int8()), pa.array(["a", None, "c"])
        ),
        "dictionary_large_string": pa.array(string_values, pa.large_string()).dictionary_encode(),
        "dictionary_int": pa.array(ints, pa.int64()).dictionary_encode(),
        "dictionary_date": pa.array([day, None, day, dt.date(2000, 1, 1)]).dictionary_encode(),
        "list": pa.array(list_values, pa.list_(pa.int64())),
        "large_list": pa.array(list_values, pa.large_list(pa.int64())),
        "list_view": pa.array(list_values, pa.list_view(pa.int64())),
        "large_list_view": pa.array(list_values, pa.large_list_view(pa.int64())),
        "fixed_size_list": pa.array(
            [[1.0, None], None, [None, 1.0], [1.0, None], [None, None], [0.0, -0.0]], pa.list_(pa.float64(), 2)
        ),
        "list_of_strings": pa.array(
            [["a", None], None, [], [None], ["a", "b"], ["b", "a"], ["a", None]], pa.list_(pa.string())
        ),
        "list_of_lists": pa.array(
            [[[1], None], None, [], [None], [[]], [[1]], [[1], None], [None, [1]]], pa.list_(pa.list_(pa.int64()))
        ),
        "struct": pa.array(struct_values, pa.struct([("a", pa.int64()), ("b", pa.string())])),
        "struct_nested": pa.array(
            [
                {"l": [1], "s": {"x": 1.5}},
                None,
                {"l": None, "s": None},
                {"l": [], "s": {"x": None}},
                {"l": [1], "s": {"x": 1.5}},
            ],
            pa.struct([("l", pa.list_(pa.int32())), ("s", pa.struct([("x", pa.float64())]))]),
        ),
        "list_of_structs": pa.array(
            [[{"a": 1}], [None], [{"a": None}], None, [], [{"a": 1}, None], [{"a": 1}]],
            pa.list_(pa.struct([("a", pa.int64())])),
        ),
        "map": pa.array(
            [[("k", 1)], None, [], [("k", None)], [("k", 1), ("j", 2)], [("j", 2), ("k", 1)], [("k", 1)]],
            pa.map_(pa.string(), pa.int64()),
        ),
        "run_end_encoded": pc.run_end_encode(pa.array([1, 1, None, None, 2, 1], pa.int64())),
        "uuid": _ext(
            pa.uuid(), pa.array([b"0123456789abcdef", None, b"fedcba9876543210", b"0123456789abcdef"], pa.binary(16))
        ),
        "json": _ext(pa.json_(), pa.array(['{"a": 1}', None, "[]", '{"a": 1}'])),
        "bool8": _ext(pa.bool8(), pa.array([1, 0, None, 1, 0], pa.int8())),
        "fixed_shape_tensor": _ext(
            pa.fixed_shape_tensor(pa.float32(), (2, 2)),
            pa.array([[1, 2, 3, 4], None, [1, 2, 3, 5], [1, 2, 3, 4]], pa.list_(pa.float32(), 4)),
        ),
    }
    for width in (8, 16, 32, 64):
        cases[f"int{width}"] = pa.array(
            ints + [2 ** (width - 1) - 1, -(2 ** (width - 1))], getattr(pa, f"int{width}")()
        )
        if width < 64:
            cases[f"uint{width}"] = pa.array(
                [0, 1, None, 1, 2**width - 1, 2 ** (width - 1)], getattr(pa, f"uint{width}")()
            )
    for unit in ("s", "ms", "us", "ns"):
        scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
        values = [None if v is None else v * scale + (scale > 1) for v in instants]
        for tz in (None, "UTC", "America/New_York"):
            cases[f"timestamp_{unit}_{tz}"] = pa.array(values, pa.timestamp(unit, tz))
        cases[f"duration_{unit}"] = pa.array([0, 1, -1, None, 86_400 * scale, 1], pa.duration(unit))
    cases["time32_s"] = pa.array([0, 1, 86_399, None, 1], pa.time32("s"))
    cases["time32_ms"] = pa.array([0, 1, 86_399_999, None, 1], pa.time32("ms"))
    cases["time64_us"] = pa.array([0, 1, 86_399_999_999, None, 1], pa.time64("us"))
    cases["time64_ns"] = pa.array([0, 1, 86_399_999_999_999, None, 1], pa.time64("ns"))
    return cases


CASES = _cases()
#: What parquet (pq.write_table + pq.read_table, as _write_part and _read_parts do) reads back
#: instead: the values are the same, the type (and so the version) is not.
PARQUET_CHANGES = {
    "date64": "date32[day]",  # parquet has one DATE type (days)
    "timestamp_s_None": "timestamp[ms]",  # parquet has no seconds unit
    "timestamp_s_UTC": "timestamp[ms, tz=UTC]",
    "timestamp_s_America/New_York": "timestamp[ms, tz=America/New_York]",
    "time32_s": "time32[ms]",
    "dictionary_large_string": "dictionary<values=string, indices=int32, ordered=0>",
}
#: Columns parquet cannot store at all (the write fails; in memory they hash): run-end
#: encoding, a negative decimal scale, a dictionary with a null among its values.
NOT_PARQUET = {"run_end_encoded", "decimal128_neg_scale", "dictionary_int8_string"}


def canonical(value: Any) -> Any:
    """A value for comparison: NaN equal to NaN (-0.0 == 0.0 already), containers recursively."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list | tuple):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, canonical(v)) for k, v in value.items())
    if isinstance(value, np.floating):
        return canonical(float(value))
    return value


def take(t: pa.Table, index: Any) -> pa.Table:
    """``t.take(index)``, also for types arrow cannot take (views): one chunk per row then."""
    try:
        return t.take(pa.array(index, pa.int64()))
    except pa.ArrowNotImplementedError:
        return pa.concat_tables([t.slice(int(i), 1) for i in index])


def chunked(t: pa.Table, *cuts: int) -> pa.Table:
    """``t`` with every column in several chunks (cut at ``cuts``)."""
    bounds = [0, *cuts, t.num_rows]
    return pa.concat_tables([t.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)])


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_rows_in_any_order_chunking_or_split_have_one_version(name: str) -> None:
    a = CASES[name]
    t = pa.table({"k": pa.array(np.arange(len(a)) % 3, pa.int64()), name: a})
    perm = np.random.default_rng(len(name)).permutation(t.num_rows)
    shuffled = take(t, perm)
    n = t.num_rows
    assert len(chunked(shuffled, 1, n // 2).column(1).chunks) >= 3
    assert (
        version(t)
        == version(shuffled)
        == version(t.slice(0, 2), t.slice(2, n // 2), t.slice(2 + n // 2))
        == version(chunked(shuffled, 1, n // 2))
        == version(chunked(shuffled, n // 2), t.slice(0, 0))
    )
    assert sorted(row_hashes(t).tolist()) == sorted(row_hashes(chunked(shuffled, 1, n // 2)).tolist())


@pytest.mark.parametrize("name", sorted(CASES))
def test_words_are_equal_exactly_when_values_are(name: str) -> None:
    """Within a column: equal values (NaN = NaN, -0.0 = 0.0) give one word, different ones
    (a null included) different words; so changing one value changes the version."""
    a = CASES[name]
    words = column_words(a, name).tolist()
    assert len(words) == len(a)
    values = [canonical(v) for v in a.to_pylist()]
    if pa.types.is_time64(a.type):  # datetime.time has microseconds
        values = a.cast(pa.int64()).to_pylist()
    if name == "bool8":  # any non-zero int8 is true
        values = [None if v is None else bool(v) for v in values]
    for i in range(len(a)):
        for j in range(len(a)):
            assert (words[i] == words[j]) == (values[i] == values[j]), (i, j, values[i], values[j])
    t = pa.table({name: a})
    for i, j in [(i, j) for i in range(len(a)) for j in range(len(a)) if values[i] != values[j]][:5]:
        index = np.arange(len(a))
        index[i] = j  # row i now holds row j's value
        assert version(take(t, index)) != version(t)


@pytest.mark.parametrize("name", sorted(CASES))
def test_words_do_not_depend_on_slices_or_chunks(name: str) -> None:
    a = CASES[name]
    whole = column_words(a, name)
    for k in range(1, len(a)):
        assert column_words(a.slice(k), name).tolist() == whole[k:].tolist()
        assert column_words(pa.chunked_array([a.slice(0, k), a.slice(k)]), name).tolist() == whole.tolist()
    assert column_words(pa.chunked_array([], a.type), name).tolist() == []


def test_types_that_hashed_before_keep_their_plain_words() -> None:
    """An encoding hashes as its values: large and view strings/binaries, dictionaries
    (of strings as before, and now of anything), run-end encoding, list views."""
    words = {n: column_words(a, n).tolist() for n, a in CASES.items()}
    assert words["string"] == words["large_string"] == words["string_view"] == words["dictionary_string"]
    assert words["binary"] == words["large_binary"] == words["binary_view"]
    assert words["list"] == words["large_list"] == words["list_view"] == words["large_list_view"]
    assert words["dictionary_int"] == words["int64"][: len(words["dictionary_int"])]
    assert words["run_end_encoded"] == column_words(pa.array([1, 1, None, None, 2, 1])).tolist()
    assert words["dictionary_date"] == column_words(CASES["dictionary_date"].cast(pa.date32())).tolist()
    # numbers are their bits: integers and temporal values as int64, uint64 as it is
    assert words["uint64"][3:5] == [2**63, 2**64 - 1]
    assert words["int8"][-1] == 2**64 - 128
    assert words["date32"][:3] == [20_513, 20_514, 20_512]
    assert words["time32_s"][:3] == [0, 1, 86_399]


def test_uint64_full_range() -> None:
    values = [0, 1, 2**32, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1]
    a = pa.array(values + [None], pa.uint64())
    words = column_words(a, "u")
    assert words[:-1].tolist() == values
    assert len(set(words.tolist())) == len(values) + 1
    t = pa.table({"u": a})
    assert version(t) != version(pa.table({"u": pa.array([*values[:-1], 2**63, None], pa.uint64())}))
    assert version(t) == version(t.slice(4), t.slice(0, 4))


def test_nulls_at_each_level_of_lists_and_structs_differ() -> None:
    lists = pa.array([None, [], [None], [None, None], [1], [1, None], [None, 1], [0]], pa.list_(pa.int64()))
    assert len(set(column_words(lists).tolist())) == len(lists)
    nested = pa.array([None, [], [None], [[]], [[None]], [[], []], [[None], None]], pa.list_(pa.list_(pa.int64())))
    assert len(set(column_words(nested).tolist())) == len(nested)
    struct_type = pa.struct([("a", pa.int64()), ("b", pa.struct([("c", pa.string())]))])
    structs = pa.array(
        [None, {"a": None, "b": None}, {"a": None, "b": {"c": None}}, {"a": 0, "b": None}, {"a": None, "b": {"c": ""}}],
        struct_type,
    )
    assert len(set(column_words(structs).tolist())) == len(structs)
    # a struct's words depend on its field names and order, not only on the values
    ab = pa.array([{"a": 1, "b": 2}], pa.struct([("a", pa.int64()), ("b", pa.int64())]))
    ba = pa.array([{"b": 1, "a": 2}], pa.struct([("b", pa.int64()), ("a", pa.int64())]))
    ac = pa.array([{"a": 1, "c": 2}], pa.struct([("a", pa.int64()), ("c", pa.int64())]))
    assert len({int(column_words(x)[0]) for x in (ab, ba, ac)}) == 3
    # a list's elements are ordered; a map's entries too (arrow keeps them as given)
    assert column_words(pa.array([[1, 2]]))[0] != column_words(pa.array([[2, 1]]))[0]


def test_tensor_columns_of_ray_data_hash_by_shape_and_values() -> None:
    ext = pytest.importorskip("ray.data.extensions")
    fixed = ext.ArrowTensorArray.from_numpy(np.arange(12.0).reshape(3, 2, 2))
    words = column_words(fixed, "t").tolist()
    assert len(set(words)) == 3
    again = ext.ArrowTensorArray.from_numpy(np.arange(12.0).reshape(3, 2, 2)[[2, 0, 1]])
    assert sorted(column_words(again).tolist()) == sorted(words)
    variable = ext.ArrowVariableShapedTensorArray.from_numpy([np.arange(3.0), np.arange(4.0), np.arange(3.0)])
    words = column_words(variable, "t").tolist()
    assert words[0] == words[2] != words[1]
    t = pa.table({"t": fixed})
    back = pq.read_table(_parquet(t))
    assert back.schema == t.schema and version(back) == version(t)


def test_python_objects_of_ray_data_hash_by_their_pickles() -> None:
    ext = pytest.importorskip("ray.data.extensions")
    objects = ext.ArrowPythonObjectArray.from_objects([{"a": 1}, dt.timedelta(days=1), {"a": 1}, {"a": 2}])
    words = column_words(objects, "o").tolist()
    assert words[0] == words[2] and len(set(words)) == 3
    t = pa.table({"o": objects})
    assert version(t) == version(t.slice(2), t.slice(0, 2))
    assert version(pq.read_table(_parquet(t))) == version(t)


# ----------------------------------------------------------------------------- schema, parquet
def test_schema_text_of_flat_types_is_arrow_s_and_large_forms_count_as_small() -> None:
    flat = pa.schema(
        [("i", pa.int64()), ("t", pa.timestamp("ns", "UTC")), ("d", pa.dictionary(pa.int8(), pa.string()))]
    )
    assert (
        schema_text(flat)
        == '[["i", "int64"], ["t", "timestamp[ns, tz=UTC]"], ["d", "dictionary<values=string, indices=int8, ordered=0>"]]'
    )
    small = pa.schema(
        [("s", pa.string()), ("b", pa.binary()), ("l", pa.list_(pa.string())), ("m", pa.map_(pa.string(), pa.binary()))]
    )
    large = pa.schema(
        [
            ("s", pa.string_view()),
            ("b", pa.large_binary()),
            ("l", pa.large_list(pa.field("element", pa.large_string(), nullable=False))),
            ("m", pa.map_(pa.large_string(), pa.binary_view())),
        ]
    )
    assert schema_text(large) == schema_text(small)
    assert schema_text(pa.schema([("l", pa.list_view(pa.string_view()))])) == schema_text(
        pa.schema([("l", pa.list_(pa.string()))])
    )
    assert schema_text(pa.schema([("d", pa.dictionary(pa.int8(), pa.int64()))])) == schema_text(
        pa.schema([("d", pa.int64())])
    )
    struct = pa.schema([("s", pa.struct([("a", pa.int64()), ("b", pa.large_string())]))])
    assert schema_text(struct) == '[["s", "struct<\\"a\\": int64, \\"b\\": string>"]]'


def _parquet(t: pa.Table) -> pa.BufferReader:
    sink = pa.BufferOutputStream()
    plain = [f.name for f in t.schema if not pa.types.is_floating(f.type)]  # as _write_part
    pq.write_table(t, sink, use_dictionary=plain)
    return pa.BufferReader(sink.getvalue())


@pytest.mark.parametrize("name", sorted(set(CASES) - NOT_PARQUET))
def test_parquet_round_trip_keeps_the_version(name: str) -> None:
    """Re-storing a dataset read back from its parquet files gives the same version,
    except where parquet reads back another type (``PARQUET_CHANGES``): then the values
    are equal, the version differs once, and a second round trip keeps it."""
    t = pa.table({name: CASES[name]})
    back = pq.read_table(_parquet(t))
    assert [canonical(v) for v in back.column(0).to_pylist()] == [canonical(v) for v in t.column(0).to_pylist()]
    if name in PARQUET_CHANGES:
        assert str(back.schema.field(0).type) == PARQUET_CHANGES[name]
        assert version(back) != version(t)
        again = pq.read_table(_parquet(back))
        assert again.schema == back.schema and version(again) == version(back)
    else:
        assert version(back) == version(t), (t.schema.field(0).type, back.schema.field(0).type)


def test_write_part_round_trip(tmp_path: Path) -> None:
    """``_write_part`` itself on one table of (almost) every type: what it wrote,
    read back and written again, has the same digest and schema text."""
    store = ArtifactStore(str(tmp_path))
    names = sorted(set(CASES) - NOT_PARQUET - set(PARQUET_CHANGES) - {"null"})
    n = min(len(CASES[c]) for c in names)
    t = pa.table({c: CASES[c].slice(0, n) for c in names})
    store.fs.create_dir(store._path("tmp/a"), recursive=True)
    store.fs.create_dir(store._path("tmp/b"), recursive=True)
    first = _write_part(t, str(tmp_path), "tmp/a").to_pylist()[0]
    back = pq.read_table(store._path(f"tmp/a/{first['file']}"))
    second = _write_part(back, str(tmp_path), "tmp/b").to_pylist()[0]
    assert {k: first[k] for k in ("rows", "s1", "s2", "schema")} == {
        k: second[k] for k in ("rows", "s1", "s2", "schema")
    }


CSV = b"""id,day,at,at_tz,clock,price,flag,name,empty
1,2026-01-31,2026-01-31 10:00:00,2026-01-31T10:00:00Z,12:34:56,1.50,true,a,
2,,2026-02-01 11:30:15.250,2026-02-01T11:30:15+02:00,23:59:59,,false,,
3,1999-12-31,,,00:00:00,-0.0,,b,
"""
JSON = b"""{"id": 1, "tags": ["a", null], "point": {"x": 1.5, "y": null}, "nested": [[1], []], "n": null}
{"id": 2, "tags": null, "point": null, "nested": null, "n": null}
{"id": 3, "tags": [], "point": {"x": null, "y": 2}, "nested": [null, [2, 3]], "n": null}
"""


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_what_arrow_s_readers_produce_is_versioned_and_stored(tmp_path: Path, fmt: str) -> None:
    """``data.read`` of CSV (ISO dates: date32; times: time32[s]...) and JSON lines
    (lists, structs, null columns): ``_write_part`` versions and writes every block;
    what it wrote, stored again, has the same version but where parquet changes a type."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    t = pacsv.read_csv(pa.BufferReader(CSV)) if fmt == "csv" else pajson.read_json(pa.BufferReader(JSON))
    store = ArtifactStore(str(tmp_path))
    for staging in ("tmp/a", "tmp/b"):
        store.fs.create_dir(store._path(staging), recursive=True)
    first = _write_part(t, str(tmp_path), "tmp/a").to_pylist()[0]
    back = pq.read_table(store._path(f"tmp/a/{first['file']}"))
    changed = {"at_tz": "timestamp[ms, tz=UTC]", "clock": "time32[ms]"} if fmt == "csv" else {}
    assert {f.name: str(f.type) for f in back.schema if f.type != t.schema.field(f.name).type} == changed
    assert back.to_pylist() == t.to_pylist()
    same = back.drop_columns(list(changed))
    second = _write_part(same, str(tmp_path), "tmp/b").to_pylist()[0]
    assert version(same) == version(t.drop_columns(list(changed)))
    assert second["rows"] == first["rows"] == t.num_rows


# ----------------------------------------------------------------------------- errors
class _Geometry(pa.ExtensionType):
    def __init__(self) -> None:
        super().__init__(pa.binary(), "test.geometry")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _Geometry:
        return cls()


def _geometry() -> pa.Array:
    return _ext(_Geometry(), pa.array([b"\x01", None]))


def test_a_type_without_a_canonical_encoding_is_an_error_naming_column_and_type() -> None:
    t = pa.table({"id": [1, 2], "geom": _geometry()})
    with pytest.raises(StorageError) as e:
        row_hashes(t)
    assert str(e.value).startswith(
        "column 'geom': type 'extension<test.geometry<_Geometry>>' cannot be versioned; cast"
    )
    nested = pa.table({"shapes": pa.ListArray.from_arrays(pa.array([0, 1, 2]), _geometry())})
    with pytest.raises(
        StorageError,
        match=r"column 'shapes': type 'list<item: extension<test\.geometry<_Geometry>>>' cannot be versioned \(its 'extension<test\.",
    ):
        content_digest(nested)
    union = pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])])
    with pytest.raises(
        StorageError, match=r"column 'u': type 'sparse_union<0: int64=0, 1: string=1>' cannot be versioned"
    ):
        row_hashes(pa.table({"u": union}))
    interval = pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())
    with pytest.raises(StorageError, match="column 'every': type 'month_day_nano_interval' cannot be versioned"):
        column_words(interval, "every")
    with pytest.raises(StorageError, match="^a column: type"):
        column_words(interval)


def test_write_part_fails_before_writing_a_file(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.fs.create_dir(store._path("tmp/a"), recursive=True)
    with pytest.raises(StorageError, match="column 'geom'"):
        _write_part(pa.table({"geom": _geometry()}), str(tmp_path), "tmp/a")
    assert os.listdir(tmp_path / "tmp" / "a") == []


def _raised(fn: Callable[[], None]) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("did not raise")


MESSAGE = "column 'geom': type 'extension<test.geometry>' cannot be versioned; cast it to a supported type"


def _udf() -> None:
    raise StorageError(MESSAGE)


def _divide() -> None:
    raise ZeroDivisionError("division by zero")


def _ray_data_task() -> None:
    """What Ray Data's ``_wrapped_udf_map_fn`` does with an exception of the function."""
    from ray.exceptions import UserCodeException

    try:
        _udf()
    except Exception as e:
        raise UserCodeException("UDF failed to process a data block.") from e


def _on_the_driver(fn: Callable[[], None]) -> BaseException:
    """The exception ``fn`` raises in a task, as ``ray.get`` raises it on the driver: a
    ``RayTaskError`` of the pickled exception (its ``__cause__`` lost), with the
    worker's traceback text, made an instance of the cause's class too."""
    from ray.exceptions import RayTaskError

    e = _raised(fn)
    text = "".join(traceback.format_exception(e))
    cause = pickle.loads(pickle.dumps(e))
    assert cause.__cause__ is None  # lost in transit: only the text keeps the StorageError
    err = RayTaskError("MapBatches(_write_part)", text, cause, proctitle="ray::MapBatches", pid=1, ip="127.0.0.1")
    return err.as_instanceof_cause()


def test_storage_error_message_finds_the_error_in_ray_s_wrappings() -> None:
    pytest.importorskip("ray.exceptions")
    from ray.data.exceptions import SystemException

    assert storage_error_message(StorageError(MESSAGE)) == MESSAGE
    in_process = _raised(_ray_data_task)
    assert storage_error_message(in_process) == MESSAGE  # __cause__
    driver = _on_the_driver(_ray_data_task)
    assert "RayTaskError(UserCodeException)" in type(driver).__name__
    assert MESSAGE in str(driver) and str(driver) != MESSAGE
    assert storage_error_message(driver) == MESSAGE  # the traceback's text
    original = _on_the_driver(_udf)  # DataContext.raise_original_map_exception: RayTaskError(StorageError)
    assert isinstance(original, StorageError) and str(original) != MESSAGE
    assert storage_error_message(original) == MESSAGE  # .cause

    def system() -> None:  # Ray Data's omit_traceback_stdout on a non-user error
        raise driver from SystemException()

    assert storage_error_message(_raised(system)) == MESSAGE

    def context() -> None:  # raised while handling it
        try:
            raise original
        except StorageError:
            raise RuntimeError("cleanup failed") from None

    assert storage_error_message(_raised(context)) == MESSAGE
    other = _on_the_driver(_divide)
    assert storage_error_message(_raised(_divide)) is None
    assert storage_error_message(other) is None
    # a cycle of causes ends
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert storage_error_message(a) is None


class _FailingDataset:
    """Stands in for a Ray Dataset whose ``_write_part`` tasks raised ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def map_batches(self, *args: Any, **kwargs: Any) -> _FailingDataset:
        return self

    def take_all(self) -> list[dict[str, Any]]:
        raise self.error


def test_write_dataset_reraises_a_plain_storage_error_naming_file_column_and_type(tmp_path: Path) -> None:
    pytest.importorskip("ray.exceptions")
    store = ArtifactStore(str(tmp_path))
    for error in (_on_the_driver(_ray_data_task), _on_the_driver(_udf), StorageError(MESSAGE)):
        with pytest.raises(StorageError) as e:
            write_dataset(store, _FailingDataset(error), what="data/shapes.parquet")
        assert type(e.value) is StorageError
        assert str(e.value) == f"data/shapes.parquet: {MESSAGE}"
        assert e.value.__cause__ is None and e.value.__suppress_context__
    other = _on_the_driver(_divide)
    assert _raised(lambda: write_dataset(store, _FailingDataset(other))) is other
    assert os.listdir(tmp_path / "tmp") == []  # the staging folder is gone


# ----------------------------------------------------------------------------- properties
_INT64 = st.integers(-(2**63), 2**63 - 1)
_VALUES: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "int64": (pa.int64(), _INT64),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "float32": (pa.float32(), st.floats(width=32)),
    "string": (pa.string(), st.text(max_size=5)),
    "binary": (pa.binary(), st.binary(max_size=4)),
    "date32": (pa.date32(), st.dates()),
    "timestamp": (pa.timestamp("us", "Asia/Tokyo"), st.datetimes(timezones=st.just(dt.UTC))),
    "decimal": (pa.decimal128(12, 3), st.decimals(min_value=-(10**8), max_value=10**8, places=3, allow_nan=False)),
    "list": (pa.list_(pa.int8()), st.lists(st.none() | st.integers(-3, 3), max_size=3)),
    "struct": (
        pa.struct([("a", pa.int8()), ("b", pa.list_(pa.string()))]),
        st.fixed_dictionaries(
            {
                "a": st.none() | st.integers(-2, 2),
                "b": st.none() | st.lists(st.none() | st.sampled_from("xy"), max_size=2),
            }
        ),
    ),
}


@st.composite
def _columns(draw: st.DrawFn) -> tuple[str, pa.Array]:
    name = draw(st.sampled_from(sorted(_VALUES)))
    t, values = _VALUES[name]
    return name, pa.array(draw(st.lists(st.none() | values, min_size=1, max_size=12)), t)


@settings(derandomize=True, max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(column=_columns(), data=st.data())
def test_property_version_is_free_of_order_and_split_and_words_match_values(
    column: tuple[str, pa.Array], data: st.DataObject
) -> None:
    name, a = column
    t = pa.table({name: a})
    perm = data.draw(st.permutations(range(len(a))))
    cut = data.draw(st.integers(0, len(a)))
    shuffled = take(t, perm)
    assert version(t) == version(shuffled.slice(0, cut), shuffled.slice(cut)) == version(chunked(shuffled, cut))
    words = column_words(a, name).tolist()
    values = [canonical(v) for v in a.to_pylist()]
    for i in range(len(a)):
        for j in range(i):
            assert (words[i] == words[j]) == (values[i] == values[j])


# ----------------------------------------------------------------------------- timing, by hand
@pytest.mark.skipif(not os.environ.get("RAYPIPE_BENCH"), reason="timing: RAYPIPE_BENCH=1 pytest -s ...")
def test_hashing_a_million_mixed_rows_by_hand() -> None:
    n = 1_000_000
    rng = np.random.default_rng(0)
    categories = np.array(["alpha", "beta", "gamma", "delta", "epsilon", None], dtype=object)
    t = pa.table(
        {
            "i": pa.array(rng.integers(0, 10**9, n)),
            "x": rng.normal(size=n),
            "category": pa.array(categories[rng.integers(0, 6, n)], pa.string()),
            "day": pa.array(rng.integers(0, 30_000, n).astype("datetime64[D]")),
            "at": pa.array(rng.integers(0, 2**60, n)).cast(pa.timestamp("ns", "UTC")),
        }
    )

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) * 1000

    for name, col in zip(t.column_names, t.columns, strict=True):
        took = best(lambda col=col, name=name: column_words(col, name))
        print(f"{name:9} {col.type!s:22} {took:7.1f} ms")
    print(f"row_hashes, 1M rows: {best(lambda: row_hashes(t)):7.1f} ms")


def test_mostly_distinct_text_hashes_the_same_as_repetitive_text() -> None:
    """Long, mostly distinct text columns skip the dictionary encoding: same words."""
    from raypipe.store.dataset_hash import DISTINCT_SAMPLE as _SAMPLE

    n = 3 * _SAMPLE
    distinct = pa.array([f"note {i} about fees" if i % 97 else None for i in range(n)])
    small = distinct.slice(0, 2 * _SAMPLE)  # not long enough for the direct path
    assert column_words(pa.chunked_array([distinct]))[: 2 * _SAMPLE].tolist() == column_words(
        pa.chunked_array([small])
    ).tolist()
