"""Fault injection on a real local Ray (issue 9 part 4, first pieces; the driver kill is in
test_crash_resume.py, the controller kill and a node removed mid-stage in
test_scheduler_cluster.py, a training worker kill in test_train_stage.py, a Serve replica
crash under load in test_serving.py):

- the artifact store's disk fills up while a stage stores its output: the stage fails with
  a clear error naming it, nothing half-written is left or registered, and the next run
  stores the output normally;
- two pipelines write one metadata store at once: every run, stage run and artifact of
  both is recorded.

After each fault every CPU of the cluster is free again and the scheduler holds no job.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import raypipe
from raypipe.store.metadata import MetadataStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

F = "tests.integration.funcs"


def stage(name: str, fn: str, **kw: Any) -> raypipe.StageConfig:
    args = kw.pop("args", {})
    return raypipe.StageConfig(name=name, kind="python", params={"function": f"{F}:{fn}", "args": args}, **kw)


def assert_cluster_free(timeout_s: float = 60.0) -> None:
    """Every CPU available again and no job held by raypipe's scheduler, within ``timeout_s``."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        total = ray.cluster_resources().get("CPU", 0.0)
        free = ray.available_resources().get("CPU", 0.0)
        jobs = [j for j in raypipe.api.scheduler_queue()["jobs"] if j["state"] in ("queued", "running", "preempting")]
        if free == total and not jobs:
            return
        assert time.monotonic() < deadline, f"after {timeout_s:g} s: {free}/{total} CPUs free, jobs {jobs}"
        time.sleep(0.5)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_full_disk_while_storing_an_output(tmp_path: Path) -> None:
    store = tmp_path / "store"
    pid_file = tmp_path / "worker.pid"
    full = raypipe.PipelineConfig(
        name="full",
        storage=str(store),
        stages=[
            stage("make", "make", args={"n": 5}),
            stage(
                "big",
                "fill_disk",
                args={"limit_bytes": 65536, "pid_file": str(pid_file)},
                depends_on=["make"],
                retries={"max": 0},
            ),
        ],
    )
    objects_before = files_under(store / "objects")
    res = raypipe.run(full)
    try:
        assert not res.ok and res.stages["big"] == "failed" and res.stages["make"] == "succeeded"
        assert "cannot serialize a ndarray to store it" in res.errors["big"]  # numpy: "N requested and M written"
        meta = MetadataStore(str(store / "raypipe.db"))
        try:
            [big] = [sr for sr in meta.stage_runs(res.run_id) if sr.stage == "big"]
            assert big.status == "failed" and meta.io_of(big.id, "out") == {}
            assert meta.get_run(res.run_id).status == "failed"
            # every artifact the store knows is complete; nothing half-written in the root
            refs = meta._conn.execute("SELECT uri, size FROM artifacts").fetchall()
            assert refs and all(os.path.getsize(r["uri"]) == r["size"] for r in refs if os.path.exists(r["uri"]))
        finally:
            meta.close()
        assert files_under(store / "tmp") == []
        assert len(files_under(store / "objects")) == len(objects_before) + 1  # only make's output
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # retire the worker with the file size limit
    assert_cluster_free()
    # the disk has room again: the same pipeline finishes, make's output from the cache
    again = raypipe.run(full.model_copy(update={"stages": [full.stages[0], stage("big", "make", args={"n": 50})]}))
    assert again.ok and again.stages == {"make": "cached", "big": "succeeded"}
    assert_cluster_free()


def test_two_pipelines_write_one_metadata_store_at_once(tmp_path: Path) -> None:
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
