"""Artifact store round trips and metadata store transactions (no Ray)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from raypipe.exceptions import RunNotFoundError, StorageError
from raypipe.store.artifacts import ArtifactStore, resolve_root
from raypipe.store.metadata import MetadataStore


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "parquet"),
        (np.arange(6, dtype="float32").reshape(2, 3), "npy"),
        ({"accuracy": 0.9, "n": [1, 2]}, "json"),
        ("text", "json"),
        (b"\x00\x01", "bytes"),
        ({1, 2, 3}, "pickle"),
    ],
)
def test_round_trip(tmp_path: Path, value: object, fmt: str) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    opt_in = fmt == "pickle"  # a set has no format of its own: stored only with the stage's `pickle: true`
    ref = store.put_value(value, allow_pickle=opt_in)
    assert ref.format == fmt
    assert store.exists(ref)
    back = store.get_value(ref, allow_pickle=opt_in)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    else:
        assert back == value


def test_torch_state_dict_round_trip(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    store = ArtifactStore(str(tmp_path))
    ref = store.put_value({"spec": {"n": 2}, "state_dict": {"w": torch.ones(2)}})
    assert ref.format == "torch"
    assert torch.equal(store.get_value(ref)["state_dict"]["w"], torch.ones(2))


def test_content_addressing_dedups_and_detects_truncation(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    r1, r2 = store.put_value({"a": 1}), store.put_value({"a": 1})
    assert r1 == r2 and r1.uri.endswith(f"{r1.sha256}.json")
    Path(r1.uri).write_text("{")
    assert not store.exists(r1)
    assert not list((tmp_path / "tmp").iterdir()), "no upload left behind"


def test_unwritable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        ArtifactStore(str(blocker / "sub")).check_writable()


def test_resolve_root(tmp_path: Path) -> None:
    assert resolve_root("s3://bucket/p/") == "s3://bucket/p"
    assert resolve_root("rel", base=tmp_path) == str(tmp_path / "rel")


def test_metadata_records_stage_with_outputs_atomically(tmp_path: Path, metadata_db: str) -> None:
    store = ArtifactStore(str(tmp_path / "a"))
    meta = MetadataStore(metadata_db)
    meta.create_run("r1", "p", "{}", None, store.root)
    sid = meta.start_stage("r1", "s", 1, "key1")
    inp, out = store.put_value({"i": 1}), store.put_value({"o": 2})
    meta.succeed_stage(sid, {"x": inp}, {"y": out})
    assert meta.find_cached("key1").id == sid  # type: ignore[union-attr]
    assert meta.io_of(sid, "out") == {"y": out}
    assert meta.lineage_of(out.sha256)[0]["src_sha256"] == inp.sha256
    cid = meta.record_cached("r1", "s2", "key1", sid, {}, {"y": out})
    assert meta.done_stages("r1").keys() == {"s", "s2"} and meta.stage_runs("r1")[-1].id == cid
    meta.finish_run("r1", "succeeded")
    assert meta.get_run("r1").status == "succeeded"
    assert meta.get_run("r").run_id == "r1", "unique prefix"
    with pytest.raises(RunNotFoundError):
        meta.get_run("nope")
    # WAL mode, and another connection sees committed state.
    if meta.backend == "sqlite":
        assert sqlite3.connect(meta.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = MetadataStore(meta.url)
    assert other._conn.execute("SELECT count(*) FROM stage_runs WHERE status='succeeded'").fetchone()[0] == 1


def test_claim_run_marks_dead_stages_interrupted(tmp_path: Path, metadata_db: str) -> None:
    meta = MetadataStore(metadata_db)
    meta.create_run("r1", "p", "{}", None, str(tmp_path))
    meta.start_stage("r1", "s", 1, None)
    assert len(meta.claim_run("r1")) == 1
    assert meta.stage_runs("r1")[0].status == "interrupted"
    assert meta.get_run("r1").driver_pid == os.getpid()


def test_failed_transaction_rolls_back(tmp_path: Path, metadata_db: str) -> None:
    meta = MetadataStore(metadata_db)
    meta.create_run("r1", "p", "{}", None, str(tmp_path))
    sid = meta.start_stage("r1", "s", 1, None)
    good = ArtifactStore(str(tmp_path / "a")).put_value({"o": 1})
    bad = dataclasses.replace(good, sha256="f" * 64, schema={"not json": {1, 2}})
    with pytest.raises(TypeError):
        meta.succeed_stage(sid, {}, {"good": good, "bad": bad})
    assert meta.stage_runs("r1")[0].status == "running", "no stage marked done without outputs"
    con = MetadataStore(meta.url)._conn
    assert con.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 0, "partial inserts rolled back"


def test_a_full_artifact_root_leaves_no_half_written_upload(tmp_path: Path, reliability: Any) -> None:
    """ENOSPC while copying into the root: a StorageError naming the root, tmp/ empty, no object."""
    reliability.fault("artifact root full (ENOSPC) mid-upload")
    import errno

    import pyarrow.fs as pafs

    store = ArtifactStore(str(tmp_path / "root"))

    class FullStream:
        def __init__(self, inner: Any) -> None:
            self.inner, self.written = inner, 0

        def write(self, chunk: bytes) -> None:
            if self.written + len(chunk) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.inner.write(chunk)
            self.written += len(chunk)

        def __enter__(self) -> FullStream:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.inner.close()

    real = pafs.LocalFileSystem()

    class FullFS:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def open_output_stream(self, path: str) -> FullStream:
            return FullStream(real.open_output_stream(path))

    store.fs = FullFS()
    with pytest.raises(StorageError, match=r"cannot write artifact: \[Errno 28\] No space left on device"):
        store.put_value(list(range(10_000)))
    assert [p for p in (tmp_path / "root" / "tmp").iterdir()] == []
    assert not any(p.is_file() for p in (tmp_path / "root" / "objects").rglob("*"))
    store.fs = real
    ref = store.put_value(list(range(10_000)))  # room again: stored whole
    assert store.exists(ref) and store.get_value(ref) == list(range(10_000))
