"""Data stage kinds on a shared local Ray: read, transform, validate, split, profile."""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.store.metadata import MetadataStore

pytestmark = pytest.mark.usefixtures("ray_local")

F = "tests.integration.funcs"


def frame(n: int = 400, start: int = 0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(start, start + n, dtype=np.int64),
            "x": rng.normal(size=n).round(4),
            "c": rng.choice(["a", "b", "c"], n),
        }
    )


def run(tmp_path: Path, *stages: dict[str, Any], use_cache: bool = True) -> raypipe.RunResult:
    cfg = raypipe.PipelineConfig(
        name="data", storage=str(tmp_path / "store"), stages=[raypipe.StageConfig(**s) for s in stages]
    )
    return raypipe.run(cfg, use_cache=use_cache)


def value(tmp_path: Path, res: raypipe.RunResult, stage: str, output: str) -> Any:
    v = raypipe.read_artifact(res.outputs[stage][output].sha256, db=str(tmp_path / "store" / "raypipe.db"))
    return v.to_pandas() if hasattr(v, "to_pandas") and not isinstance(v, pd.DataFrame) else v


def read(path: Path | str, **params: Any) -> dict[str, Any]:
    return {"name": "read", "kind": "data.read", "params": {"path": str(path), **params}}


def error_of(tmp_path: Path, res: raypipe.RunResult, stage: str) -> str:
    meta = MetadataStore(str(tmp_path / "store" / "raypipe.db"))
    return next(r.error for r in meta.stage_runs(res.run_id) if r.stage == stage and r.error)


def test_parquet_csv_and_json_lines_of_the_same_rows_are_one_dataset_version(tmp_path: Path) -> None:
    df = frame()
    (tmp_path / "pq").mkdir()
    df.iloc[:150].to_parquet(tmp_path / "pq" / "a.parquet")
    df.iloc[150:].to_parquet(tmp_path / "pq" / "b.parquet")
    df.to_csv(tmp_path / "rows.csv", index=False)
    df.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    np.save(tmp_path / "arr.npy", np.arange(12, dtype=np.float64).reshape(4, 3))
    versions = {}
    for name, path in [("pq", tmp_path / "pq"), ("csv", tmp_path / "rows.csv"), ("json", tmp_path / "rows.jsonl")]:
        res = run(tmp_path, read(path))
        assert res.ok, res.errors
        ref = res.outputs["read"]["data"]
        assert ref.format == "dataset" and ref.schema["num_rows"] == 400
        versions[name] = ref.sha256
        back = value(tmp_path, res, "read", "data").sort_values("id").reset_index(drop=True)
        pd.testing.assert_frame_equal(back, df, check_dtype=False, check_like=True)
    assert len(set(versions.values())) == 1, versions
    res = run(tmp_path, read(tmp_path / "arr.npy"))
    assert res.ok and res.outputs["read"]["data"].schema["num_rows"] == 4


def test_version_is_stable_changes_with_one_value_and_an_edited_file_is_read_again(tmp_path: Path) -> None:
    df = frame(200)
    path = tmp_path / "rows.csv"
    df.to_csv(path, index=False)
    first = run(tmp_path, read(path))
    again = run(tmp_path, read(path), use_cache=False)
    assert again.stages["read"] == "succeeded"
    assert again.outputs["read"]["data"].sha256 == first.outputs["read"]["data"].sha256
    assert run(tmp_path, read(path)).stages["read"] == "cached"
    df.loc[17, "x"] = 0.125
    df.to_csv(path, index=False)
    edited = run(tmp_path, read(path))
    assert edited.stages["read"] == "succeeded", "a changed file invalidates the cache"
    assert edited.outputs["read"]["data"].sha256 != first.outputs["read"]["data"].sha256


def test_transform_with_a_function_and_with_a_class_on_an_actor_pool(tmp_path: Path) -> None:
    df = frame(300)
    df.to_parquet(tmp_path / "rows.parquet")
    res = run(
        tmp_path,
        read(tmp_path / "rows.parquet"),
        {
            "name": "feat",
            "kind": "data.transform",
            "inputs": {"data": "read.data"},
            "params": {"function": f"{F}:add_feature", "args": {"factor": 3.0}, "batch_size": 64},
        },
        {
            "name": "shift",
            "kind": "data.transform",
            "inputs": {"data": "feat.data"},
            "resources": {"cpu": 2},
            "params": {"function": f"{F}:Offset", "args": {"offset": 10.0}, "batch_size": 50},
        },
        {"name": "count", "kind": "python", "inputs": {"data": "shift.data"}, "params": {"function": f"{F}:count_rows"}},
    )
    assert res.ok, res.errors
    out = value(tmp_path, res, "shift", "data").sort_values("id").reset_index(drop=True)
    np.testing.assert_allclose(out["x2"], df["x"] * 3.0)
    np.testing.assert_allclose(out["x"], df["x"] + 10.0)
    assert 1 <= out["pid"].nunique() <= 2, "at most as many actors as the stage's 2 CPUs"
    counted = value(tmp_path, res, "count", "rows")
    assert counted == 300, "a python stage gets the dataset as a Ray Dataset"


def test_split_is_deterministic_and_rows_stay_put_when_rows_are_appended(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    frame(1000, 0, seed=1).to_csv(src / "p0.csv", index=False)
    fractions = {"train": 0.7, "validation": 0.1, "test": 0.2}

    def split(key: str | None) -> dict[str, Any]:
        return {
            "name": "split",
            "kind": "data.split",
            "inputs": {"data": "read.data"},
            "params": {"fractions": fractions, "key": key, "seed": 7},
        }

    def ids(res: raypipe.RunResult) -> dict[str, set[int]]:
        return {p: set(value(tmp_path, res, "split", p)["id"]) for p in fractions}

    for key in ("id", None):
        a = run(tmp_path, read(src), split(key), use_cache=False)
        b = run(tmp_path, read(src), split(key), use_cache=False)
        assert a.ok and b.ok
        assert {p: r.sha256 for p, r in a.outputs["split"].items()} == {
            p: r.sha256 for p, r in b.outputs["split"].items()
        }
        before = ids(a)
        assert sum(len(s) for s in before.values()) == 1000 and not (before["train"] & before["test"])
        assert abs(len(before["train"]) / 1000 - 0.7) < 0.06
        frame(500, 1000, seed=2).to_csv(src / "p1.csv", index=False)
        after = ids(run(tmp_path, read(src), split(key)))
        for part in fractions:
            assert before[part] <= after[part], f"{part}: appended rows moved old rows ({key=})"
        assert sum(len(s) for s in after.values()) == 1500
        (src / "p1.csv").unlink()


def test_profile_matches_pandas(tmp_path: Path) -> None:
    df = frame(500)
    df.loc[::50, "x"] = np.nan
    df.to_parquet(tmp_path / "rows.parquet")
    res = run(
        tmp_path,
        read(tmp_path / "rows.parquet"),
        {"name": "profile", "kind": "data.profile", "inputs": {"data": "read.data"}, "params": {"bins": 10}},
    )
    assert res.ok, res.errors
    prof = value(tmp_path, res, "profile", "profile")
    x = prof["columns"]["x"]
    assert x["nulls"] == int(df["x"].isna().sum()) and x["count"] == int(df["x"].count())
    assert x["mean"] == pytest.approx(df["x"].mean(), rel=1e-12)
    assert x["std"] == pytest.approx(df["x"].std(), rel=1e-9)
    for q in ("0.05", "0.5", "0.95"):
        assert x["quantiles"][q] == pytest.approx(df["x"].quantile(float(q)), rel=1e-9)
    assert sum(x["histogram"]["counts"]) == x["count"]
    assert prof["columns"]["c"]["frequencies"] == df["c"].value_counts().to_dict()
    json.dumps(prof, allow_nan=False)


def _validate(on_error: str) -> dict[str, Any]:
    columns = {
        "id": {"type": "int", "unique": True, "nullable": False},
        "x": {"type": "float", "min": -2.0, "max": 2.0},
        "c": {"type": "string", "allowed": ["a", "b"]},
    }
    return validate_stage(columns, on_error, rows={"min": 10})


def validate_stage(columns: dict[str, Any], on_error: str, **params: Any) -> dict[str, Any]:
    """A ``data.validate`` stage named ``check`` over ``read.data``."""
    return {
        "name": "check",
        "kind": "data.validate",
        "inputs": {"data": "read.data"},
        "params": {"columns": columns, **params, "on_error": on_error},
    }


def test_validate_fails_with_a_report_or_quarantines_every_bad_row(tmp_path: Path) -> None:
    df = frame(300)
    df.loc[5, "id"] = 6  # a duplicate: rows 5 and 6
    bad = (df["x"] < -2) | (df["x"] > 2) | ~df["c"].isin(["a", "b"]) | df["id"].duplicated(keep=False)
    df.to_parquet(tmp_path / "rows.parquet")
    failed = run(tmp_path, read(tmp_path / "rows.parquet"), _validate("fail"))
    assert not failed.ok
    short = failed.errors["check"]
    assert "DataError" in short and "c: allowed" in short and "id: unique (2 rows)" in short
    detail = error_of(tmp_path, failed, "check")
    n_c = int((~df["c"].isin(["a", "b"])).sum())
    assert f"column 'c': rule allowed in ['a', 'b']: {n_c} rows" in detail and "'c': 'c'" in detail
    # the whole message, clean (what the console prints after the run), and its category
    f = failed.failures["check"]
    assert f.category == "validation" and f.deterministic and f.summary == short
    assert f"column 'c': rule allowed in ['a', 'b']: {n_c} rows" in f.message
    assert "\x1b" not in f.message and 'File "' not in f.message and "ray::" not in f.message
    assert f.traceback is not None and 'File "' in f.traceback

    res = run(tmp_path, read(tmp_path / "rows.parquet"), _validate("quarantine"))
    assert res.ok, res.errors
    good = value(tmp_path, res, "check", "data")
    quarantined = value(tmp_path, res, "check", "quarantine")
    report = value(tmp_path, res, "check", "report")
    assert len(quarantined) == int(bad.sum()) == report["rows_quarantined"] == report["rows_bad"]
    assert len(good) + len(quarantined) == len(df), "no row dropped silently"
    assert set(quarantined["id"]) == set(df.loc[bad, "id"])

    clean = frame(50)
    clean["c"] = "a"
    clean["x"] = 0.5
    clean.to_parquet(tmp_path / "clean.parquet")
    ok = run(tmp_path, read(tmp_path / "clean.parquet"), _validate("quarantine"))
    assert ok.outputs["check"]["data"] == ok.outputs["read"]["data"], "a clean dataset passes through unchanged"
    assert ok.outputs["check"]["quarantine"].schema["num_rows"] == 0


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,4\n5,6,7\n8,9\n")
    res = run(tmp_path, read(tmp_path / "bad.csv"))
    assert not res.ok
    assert f"{tmp_path / 'bad.csv'}:4: malformed CSV line: expected 2 fields, got 3" in res.errors["read"]

    (tmp_path / "mixed").mkdir()
    pd.DataFrame({"a": [1, 2]}).to_parquet(tmp_path / "mixed" / "p1.parquet")
    pd.DataFrame({"a": ["x", "y"]}).to_parquet(tmp_path / "mixed" / "p2.parquet")
    res = run(tmp_path, read(tmp_path / "mixed"))
    assert "conflicting schemas" in res.errors["read"] and "p1.parquet" in res.errors["read"]
    assert "p2.parquet has (a: string)" in res.errors["read"]

    (tmp_path / "empty.csv").write_text("a,b\n")
    res = run(tmp_path, read(tmp_path / "empty.csv"))
    assert "empty dataset: no rows in" in res.errors["read"] and "empty.csv" in res.errors["read"]

    with pytest.raises(raypipe.ConfigError, match=r"stages\[0\]\.params\.path: path not found: .*nowhere\.csv"):
        run(tmp_path, read(tmp_path / "nowhere.csv"))


def test_parquet_is_versioned_in_place_and_a_changed_source_is_named(tmp_path: Path) -> None:
    df = frame(100)
    path = tmp_path / "rows.parquet"
    df.to_parquet(path)
    res = run(tmp_path, read(path))
    ref = res.outputs["read"]["data"]
    assert ref.schema.get("in_place") and not list((tmp_path / "store" / "datasets").glob("*/*.parquet"))
    copied = run(tmp_path, read(path, in_place=False))
    cref = copied.outputs["read"]["data"]
    assert cref.sha256 == ref.sha256 and not cref.schema.get("in_place"), "a copy has the same version"
    assert list((tmp_path / "store" / "datasets").glob(f"{cref.sha256}/*.parquet")), "in_place: false copies"
    other = tmp_path / "other.parquet"
    df.iloc[:50].to_parquet(other)
    ref2 = run(tmp_path, read(other)).outputs["read"]["data"]
    df.iloc[:49].to_parquet(other)  # the source changes after it was versioned
    with pytest.raises(raypipe.DataError, match=r"was read in place from files that changed since: .*other\.parquet"):
        raypipe.read_artifact(ref2.sha256, db=str(tmp_path / "store" / "raypipe.db"))
    again = run(tmp_path, read(other))
    assert again.stages["read"] == "succeeded" and again.outputs["read"]["data"].sha256 != ref2.sha256


def _dated_csvs(folder: Path) -> None:
    """Three CSV files (one block each) whose `day`, `score` and `at` columns Arrow reads as
    text in every file: p0 and p1 have one malformed date and one "n.a." score each; in p2
    every date is malformed.  `at` mixes aware and naive times, which Arrow's reader reads
    as text."""
    folder.mkdir()
    files: dict[str, list[str]] = {"p0.csv": [], "p1.csv": [], "p2.csv": []}
    for i in range(120):
        name = f"p{i // 40}.csv"
        day = f"2024-01-{1 + i % 28:02d}" if name != "p2.csv" else f"{1 + i % 28:02d}/01/2024"
        score = f"{i / 8}"
        at = f"2024-03-01T{i % 24:02d}:00:00Z" if i % 2 else f"2024-03-01 {i % 24:02d}:30"
        if i == 3:
            day = "2023-13-45"
        if i in (7, 47, 87):
            score = "n.a."
        if i == 41:
            day = "2024-02-30"
        files[name].append(f"{i},{day},{score},{at},{'true' if i % 3 else 'false'}")
    for name, lines in files.items():
        (folder / name).write_text("id,day,score,at,ok\n" + "\n".join(lines) + "\n")


def _typed_validate(on_error: str) -> dict[str, Any]:
    columns = {
        "id": {"type": "int", "unique": True},
        "day": {"type": "date", "min": "2024-01-01"},
        "score": {"type": "float", "min": 0},
        "at": {"type": "timestamp", "timezone": "Europe/Berlin", "max": "2024-03-02T00:00:00Z"},
        "ok": {"type": "bool"},
    }
    return validate_stage(columns, on_error)


def test_validate_parses_text_columns_of_csvs_into_their_declared_types(tmp_path: Path) -> None:
    _dated_csvs(tmp_path / "src")
    failed = run(tmp_path, read(tmp_path / "src"), _typed_validate("fail"))
    assert not failed.ok
    assert "day: type (42 rows)" in failed.errors["check"] and "score: type (3 rows)" in failed.errors["check"]
    detail = error_of(tmp_path, failed, "check")
    assert "column 'day': rule type (an ISO date YYYY-MM-DD): 42 rows" in detail
    assert re.search(r"'day': '(2023-13-45|2024-02-30|\d\d/01/2024)'", detail), detail  # examples: any blocks first

    split = {
        "name": "split",
        "kind": "data.split",
        "inputs": {"data": "check.data"},
        "params": {"fractions": {"train": 0.8, "test": 0.2}, "key": "id"},
    }
    res = run(tmp_path, read(tmp_path / "src"), _typed_validate("quarantine"), split)
    assert res.ok, res.errors
    src = res.outputs["read"]["data"].schema["columns"]
    assert src["day"] == src["score"] == src["at"] == "string" and src["id"] == "int64", src
    data_ref, quarantine_ref = res.outputs["check"]["data"], res.outputs["check"]["quarantine"]
    assert data_ref.schema["columns"] == {
        "id": "int64",
        "day": "date32[day]",
        "score": "double",
        "at": "timestamp[us, tz=UTC]",
        "ok": "bool",
    }
    assert quarantine_ref.schema["columns"] == src, "quarantined rows keep the text as read"
    report = value(tmp_path, res, "check", "report")
    assert report["converted"] == ["day", "score", "at"]
    assert report["rows_bad"] == report["rows_quarantined"] == 44  # 42 dates, 2 more scores
    good = value(tmp_path, res, "check", "data").sort_values("id").reset_index(drop=True)
    bad = value(tmp_path, res, "check", "quarantine").sort_values("id").reset_index(drop=True)
    assert len(good) + len(bad) == 120
    assert set(bad["id"]) == {3, 7, 41, 47} | set(range(80, 120))
    assert bad.loc[bad["id"] == 3, "day"].tolist() == ["2023-13-45"] and bad.loc[bad["id"] == 7, "score"].tolist() == [
        "n.a."
    ]
    row = good.loc[good["id"] == 42].iloc[0]
    assert row["day"] == _dt.date(2024, 1, 15) and row["score"] == 42 / 8
    # naive times are Berlin time (CET in March: 00:30 local is 23:30 UTC the day before)
    assert pd.Timestamp(good.loc[good["id"] == 0, "at"].iloc[0]) == pd.Timestamp("2024-02-29T23:30:00Z")
    assert pd.Timestamp(good.loc[good["id"] == 1, "at"].iloc[0]) == pd.Timestamp("2024-03-01T01:00:00Z")
    parts = [value(tmp_path, res, "split", p) for p in ("train", "test")]
    assert sum(len(p) for p in parts) == len(good), "the converted dataset feeds the next stage"

    # nothing bad, but columns to convert (Arrow reads neither yes/no nor mixed offsets):
    # a new dataset, not the input passed on
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "rows.csv").write_text("id,at,ok\n1,2024-01-02T10:00:00Z,yes\n2,2024-01-02 11:00,NO\n3,,\n")
    clean = run(
        tmp_path,
        read(tmp_path / "clean"),
        {
            "name": "check",
            "kind": "data.validate",
            "inputs": {"data": "read.data"},
            "params": {"columns": {"id": {"type": "int"}, "at": {"type": "timestamp"}, "ok": {"type": "bool"}}},
        },
    )
    assert clean.ok, clean.errors
    assert clean.outputs["read"]["data"].schema["columns"] == {"id": "int64", "at": "string", "ok": "string"}
    assert clean.outputs["check"]["data"].sha256 != clean.outputs["read"]["data"].sha256
    assert clean.outputs["check"]["data"].schema["columns"] == {
        "id": "int64",
        "at": "timestamp[us, tz=UTC]",
        "ok": "bool",
    }
    rows = value(tmp_path, clean, "check", "data").sort_values("id")
    assert [pd.Timestamp(t) for t in rows["at"].iloc[:2]] == [
        pd.Timestamp("2024-01-02T10:00:00Z"),
        pd.Timestamp("2024-01-02T11:00:00Z"),
    ]
    assert (
        rows["ok"].iloc[:2].tolist() == [True, False]
        and rows["at"].isna().tolist()[2]
        and rows["ok"].isna().tolist()[2]
    )


def test_read_and_transform_errors_name_the_file_line_column_and_expectation(tmp_path: Path) -> None:
    """Nothing reaches the user as Ray Data's text alone: a value that breaks a pinned CSV
    type names file, line, column and the expected type; a value that breaks an inferred
    type turns the column to text (the read succeeds); a transform's missing column and
    its own error are named in one line, Ray's text goes to the stage's log file; a type
    the store cannot version names the column and the type."""
    lines = ["id,amount,day"] + [f"{i},{i * 1.5},2024-01-{1 + i % 28:02d}" for i in range(30_000)]
    lines.append("30000,12.5,2024-02-30")
    lines.append("oops,3.0,2024-01-02")
    csv = tmp_path / "sales.csv"
    csv.write_text("\n".join(lines) + "\n")  # past the first megabyte: inference saw only good values
    pinned = run(tmp_path, read(csv, csv={"column_types": {"id": "int"}}), use_cache=False)
    assert not pinned.ok
    assert pinned.errors["read"] == (
        f"DataError: {csv}:30003: column 'id': expected an integer (int64), got 'oops'"
    ), pinned.errors
    relaxed = run(tmp_path, read(csv), use_cache=False)
    assert relaxed.ok, relaxed.errors
    assert relaxed.outputs["read"]["data"].schema["columns"] == {"id": "string", "amount": "double", "day": "string"}
    logs = list((tmp_path / "store" / "logs" / pinned.run_id / "read").glob("*.log"))
    assert logs and "Ray Data said" in logs[0].read_text()

    df = frame(50)
    src = tmp_path / "rows.parquet"
    df.to_parquet(src)
    missing = run(tmp_path, read(src), transform({"function": f"{F}:use_column", "args": {"column": "price"}}))
    assert missing.errors["features"] == (
        f"DataError: {F}:use_column: the batch has no column 'price'; its columns: id, x, c"
    ), missing.errors
    own = run(tmp_path, read(src), transform({"function": f"{F}:divide"}))
    msg = own.errors["features"]
    assert msg.startswith(f"DataError: {F}:divide failed on a batch: ValueError: cannot divide the amounts"), msg
    assert "To change retry" not in msg and "(the whole text: " in msg
    odd = run(tmp_path, read(src), transform({"function": f"{F}:intervals", "batch_format": "pyarrow"}))
    assert "column 'gap'" in odd.errors["features"] and "month_day_nano_interval" in odd.errors["features"]


def transform(params: dict[str, Any]) -> dict[str, Any]:
    return {"name": "features", "kind": "data.transform", "inputs": {"data": "read.data"}, "params": params}
