"""Per-column profiles (raypipe.stages.data.profiling): pure pandas/numpy, no Ray."""

from __future__ import annotations

import json
import math
import pickle
from fractions import Fraction
from functools import reduce

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.stages.data.profiling import (
    DEFAULT_QUANTILES,
    Partial,
    add_counts,
    category_key,
    finalize,
    histogram_counts,
    histogram_edges,
    merge,
    partial_profile,
)

QS = DEFAULT_QUANTILES


def profile(
    batches: list[pd.DataFrame],
    *,
    sample_size: int = 1000,
    seed: int = 7,
    max_categories: int = 10,
    bins: int = 10,
    order: list[int] | None = None,
) -> dict:
    """Both passes over ``batches`` (merged in ``order``), as a stage would run them."""
    order = order if order is not None else list(range(len(batches)))
    parts = [
        partial_profile(batches[i], sample_size=sample_size, seed=seed, max_categories=max_categories) for i in order
    ]
    parts = [pickle.loads(pickle.dumps(p)) for p in parts]  # they travel between processes
    merged = reduce(merge, parts)
    edges = histogram_edges(merged, bins)
    counts = reduce(add_counts, [histogram_counts(batches[i], edges) for i in order])
    out = finalize(merged, counts, edges)
    json.dumps(out, allow_nan=False)
    return out


def split(df: pd.DataFrame, n: int, rng: np.random.Generator) -> list[pd.DataFrame]:
    cuts = [0, *np.sort(rng.choice(np.arange(1, len(df)), size=n - 1, replace=False)).tolist(), len(df)]
    return [df.iloc[a:b].reset_index(drop=True) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


@pytest.fixture
def small() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 600
    x = rng.normal(10, 3, n)
    x[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "x": x,
            "i": rng.integers(-100, 100, n),
            "u": rng.integers(0, 5, n).astype(np.uint8),
            "s": pd.Series(rng.choice(["red", "green", "blue", None], n, p=[0.5, 0.3, 0.1, 0.1]), dtype="str"),
            "b": rng.random(n) < 0.3,
            "c": pd.Categorical(rng.choice(["lo", "mid", "hi"], n)),
            "t": pd.date_range("2024-01-01", periods=n, freq="min"),
        }
    )


# --------------------------------------------------------------------------- against pandas


def test_numeric_matches_pandas_when_exact(small: pd.DataFrame) -> None:
    prof = profile([small], sample_size=1000)
    assert prof["rows"] == len(small)
    for name in ("x", "i", "u"):
        col, s = prof["columns"][name], small[name]
        desc = s.describe()
        assert col["kind"] == "numeric" and col["dtype"] == str(s.dtype)
        assert col["count"] == desc["count"] and col["nulls"] == s.isna().sum()
        assert col["null_fraction"] == pytest.approx(s.isna().mean())
        assert col["mean"] == pytest.approx(desc["mean"], rel=1e-12)
        assert col["std"] == pytest.approx(desc["std"], rel=1e-9)
        assert col["min"] == desc["min"] and col["max"] == desc["max"]
        expected_q = s.quantile(list(QS))
        for q in QS:
            assert col["quantiles"][str(q)] == pytest.approx(expected_q[q], rel=1e-12, abs=1e-12)
        assert col["sample"] == sorted(s.dropna().tolist())  # everything, since count <= sample_size
        assert col["distinct"] == s.nunique()
        assert col["infinite"] == 0
    assert isinstance(prof["columns"]["i"]["min"], int) and isinstance(prof["columns"]["x"]["min"], float)


def test_categorical_matches_pandas(small: pd.DataFrame) -> None:
    prof = profile([small], max_categories=10)
    for name in ("s", "b", "c"):
        col, s = prof["columns"][name], small[name]
        vc = s.value_counts()
        assert col["kind"] == "categorical"
        assert col["count"] == s.count() and col["nulls"] == s.isna().sum()
        assert col["frequencies"] == {category_key(k): int(v) for k, v in vc.items()}
        assert list(col["frequencies"].values()) == sorted(col["frequencies"].values(), reverse=True)
        assert col["distinct"] == s.nunique() and col["other"] == 0
    assert set(prof["columns"]["b"]["frequencies"]) == {"True", "False"}
    t = prof["columns"]["t"]
    assert t["kind"] == "datetime" and t["first"] == "2024-01-01T00:00:00" and t["count"] == len(small)
    assert t["min"] == 19723.0 and t["unit"] == "days since 1970-01-01"  # 2024-01-01


def test_std_is_stable_with_a_large_offset() -> None:
    rng = np.random.default_rng(3)
    x = 1e9 + rng.normal(0, 1, 5000)
    prof = profile(split(pd.DataFrame({"x": x}), 5, rng), sample_size=100)["columns"]["x"]
    exact = [Fraction(v) for v in x]
    mean = sum(exact) / len(exact)
    var = sum((v - mean) ** 2 for v in exact) / (len(exact) - 1)
    assert prof["mean"] == float(mean)  # correctly rounded
    assert prof["std"] == pytest.approx(math.sqrt(var), rel=1e-14)
    assert prof["std"] == pytest.approx(pd.Series(x).std(), rel=1e-9)


def test_big_integers_sum_exactly() -> None:
    df = pd.DataFrame({"i": np.array([2**62, 2**62 + 2, 2**62 + 4], dtype=np.int64)})
    col = profile([df])["columns"]["i"]
    assert col["mean"] == float(2**62 + 2) and col["std"] == 2.0
    assert col["min"] == 2**62 and col["max"] == 2**62 + 4


def test_exact_quantiles_with_many_duplicates_match_numpy() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 7, 20_000).astype(np.float64) * 0.5
    qs = tuple(np.round(np.linspace(0, 1, 41), 4))
    merged = reduce(
        merge,
        [partial_profile(b, sample_size=50, seed=1, max_categories=2) for b in split(pd.DataFrame({"x": x}), 4, rng)],
    )
    col = finalize(merged, None, None, quantiles=qs)["columns"]["x"]
    assert col["distinct"] == 7
    assert [col["quantiles"][str(float(q))] for q in qs] == [float(v) for v in np.quantile(x, qs)]


# --------------------------------------------------------------------------- batching does not matter


def test_profile_is_identical_for_any_batching_and_order() -> None:
    rng = np.random.default_rng(11)
    n = 5000
    df = pd.DataFrame(
        {
            "x": rng.lognormal(0, 2, n) * rng.choice([-1, 1], n),  # high cardinality: bottom-k sample
            "k": rng.integers(0, 20, n),  # low cardinality: exact counts
            "y": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            "s": pd.Series(rng.choice(["a", "b", "c", "d", None], n), dtype="str"),
            "b": rng.random(n) < 0.5,
        }
    )
    reference = profile([df], sample_size=300)
    assert len(reference["columns"]["x"]["sample"]) == 300 and reference["columns"]["x"]["distinct"] is None
    for parts in (3, 7):
        batches = split(df, parts, rng)
        for order in (list(range(parts)), list(reversed(range(parts))), list(rng.permutation(parts))):
            assert profile(batches, sample_size=300, order=order) == reference
    # the seed changes the sample, nothing else
    other = profile([df], sample_size=300, seed=8)
    assert other["columns"]["x"]["sample"] != reference["columns"]["x"]["sample"]
    assert other["columns"]["x"]["mean"] == reference["columns"]["x"]["mean"]


def test_batches_whose_dtypes_differ_like_arrow_to_pandas() -> None:
    """Converting arrow blocks to pandas gives int64 or float64 (nulls), bool or object
    (nulls), object (an all-null block): the profile must not care."""
    rng = np.random.default_rng(2)
    n = 3000
    nulls = {17, 1234, 2999}  # so that some blocks have nulls and others have none
    ints = pa.array([None if j in nulls else int(v * 1000) for j, v in enumerate(rng.random(n))], type=pa.int64())
    bools = pa.array([None if j in nulls else bool(v < 0.5) for j, v in enumerate(rng.random(n))], type=pa.bool_())
    floats = pa.array(rng.normal(size=n))
    table = pa.table({"i": ints, "b": bools, "f": floats})
    whole = table.to_pandas()
    assert str(whole["i"].dtype) == "float64" and str(whole["b"].dtype) == "object"
    batches = [table.slice(o, 500).to_pandas() for o in range(0, n, 500)]
    assert {str(b["i"].dtype) for b in batches} == {"int64", "float64"}
    null_block = pd.DataFrame({"i": [None], "b": [None], "f": [np.nan]}, dtype=object).astype({"f": "float64"})
    null_row = pa.table({"i": pa.nulls(1, pa.int64()), "b": pa.nulls(1, pa.bool_()), "f": pa.nulls(1, pa.float64())})
    reference = profile([pa.concat_tables([table, null_row]).to_pandas()], sample_size=200)
    assert profile([*batches, null_block], sample_size=200) == reference
    assert profile([null_block, *batches[::-1]], sample_size=200) == reference


def test_merge_is_associative_and_commutative(small: pd.DataFrame) -> None:
    a, b, c = (
        partial_profile(x, sample_size=50, seed=1, max_categories=5)
        for x in (small.iloc[:200], small.iloc[200:450], small.iloc[450:])
    )

    def fin(p: Partial) -> dict:
        return finalize(p, None, histogram_edges(p, 4))

    assert fin(merge(merge(a, b), c)) == fin(merge(a, merge(b, c))) == fin(merge(c, merge(b, a)))
    with pytest.raises(ValueError, match="different settings"):
        merge(a, partial_profile(small, sample_size=51, seed=1, max_categories=5))


# --------------------------------------------------------------------------- sample


def test_sample_is_a_uniform_subset_of_the_requested_size() -> None:
    rng = np.random.default_rng(4)
    n = 60_000
    df = pd.DataFrame(
        {
            "x": rng.exponential(2.0, n),
            "k": rng.integers(0, 3, n),  # heavily duplicated values: a systematic sample of the exact counts
            "dup": np.repeat(rng.normal(size=n // 10), 10),  # rows come in 10 equal copies
        }
    )
    prof = profile(split(df, 6, rng), sample_size=2000, max_categories=5, bins=20)
    for name in ("x", "k", "dup"):
        col = prof["columns"][name]
        sample = col["sample"]
        assert len(sample) == 2000 and sample == sorted(sample)
        assert set(sample) <= set(df[name].tolist())
        assert col["histogram"]["counts"] and sum(col["histogram"]["counts"]) == col["count"] == n
    x = prof["columns"]["x"]
    assert x["distinct"] is None
    assert x["quantiles"]["0.5"] == pytest.approx(df["x"].median(), rel=0.1)  # from the sample
    assert x["quantiles"]["0.95"] == pytest.approx(df["x"].quantile(0.95), rel=0.1)
    k = prof["columns"]["k"]
    assert k["distinct"] == 3 and k["quantiles"] == {str(q): float(df["k"].quantile(q)) for q in QS}
    shares = np.bincount(np.array(k["sample"]), minlength=3) / 2000
    assert np.allclose(shares, np.bincount(df["k"], minlength=3) / n, atol=0.002)


# --------------------------------------------------------------------------- histogram


def test_histogram_counts_and_edges() -> None:
    df = pd.DataFrame(
        {
            "x": [0.0, 1.0, 2.0, 3.0, 4.0, np.nan, np.inf],
            "same": [5, 5, 5, 5, 5, 5, 5],
            "none": [np.nan] * 7,
        }
    )
    merged = partial_profile(df, sample_size=10, seed=0, max_categories=3)
    edges = histogram_edges(merged, 4)
    assert edges["x"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert edges["same"].tolist() == [4.5, 4.75, 5.0, 5.25, 5.5]
    assert edges["none"].tolist() == []
    counts = add_counts(histogram_counts(df.iloc[:3], edges), histogram_counts(df.iloc[3:], edges))
    assert counts["x"].tolist() == [1, 1, 1, 2]  # the max goes to the last bin; NaN and inf are left out
    assert counts["same"].tolist() == [0, 0, 7, 0] and counts["none"].tolist() == []
    outside = pd.DataFrame({"x": [-5.0, 10.0, 2.5]})
    assert histogram_counts(outside, edges)["x"].tolist() == [0, 0, 1, 0]
    assert histogram_counts(outside, edges, clip=True)["x"].tolist() == [1, 0, 1, 1]
    col = finalize(merged, counts, edges)["columns"]["x"]
    assert col["histogram"] == {"edges": [0.0, 1.0, 2.0, 3.0, 4.0], "counts": [1, 1, 1, 2]}
    assert col["count"] == 6 and col["infinite"] == 1 and col["nulls"] == 1 and col["max"] == 4.0
    assert sum(col["histogram"]["counts"]) == col["count"] - col["infinite"]
    with pytest.raises(ValueError):
        histogram_edges(merged, 0)


# --------------------------------------------------------------------------- categories


def test_many_categories_are_truncated_with_other() -> None:
    rng = np.random.default_rng(6)
    few = pd.DataFrame({"c": rng.choice([f"v{i:02d}" for i in range(15)], 3000)})
    col = profile(split(few, 3, rng), max_categories=4)["columns"]["c"]
    vc = few["c"].value_counts()
    assert col["distinct"] == 15 and len(col["frequencies"]) == 4
    top = sorted(vc.items(), key=lambda kv: (-kv[1], kv[0]))[:4]  # ties go to the smaller value
    assert col["frequencies"] == {k: int(v) for k, v in top}
    assert col["other"] == 3000 - sum(col["frequencies"].values())
    # more than 10 * max_categories distinct values: distinct unknown, counts still add up
    many = pd.DataFrame({"c": [f"id{i}" for i in range(500)] + ["hot"] * 300})
    col = profile(split(many, 4, rng), max_categories=3)["columns"]["c"]
    assert col["distinct"] is None and col["frequencies"]["hot"] == 300 and len(col["frequencies"]) == 3
    assert sum(col["frequencies"].values()) + col["other"] == col["count"] == 800


# --------------------------------------------------------------------------- JSON


def test_output_is_plain_json_without_nan() -> None:
    df = pd.DataFrame(
        {
            "empty": pd.Series([None, None], dtype=object),
            "nan": [np.nan, np.nan],
            "one": [1.5, np.nan],
            "inf": [np.inf, -np.inf],
            "nullable": pd.array([1, None], dtype="Int64"),
            "when": pd.to_datetime(["2024-01-01", None]),
            "obj": pd.Series([{"a": 1}, None], dtype=object),
        }
    )
    prof = profile([df], bins=3)
    text = json.dumps(prof, allow_nan=False)
    assert json.loads(text) == prof
    cols = prof["columns"]
    assert cols["nan"]["mean"] is None and cols["nan"]["std"] is None and cols["nan"]["quantiles"]["0.5"] is None
    assert cols["nan"]["histogram"] == {"edges": [], "counts": []} and cols["nan"]["sample"] == []
    assert cols["one"]["std"] is None and cols["one"]["mean"] == 1.5 and cols["one"]["quantiles"]["0.99"] == 1.5
    assert cols["inf"]["count"] == 2 and cols["inf"]["infinite"] == 2 and cols["inf"]["min"] is None
    assert cols["nullable"]["kind"] == "numeric" and cols["nullable"]["max"] == 1
    assert cols["when"]["kind"] == "datetime" and cols["when"]["nulls"] == 1
    assert cols["empty"]["nulls"] == 2 and cols["empty"]["count"] == 0

    def walk(v: object) -> None:
        if isinstance(v, dict):
            assert all(isinstance(k, str) for k in v)
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert v is None or type(v) in (bool, int, float, str), type(v)
            assert not (isinstance(v, float) and not math.isfinite(v))

    walk(prof)
    empty = profile([df.iloc[:0]])
    assert empty["rows"] == 0 and empty["columns"]["one"]["null_fraction"] is None


def test_dates_and_timestamps_profile_as_days_in_any_batching() -> None:
    """Dates (object columns of datetime.date, as Arrow's date32 arrives in pandas) and
    zoned timestamps are profiled as days since 1970-01-01 UTC: the numbers models and
    drift tests compare; the same in any batching and order."""
    import datetime as dt

    rng = np.random.default_rng(11)
    n = 600
    days = rng.integers(18000, 20000, n)
    d = pd.Series([dt.date(1970, 1, 1) + dt.timedelta(days=int(x)) if i % 10 else None for i, x in enumerate(days)])
    ts = pd.Series(pd.to_datetime(days * 86400 + 3600, unit="s")).dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")
    df = pd.DataFrame({"d": d, "ts": ts})
    whole = profile([df])
    parts = profile(split(df, 4, rng), order=[3, 1, 0, 2])
    assert whole == parts
    col = whole["columns"]["d"]
    expected = days[np.arange(n) % 10 != 0]
    assert col["kind"] == "datetime" and col["nulls"] == n // 10 and col["dtype"] == "date"
    assert col["mean"] == pytest.approx(expected.mean(), rel=1e-12)
    assert col["first"] == str(np.datetime64(int(expected.min()), "D")) and col["min"] == float(expected.min())
    t = whole["columns"]["ts"]
    assert t["kind"] == "datetime" and t["mean"] == pytest.approx(days.mean() + 1 / 24, rel=1e-12)
    assert t["first"] == str(np.datetime64(int(days.min()) * 86400 + 3600, "s"))
