"""Dataset versions: a hash of the schema and the multiset of rows (raypipe.store.datasets)."""

from __future__ import annotations

import decimal

import numpy as np
import pandas as pd
import pyarrow as pa

from raypipe.store.dataset_hash import column_words, content_digest, dataset_version, row_hashes, schema_text


def version(*tables: pa.Table) -> str:
    sums = [content_digest(t) for t in tables]
    rows = sum(t.num_rows for t in tables)
    return dataset_version(schema_text(tables[0].schema), rows, sum(s for s, _ in sums), sum(s for _, s in sums))


def table(n: int = 1000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "i": pa.array(rng.integers(0, 50, n), pa.int64()),
            "x": rng.normal(size=n),
            "s": pa.array(rng.choice(["a", "bb", None], n).tolist(), pa.string()),
            "t": pa.array(pd.date_range("2026-01-01", periods=n, freq="min")),
        }
    )


def test_same_rows_in_any_order_or_split_have_one_version() -> None:
    t = table()
    perm = np.random.default_rng(1).permutation(t.num_rows)
    shuffled = t.take(pa.array(perm))
    assert version(t) == version(shuffled) == version(t.slice(0, 300), t.slice(300, 250), t.slice(550))


def test_one_changed_added_or_removed_value_changes_the_version() -> None:
    t = table()
    x = t.column("x").to_numpy().copy()
    x[123] += 1e-12
    changed = t.set_column(1, "x", pa.array(x))
    assert version(changed) != version(t)
    assert version(t.slice(1)) != version(t)
    assert version(pa.concat_tables([t, t.slice(0, 1)])) != version(t), "a duplicated row counts"
    s = t.column("s").to_pylist()
    s[5] = None if s[5] is not None else "a"
    assert version(t.set_column(2, "s", pa.array(s, pa.string()))) != version(t)


def test_schema_matters_but_string_width_and_chunking_do_not() -> None:
    t = table()
    large = t.set_column(2, "s", t.column("s").cast(pa.large_string()))
    assert version(large) == version(t)
    dictionary = t.set_column(2, "s", t.column("s").dictionary_encode())
    assert row_hashes(dictionary).tolist() == row_hashes(t).tolist()
    assert version(t.rename_columns(["i", "y", "s", "t"])) != version(t)
    swapped = t.select(["x", "i", "s", "t"])
    assert version(swapped) != version(t), "column order is part of the schema"


def test_equal_values_hash_alike_and_nulls_differ_from_values() -> None:
    zeros = pa.table({"x": pa.array([0.0, -0.0, np.nan, float("nan")])})
    h = row_hashes(zeros)
    assert h[0] == h[1] and h[2] == h[3]
    with_null = pa.table({"x": pa.array([0, None], pa.int64())})
    h = row_hashes(with_null)
    assert h[0] != h[1]


# Versions computed by the code before nested/decimal/date32/uint64 support (git aca1a4a):
# the types it could hash keep their words, so stored datasets keep their versions.
def _nulls(values: list[object]) -> list[object]:
    return [None if k % 7 == 3 else v for k, v in enumerate(values)]


def pinned_columns() -> dict[str, pa.Array]:
    k = range(40)
    special = [-0.0, float("nan"), 0.0, 1e300, -2.5]
    return {
        "i64": pa.array(_nulls([j * 7919 - 100_000 for j in k]), pa.int64()),
        "i64_full": pa.array([j * 7919 - 2**62 for j in k], pa.int64()),
        "f64": pa.array(_nulls([j / 7 - 3 if j % 5 else special[j // 5 % 5] for j in k]), pa.float64()),
        "f64_full": pa.array([j / 3 - 5.5 for j in k], pa.float64()),
        "s": pa.array(_nulls([f"s{j % 5}é" for j in k]), pa.string()),
        "b": pa.array(_nulls([j % 3 == 0 for j in k]), pa.bool_()),
        "ts_ns": pa.array(_nulls([1_767_225_600_000_000_000 + j * 60_000_000_123 for j in k]), pa.timestamp("ns")),
        "i32": pa.array(_nulls([j * 1013 - 20_000 for j in k]), pa.int32()),
        "i8": pa.array(_nulls([j * 3 - 60 for j in k]), pa.int8()),
        "u16": pa.array(_nulls([j * 1500 for j in k]), pa.uint16()),
        "u64": pa.array(_nulls([j * 2**57 for j in k]), pa.uint64()),
        "f32": pa.array(_nulls([j / 4 - 2 for j in k]), pa.float32()),
        "ls": pa.array(_nulls([f"t{j % 4}" for j in k]), pa.large_string()),
        "bin": pa.array(_nulls([bytes([j, 255 - j]) for j in k]), pa.binary()),
        "dict": pa.array(_nulls([f"c{j % 3}" for j in k]), pa.string()).dictionary_encode(),
        "ts_s": pa.array(_nulls([1_700_000_000 + j * 3601 for j in k]), pa.timestamp("s")),
        "ts_us_tz": pa.array(_nulls([1_700_000_000_000_000 + j * 77 for j in k]), pa.timestamp("us", "Europe/Paris")),
        "date64": pa.array(_nulls([(19_000 + j) * 86_400_000 for j in k]), pa.date64()),
        "time64": pa.array(_nulls([j * 1_000_003 for j in k]), pa.time64("us")),
        "dur": pa.array(_nulls([j * 999 - 7 for j in k]), pa.duration("ms")),
        "dec": pa.array(_nulls([decimal.Decimal(j * 137 - 2000).scaleb(-2) for j in k]), pa.decimal128(7, 2)),
    }


PINNED = {
    "i64": "591c575c704f048d",
    "i64_full": "c9cca95af90bd4ba",
    "f64": "235010caa6201854",
    "f64_full": "975cceab1e66f2aa",
    "s": "f6eb35b31c6a3dc3",
    "b": "bd014dfe4ed7e301",
    "ts_ns": "dd21c08365888e41",
    "i32": "5edbcff372ee51c5",
    "i8": "a26897885c22e886",
    "u16": "e7b4e94a7128623b",
    "u64": "b188be811cd87991",
    "f32": "0a64be1a49a54ed9",
    "ls": "e2ee1f4f1e720ddf",
    "bin": "c4191becd2b98725",
    "dict": "390196c06f1a2445",
    "ts_s": "7a5c2868e1aaa5bf",
    "ts_us_tz": "725a846f6484ae1b",
    "date64": "954b0124af8e209d",
    "time64": "a5ba95c98c92edb7",
    "dur": "85abe4d79807d85d",
    "dec": "7ef0d11e3c095c69",
}


def test_versions_of_types_hashed_before_are_unchanged() -> None:
    columns = pinned_columns()
    got = {name: version(pa.table({name: a}))[:16] for name, a in columns.items()}
    assert got == PINNED
    t = pa.table(columns)
    pinned = "e0330711d90ebf3113d1e62ff69ec121dfc2bc73563fdde6cd0a74d1d59f8d40"
    assert version(t) == version(t.slice(0, 13), t.slice(13)) == pinned
    assert version(table()) == "91630c70fb2dda7e0d688ef3ef24c5c528bfef4c2d9fcfea051aa04af6b343f7"


def test_split_key_words_are_unchanged() -> None:
    """``data.split`` hashes a key column's words: its assignment of rows must not move."""
    columns = pinned_columns()
    s = [14292594923233448688, 12752363064346721716, 15051319970169399083, 11400714819323198485]
    assert [int(w) for w in column_words(pa.chunked_array([columns["s"]]))[:4]] == s
    dec = [2757088546264303646, 8412879715590798534, 1491185835879836683, 11400714819323198485]
    assert [int(w) for w in column_words(pa.chunked_array([columns["dec"]]))[:4]] == dec
