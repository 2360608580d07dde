"""Claim-then-write (no Ray): writers of one content-addressed path, in threads and in
processes, on a local root and on ``file://`` (pyarrow's filesystem, as an object store
would be used).  One writer publishes, the others wait and reuse it; nobody deletes a
folder another writer holds; stale claims are taken over by exactly one writer; a crash
mid-write leaves nothing that reads as finished.  Then the runner's side: a cache hit
never lands on an unfinished or broken output, and checkpoint folders are per run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from raypipe.exceptions import StorageError
from raypipe.runner.states import StageEventKind
from raypipe.store import claims, integrity
from raypipe.store.artifacts import ArtifactRef, ArtifactStore
from raypipe.store.datasets import StagedDataset, _read_parts, dataset_exists, read_manifest
from tests.unit.claim_funcs import BLOB, ROWS, make_store, stage_parts
from tests.unit.test_executor_backend import Harness, fail, stage

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(autouse=True)
def _fresh_digests() -> None:
    integrity.clear_cache()


@pytest.fixture(params=["local", "object-store"])
def kind(request: pytest.FixtureRequest) -> str:
    """``local``: a path (atomic claims: links and renames; a dataset folder renamed in whole).
    ``object-store``: a ``file://`` root through a filesystem that is not local, so the
    store takes its object-store code (advisory claims, files moved in one by one, the
    manifest last) on real files shared by processes."""
    return str(request.param)


def writer(what: str, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.unit.claim_funcs", what, *map(str, args)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen[str]], code: int = 0) -> list[tuple[str, str]]:
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [code] * len(procs), [o[1][-2000:] for o in outs]
    return outs


def ref_of(out: str) -> ArtifactRef:
    return ArtifactRef.from_dict(json.loads(out.strip().splitlines()[-1]))


def start_together(go: Path) -> None:
    time.sleep(0.5)  # the writers import and prepare; they start together when `go` appears
    go.touch()


def assert_intact(store: ArtifactStore, ref: ArtifactRef) -> None:
    """Finished and of this version, every file of the manifest in the folder and hashing to
    its SHA-256, every row there."""
    assert dataset_exists(store, ref)
    manifest = read_manifest(store, ref)
    assert manifest["version"] == ref.sha256
    folder = Path(ref.uri.removeprefix("file://"))
    for f in manifest["files"]:
        assert integrity.sha256_file(str(folder / f["name"])) == f["sha256"]
    base = store._path(store._rel_of(ref.uri))
    batch = {
        "path": np.array([f"{base}/{f['name']}" for f in manifest["files"]]),
        "sha256": np.array([f["sha256"] for f in manifest["files"]]),
    }
    rows = _read_parts(batch, fs=store.root, uri=ref.uri)
    assert sorted(rows.column("x").to_pylist()) == list(range(ROWS))


def publishing(op: str, path: str) -> bool:
    """The step that makes a dataset finished: the rename of its folder into ``datasets/``
    (local), the manifest written there (object stores)."""
    if "/datasets/" not in path:
        return False
    return "_manifest" in path if op == "write" else "/" not in path.split("/datasets/", 1)[1]


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# ----------------------------------------------------------------------------- claims
def test_a_second_writer_waits_for_the_holder_then_takes_the_claim(tmp_path: Path, caplog: Any) -> None:
    fs = pafs.LocalFileSystem()
    order: list[str] = []
    got_it = threading.Event()

    def second() -> None:
        with claims.claim(fs, str(tmp_path), "datasets-v1", "dataset v1"):
            order.append("second")
        got_it.set()

    caplog.set_level(logging.WARNING, "raypipe.store")
    with claims.owner("run-A", "data", 1), claims.claim(fs, str(tmp_path), "datasets-v1", "dataset v1") as held:
        assert held.held()
        holder = claims.Holder.parse((tmp_path / "claims" / "datasets-v1.claim").read_bytes())
        assert holder is not None and (holder.run_id, holder.stage, holder.pid) == ("run-A", "data", os.getpid())
        t = threading.Thread(target=second)
        t.start()
        wait_until(lambda: any("waiting for run run-A" in r.getMessage() for r in caplog.records), "the log line")
        assert not got_it.is_set()
        order.append("first")
    t.join()
    assert order == ["first", "second"]
    line = next(r.getMessage() for r in caplog.records if "waiting for" in r.getMessage())
    assert line.startswith(
        f"dataset v1: waiting for run run-A, stage 'data' attempt 1 (pid {os.getpid()} on {os.uname().nodename}"
    )
    assert empty(tmp_path / "claims")


def test_waiting_is_bounded_and_the_error_names_the_holder(tmp_path: Path) -> None:
    fs = pafs.LocalFileSystem()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with claims.claim(fs, str(tmp_path), "objects-abc", "artifact abc", wait_s_=0.3):
                pass
        except StorageError as e:
            errors.append(e)

    with claims.owner("run-A", "fit"), claims.claim(fs, str(tmp_path), "objects-abc", "artifact abc"):
        t = threading.Thread(target=second)
        t.start()
        t.join()
    [e] = errors
    assert isinstance(e, claims.ClaimError)
    assert "artifact abc: still claimed by run run-A, stage 'fit'" in str(e) and "RAYPIPE_CLAIM_WAIT_S" in str(e)


def test_the_wait_and_staleness_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_CLAIM_WAIT_S", "12.5")
    monkeypatch.setenv("RAYPIPE_CLAIM_STALE_S", "30")
    assert (claims.wait_s(), claims.stale_s()) == (12.5, 30.0)
    monkeypatch.setenv("RAYPIPE_CLAIM_STALE_S", "soon")
    with pytest.raises(StorageError, match=r"\$RAYPIPE_CLAIM_STALE_S: got 'soon'; expected a number of seconds"):
        claims.stale_s()


def test_the_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path, kind: str, caplog: Any) -> None:
    finish([writer("die_holding", kind, tmp_path, "datasets-v2")])
    assert (tmp_path / "claims" / "datasets-v2.claim").exists()
    caplog.set_level(logging.WARNING, "raypipe.store")
    fs = make_store(kind, tmp_path).fs
    with claims.claim(fs, str(tmp_path), "datasets-v2", "dataset v2", stale_s_=3600) as held:
        assert held.held()
    assert any("took over the stale claim of run dead-run" in r.getMessage() for r in caplog.records)
    assert empty(tmp_path / "claims")


def write_claim(root: Path, key: str, *, host_id: str, age_s: float, run_id: str = "far-run") -> Path:
    """A claim as another host's writer would leave it, its heartbeat ``age_s`` old."""
    holder = claims.Holder("t" * 32, 1, "elsewhere", host_id, time.time() - age_s, run_id, "data", 1)
    path = root / "claims" / f"{key}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(holder.to_bytes())
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_another_hosts_claim_is_stale_only_once_its_heartbeat_is_old(tmp_path: Path, kind: str) -> None:
    fs = make_store(kind, tmp_path).fs
    write_claim(tmp_path, "k", host_id="elsewhere|boot|1", age_s=5)
    with pytest.raises(claims.ClaimError, match="still claimed by run far-run"):  # its pid 1 is not ours to check
        with claims.claim(fs, str(tmp_path), "k", "k", stale_s_=60, wait_s_=0.3):
            pass
    write_claim(tmp_path, "k", host_id="elsewhere|boot|1", age_s=120)
    with claims.claim(fs, str(tmp_path), "k", "k", stale_s_=60) as held:
        assert held.held()
    assert empty(tmp_path / "claims")


def test_the_holder_keeps_its_claim_fresh(tmp_path: Path, kind: str) -> None:
    with claims.claim(make_store(kind, tmp_path).fs, str(tmp_path), "k", "k", stale_s_=0.6) as held:
        path = Path(held.path)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
        wait_until(lambda: time.time() - path.stat().st_mtime < 60, "a heartbeat")


def test_a_claim_taken_over_is_lost_and_its_release_leaves_the_new_one(tmp_path: Path, kind: str) -> None:
    with claims.claim(make_store(kind, tmp_path).fs, str(tmp_path), "k", "dataset k") as held:
        Path(held.path).rename(tmp_path / "aside")  # what a taker does with a claim it judged stale
        newer = write_claim(tmp_path, "k", host_id=claims.host_id(), age_s=0, run_id="newer")
        assert not held.held()
        with pytest.raises(claims.ClaimError, match="dataset k: lost its claim"):
            held.check("dataset k")
    after = claims.Holder.parse(newer.read_bytes())
    assert after is not None and after.run_id == "newer"


def test_processes_racing_for_a_stale_claim_hold_it_one_at_a_time(tmp_path: Path) -> None:
    """Four processes start at once on a stale claim: exactly one takes it over, and then
    they hold the claim strictly one after another (local roots: the claim is atomic)."""
    write_claim(tmp_path, "k", host_id="elsewhere|boot|1", age_s=3600)
    log, go = tmp_path / "log", tmp_path / "go"
    log.touch()
    procs = [writer("exclusive", "local", tmp_path, go, log, 5) for _ in range(4)]
    start_together(go)
    stderr = [err for _, err in finish(procs)]
    lines = log.read_text().split()
    assert len(lines) == 4 * 5 * 4
    for i in range(0, len(lines), 4):
        enter, pid, exit_, pid2 = lines[i : i + 4]
        assert (enter, exit_) == ("enter", "exit") and pid == pid2, f"two holders at once: {lines[i : i + 4]}"
    assert sum(e.count("took over the stale claim of run far-run") for e in stderr) == 1, stderr
    assert empty(tmp_path / "claims")


# ----------------------------------------------------------------------------- datasets
def test_the_second_writer_waits_and_reuses_and_never_deletes_the_holders_folder(
    tmp_path: Path, kind: str, caplog: Any
) -> None:
    """Writer A holds the version's claim and is publishing (on an object store its files are
    in the final folder already, the manifest not yet: what the second writer used to
    delete); writer B of the same version (other files) waits, naming A, deletes
    nothing, and then reuses A's dataset."""
    caplog.set_level(logging.WARNING, "raypipe.store")
    publishing_now, go_on = threading.Event(), threading.Event()

    def hold_a(op: str, path: str) -> None:
        if publishing(op, path):
            publishing_now.set()
            assert go_on.wait(120)

    store_a, store_b = make_store(kind, tmp_path, hold_a), make_store(kind, tmp_path)
    staged_a, stats_a = stage_parts(store_a, 100)
    staged_b, stats_b = stage_parts(store_b, 250)
    refs: dict[str, ArtifactRef] = {}

    def commit(name: str, staged: StagedDataset, stats: list[dict[str, Any]]) -> None:
        with claims.owner(f"run-{name}", "data", 1):
            try:
                refs[name] = staged.commit(stats, pa.schema([]))
            finally:
                staged.discard()

    a = threading.Thread(target=commit, args=("A", staged_a, stats_a))
    a.start()
    assert publishing_now.wait(60)
    b = threading.Thread(target=commit, args=("B", staged_b, stats_b))
    b.start()
    wait_until(lambda: any("waiting for run run-A" in r.getMessage() for r in caplog.records), "B to wait for A")
    datasets = tmp_path / "datasets"
    before = {str(p) for p in datasets.rglob("*")}
    if kind == "object-store":
        assert len([p for p in before if p.endswith(".parquet")]) == len(stats_a), "A's files are in place"
    go_on.set()
    a.join()
    b.join()
    assert refs["A"] == refs["B"], "B returns A's dataset"
    assert_intact(store_b, refs["B"])
    assert before <= {str(p) for p in datasets.rglob("*")}, "B deleted nothing of A's"
    assert {f["name"] for f in read_manifest(store_b, refs["B"])["files"]} == {s["file"] for s in stats_a}
    assert empty(tmp_path / "tmp") and empty(tmp_path / "claims")


def test_processes_writing_one_dataset_at_once_leave_one_intact_dataset(tmp_path: Path, kind: str) -> None:
    go = tmp_path / "go"
    procs = [writer("write_dataset", kind, tmp_path, go, step, "no") for step in (60, 100, 150, 300)]
    start_together(go)
    refs = [ref_of(out) for out, _ in finish(procs)]
    assert {(r.uri, r.sha256) for r in refs} == {(refs[0].uri, refs[0].sha256)}
    store = make_store(kind, tmp_path)
    stored = [r for r in refs if r.size == read_manifest(store, r)["bytes"]]
    assert_intact(store, stored[0])
    [folder] = (tmp_path / "datasets").iterdir()
    if kind == "local":  # the claim is atomic: one writer published, the others reused it
        assert all(r == refs[0] for r in refs)
        names = [f["name"] for f in read_manifest(store, refs[0])["files"]]
        assert sorted(p.name for p in folder.iterdir()) == sorted(["_manifest.json", *names]), "the winner's whole"
    assert empty(tmp_path / "tmp") and empty(tmp_path / "claims")


@pytest.mark.parametrize("crash", ["publish", "second-part"])
def test_a_writer_killed_mid_write_leaves_nothing_finished_and_the_next_one_writes_it(
    tmp_path: Path, kind: str, crash: str
) -> None:
    if crash == "second-part" and kind == "local":
        pytest.skip("a local root renames the whole folder at once: there are no parts in place before it")
    go = tmp_path / "go"
    go.touch()
    finish([writer("write_dataset", kind, tmp_path, go, 100, crash)], code=9)
    assert list(tmp_path.glob("datasets/*/_manifest.json")) == [], "nothing reads as finished"
    assert not empty(tmp_path / "claims"), "the dead writer's claim is left"
    if crash == "second-part":
        assert len(list(tmp_path.glob("datasets/*/*.parquet"))) == 1, "a part without a manifest"
    [(out, err)] = finish([writer("write_dataset", kind, tmp_path, go, 150, "no")])
    assert "took over the stale claim of run run-" in err
    ref = ref_of(out)
    assert_intact(make_store(kind, tmp_path), ref)
    assert empty(tmp_path / "claims")


def test_a_finished_dataset_whose_file_was_tampered_is_written_again(tmp_path: Path, kind: str) -> None:
    store = make_store(kind, tmp_path)
    staged, stats = stage_parts(store, 200)
    ref = staged.commit(stats, pa.schema([]))
    staged.discard()
    victim = Path(ref.uri.removeprefix("file://")) / read_manifest(store, ref)["files"][0]["name"]
    data = bytearray(victim.read_bytes())
    data[50] ^= 1
    victim.write_bytes(bytes(data))
    staged, stats = stage_parts(store, 300)
    again = staged.commit(stats, pa.schema([]))
    staged.discard()
    assert again.sha256 == ref.sha256
    assert_intact(store, again)


# ----------------------------------------------------------------------------- objects
def test_processes_storing_one_object_at_once_and_a_crash_mid_upload(tmp_path: Path, kind: str) -> None:
    go = tmp_path / "go"
    go.touch()
    finish([writer("put_object", kind, tmp_path, go, "upload")], code=9)
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file()], "no object from the crashed upload"
    go.unlink()
    procs = [writer("put_object", kind, tmp_path, go, "no") for _ in range(3)]
    start_together(go)
    refs = [ref_of(out) for out, _ in finish(procs)]
    assert all(r == refs[0] for r in refs)
    store = make_store(kind, tmp_path)
    assert store.exists(refs[0]) and store.read_bytes(refs[0]) == BLOB
    assert len([p for p in (tmp_path / "objects").rglob("*") if p.is_file()]) == 1
    assert empty(tmp_path / "claims")


# ----------------------------------------------------------------------------- the runner
@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.meta.close()


def dataset_outputs(h: Harness) -> None:
    """Stage tasks of the fake backend return a dataset ``out`` (what a data stage writes)."""
    real = h.backend.result

    def result(handle: Any, timeout_s: float | None = None) -> Any:
        out = real(handle, timeout_s)
        if isinstance(out, dict) and "outputs" in out:
            store = ArtifactStore(h.artifacts.root)
            staged, stats = stage_parts(store, 200)
            try:
                out["outputs"] = {"out": staged.commit(stats, pa.schema([])).to_dict()}
            finally:
                staged.discard()
        return out

    h.backend.result = result  # type: ignore[method-assign]


@pytest.mark.parametrize("damage", ["no manifest", "a file missing", "a file cut short", "another version's manifest"])
def test_a_cache_hit_never_lands_on_an_unfinished_or_broken_dataset(h: Harness, damage: str) -> None:
    dataset_outputs(h)
    plan = h.plan(stage("a"))
    first = h.run(plan, "r1")
    ref = first.outputs["a"]["out"]
    folder = Path(ref.uri)
    manifest = json.loads((folder / "_manifest.json").read_text())
    part = folder / manifest["files"][0]["name"]
    if damage == "no manifest":  # as a writer that crashed (or is still writing) leaves it
        (folder / "_manifest.json").unlink()
    elif damage == "a file missing":
        part.unlink()
    elif damage == "a file cut short":
        part.write_bytes(part.read_bytes()[:-10])
    else:
        (folder / "_manifest.json").write_text(json.dumps({**manifest, "version": "0" * 64}))
    h.backend.launched.clear()
    again = h.run(plan, "r2")
    assert again.stages == {"a": "succeeded"} and h.backend.stages_launched() == ["a"]
    assert StageEventKind.STALE in h.seen("a")
    assert again.outputs["a"]["out"].sha256 == ref.sha256
    assert_intact(h.artifacts, again.outputs["a"]["out"])


def test_a_cache_hit_on_an_intact_dataset_is_taken(h: Harness) -> None:
    dataset_outputs(h)
    plan = h.plan(stage("a"))
    h.run(plan, "r1")
    h.backend.launched.clear()
    assert h.run(plan, "r2").stages == {"a": "cached"} and h.backend.launched == []


def test_checkpoint_folders_are_per_run_and_kept_across_attempts_and_resume(h: Harness) -> None:
    plan = h.plan(stage("a", retries={"max": 1, "backoff_s": 0}), stage("b", inputs={"x": "a.out"}))
    h.backend.script("a", fail(OSError("node lost")))
    h.backend.script("b", fail(ValueError("bug")))
    first = h.run(plan, "r1")
    assert first.stages == {"a": "succeeded", "b": "failed"}
    h.meta.claim_run("r1")
    assert h.run(plan, "r1", reuse=h.meta.done_stages("r1")).ok
    h.run(plan, "r2", use_cache=False)
    dirs = [(t.task.payload["run_id"], t.stage, t.task.payload["checkpoint_dir"]) for t in h.backend.launched]
    a1, a2, b1, b_resumed, a_r2, b_r2 = (d for _, _, d in dirs)
    assert a1 == a2, "a retry continues from the attempt before it"
    assert b1 == b_resumed, "resume finds the run's own checkpoints"
    assert len({a1, a_r2}) == 2 and len({b1, b_r2}) == 2, "another run of the same stages has its own"
    root = h.artifacts.root
    assert a1.startswith(f"{root}/checkpoints/r1/a/") and a_r2.startswith(f"{root}/checkpoints/r2/a/")


def test_a_run_id_is_a_folder_name(h: Harness) -> None:
    from raypipe.exceptions import RaypipeError
    from raypipe.runner.cache import checkpoint_dir
    from raypipe.runner.driver import start_run

    for bad in ("..", ".hidden"):
        with pytest.raises(RaypipeError, match=r"not starting with '\.'"):
            start_run(h.plan(stage("a")), run_id=bad)
    with pytest.raises(ValueError, match="not usable as folder names"):
        checkpoint_dir("..", "a", "k" * 64)
    assert checkpoint_dir("r.1", "a", "k" * 64) == f"checkpoints/r.1/a/{'k' * 24}"
