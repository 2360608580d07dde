"""Every Ray job a stage starts runs inside its grant, and nothing waits forever in silence
(issue 17): on a local 2-CPU Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import raypipe
from raypipe.resources import Resources
from raypipe.serving import reservation
from tests.conftest import reset_scheduler

pytestmark = pytest.mark.usefixtures("ray_local")

F = "tests.integration.funcs"


@pytest.fixture(autouse=True)
def _fresh_scheduler() -> None:
    reset_scheduler()


def pipe(tmp_path: Path, *stages: dict[str, Any], **kw: Any) -> raypipe.PipelineConfig:
    return raypipe.PipelineConfig(
        name="grants", storage=str(tmp_path / "store"), stages=[raypipe.StageConfig(**s) for s in stages], **kw
    )


def test_a_python_stage_making_a_dataset_runs_inside_its_grant_beside_outside_work(tmp_path: Path) -> None:
    """One of the two CPUs is held by work raypipe did not admit (an actor, as a served app's
    replica is): the scheduler grants the stage the other CPU, and the dataset the stage
    returns is written by Ray Data tasks inside that grant.  Before, the stage's task held
    the CPU and the write tasks waited for one forever."""
    import ray

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> str:
            return "ok"

    holder = Holder.remote()
    ray.get(holder.ping.remote())
    try:
        stage = {
            "name": "generate",
            "kind": "python",
            "resources": {"cpu": 1},
            "timeout_s": 120,
            "params": {"function": f"{F}:make_dataset", "args": {"rows": 3000}},
        }
        res = raypipe.run(pipe(tmp_path, stage), use_cache=False)
        assert res.ok, res.errors
        ref = res.outputs["generate"]["data"]
        assert ref.format == "dataset" and ref.schema["num_rows"] == 3000
    finally:
        ray.kill(holder)


def test_a_stage_blocked_by_a_serving_app_names_it_and_gives_up_after_its_wait_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYPIPE_WAIT_NOTICE_S", "1")
    job = reservation.reserve("blocker", [Resources.of(cpu=2)], timeout_s=30)
    try:
        events: list[Any] = []
        stage = {"name": "blocked", "kind": "python", "resources": {"cpu": 1}, "params": {"function": f"{F}:make"}}
        res = raypipe.run(pipe(tmp_path, stage, wait_timeout_s=5), use_cache=False, on_event=events.append)
        waits = [e.message for e in events if e.stage == "blocked" and e.status == "waiting"]
        assert waits, events
        assert all("held by serving app blocker 2 CPU" in w for w in waits), waits
        assert any(w.startswith("still waiting after ") for w in waits), waits  # said again every notice
        assert "largest free block is 0 CPU (node " in waits[0] and "(head)" in waits[0], waits[0]
        assert not res.ok
        assert res.stages["blocked"] == "failed"
        assert "waited 5s for resources (wait_timeout_s: 5)" in res.errors["blocked"], res.errors
        assert "serving app blocker" in res.errors["blocked"]
    finally:
        reservation.release(job["job_id"])
