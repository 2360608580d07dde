"""Fault injection on a real local Ray (issue 9 part 4).  The other faults are where their
cluster is: the driver kill in test_crash_resume.py; the controller kill, a node removed
mid-stage, during a data stage and during training in test_scheduler_cluster.py (the
multi-node Cluster); a training worker kill in test_train_stage.py; a Serve replica crash
under load in test_serving.py.  Every one records itself through the ``reliability``
fixture, and the session prints the counts (faults injected and survived, generated
inputs, records lost).  Here:

- the disk fills up while a worker stores a stage's output, and the artifact root stops
  being writable during a run: the stage fails with a clear error naming it, nothing
  half-written is left or registered, and the next run stores the output normally;
- three pipelines write one metadata store at once: every run, stage run and artifact of
  each is recorded.

After each fault every CPU of the cluster is free again and the scheduler holds no job.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

import raypipe
from raypipe.store.metadata import MetadataStore
from tests.conftest import assert_cluster_free, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

F = "tests.integration.funcs"


def stage(name: str, fn: str, **kw: Any) -> raypipe.StageConfig:
    args = kw.pop("args", {})
    return raypipe.StageConfig(name=name, kind="python", params={"function": f"{F}:{fn}", "args": args}, **kw)


def _dead(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie its parent has not reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


#: fault -> (the stage's function in tests/integration/funcs.py, what its error says)
STORAGE_FAULTS = {
    # numpy says "N requested and M written"
    "disk full while a worker stores a stage's output": ("fill_disk", ["cannot serialize a ndarray to store it"]),
    "artifact root unwritable during a run": ("lose_write_access", ["cannot write artifact", "Permission denied"]),
}


@pytest.mark.parametrize("fault", list(STORAGE_FAULTS))
def test_storage_fault_while_storing_an_output(tmp_path: Path, reliability: Any, fault: str) -> None:
    reliability.fault(fault)
    fn, errors = STORAGE_FAULTS[fault]
    store = tmp_path / "store"
    pid_file = tmp_path / "worker.pid"
    args = {"pid_file": str(pid_file)} | ({"limit_bytes": 65536} if fn == "fill_disk" else {"store": str(store)})
    cfg = raypipe.PipelineConfig(
        name="storage-fault",
        storage=str(store),
        stages=[
            stage("make", "make", args={"n": 5}),
            stage("out", fn, args=args, depends_on=["make"], retries={"max": 0}),
        ],
    )
    res = raypipe.run(cfg)
    try:
        assert not res.ok and res.stages == {"make": "succeeded", "out": "failed"}
        assert all(e in res.errors["out"] for e in errors), res.errors["out"]
        meta = MetadataStore(str(store / "raypipe.db"))
        try:
            [out] = [sr for sr in meta.stage_runs(res.run_id) if sr.stage == "out"]
            assert out.status == "failed" and meta.io_of(out.id, "out") == {}
            assert meta.get_run(res.run_id).status == "failed"
            # the store knows make's output only, and it is whole
            refs = meta._conn.execute("SELECT uri, size FROM artifacts").fetchall()
            assert len(refs) == 1 and os.path.getsize(refs[0]["uri"]) == refs[0]["size"]
        finally:
            meta.close()
    finally:
        poisoned = int(pid_file.read_text())
        os.kill(poisoned, signal.SIGKILL)  # retire the poisoned worker
        wait_for(lambda: _dead(poisoned), what=f"worker {poisoned} to die")
        for sub in ("tmp", "objects"):
            os.chmod(store / sub, 0o755)
    assert files_under(store / "tmp") == []  # nothing half-written in the root
    assert len(files_under(store / "objects")) == 1
    assert_cluster_free()
    # the root has room and access again: the same pipeline finishes, make's output from the cache
    # (one retry: Ray may still lease the killed worker for an instant after it died)
    rerun = stage("out", "make", args={"n": 50}, retries={"max": 1, "backoff_s": 0})
    again = raypipe.run(cfg.model_copy(update={"stages": [cfg.stages[0], rerun]}))
    assert again.ok and again.stages == {"make": "cached", "out": "succeeded"}
    assert_cluster_free()


def test_two_pipelines_write_one_metadata_store_at_once(tmp_path: Path, reliability: Any) -> None:
    reliability.fault("three pipelines write one metadata store at once")
    store = tmp_path / "store"

    def pipeline(name: str, n: int) -> raypipe.PipelineConfig:
        return raypipe.PipelineConfig(
            name=name,
            storage=str(store),
            stages=[
                stage("a", "make", args={"n": n}),
                stage("b", "add", inputs={"x": "a.out"}, args={"k": 1}),
                stage("c", "total", inputs={"x": "b.out"}),
                stage("d", "total", inputs={"x": "a.out"}),
            ],
        )

    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def go(name: str, n: int) -> None:
        try:
            results[name] = raypipe.run(pipeline(name, n))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(f"p{i}", 3 + i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 3
    assert all(r.ok for r in results.values())
    meta = MetadataStore(str(store / "raypipe.db"))
    try:
        runs = {r.pipeline: r for r in meta.list_runs()}
        reliability.records("runs", 3, len(runs))
        recorded_ok = [sr for r in results.values() for sr in meta.stage_runs(r.run_id) if sr.status == "succeeded"]
        reliability.records("stage runs", 12, len(recorded_ok))
        assert set(runs) == {"p0", "p1", "p2"} and all(r.status == "succeeded" for r in runs.values())
        for name, res in results.items():
            recorded = {sr.stage: sr.status for sr in meta.stage_runs(res.run_id)}
            assert recorded == {s: "succeeded" for s in "abcd"}, (name, recorded)
            for s in "abcd":
                [sr] = [x for x in meta.stage_runs(res.run_id) if x.stage == s]
                assert set(meta.io_of(sr.id, "out")) == set(res.outputs[s])
        # each pipeline's result is its own: sum of (range(n) + 1)
        for i in range(3):
            n = 3 + i
            c = results[f"p{i}"].outputs["c"]["sum"]
            assert raypipe.read_artifact(c.sha256, db=str(store / "raypipe.db")) == sum(range(n)) + n
    finally:
        meta.close()
    assert_cluster_free()
