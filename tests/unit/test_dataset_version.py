"""Dataset versions: a hash of the schema and the multiset of rows (raypipe.store.datasets)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from raypipe.store.datasets import content_digest, dataset_version, row_hashes, schema_text


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
