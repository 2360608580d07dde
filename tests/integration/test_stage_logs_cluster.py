"""Per-stage logs and the platform's metrics on a real local Ray: a stage's log holds what it
printed, what the task, actor and Ray Data tasks it started printed (Ray's worker files,
found from its task events), and its traceback; ``raypipe logs`` prints it, also from an
object-store root (a ``file://`` URI: uploaded when the attempt ends).  The runner's and the
scheduler's metrics reach Ray's Prometheus endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

import raypipe
from raypipe._ray.actors import find_actor
from raypipe.cli import app
from raypipe.runner.run_metrics import METRICS_ACTOR
from raypipe.scheduler.client import get_controller
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("ray_local")

F = "tests.integration.log_funcs"
runner = CliRunner()


def pipeline(storage: str, name: str, fail: bool = True) -> raypipe.PipelineConfig:
    stages: list[dict[str, Any]] = [
        {"name": "spawn", "kind": "python", "resources": {"cpu": 1}, "params": {"function": f"{F}:spawn"}},
    ]
    if fail:
        stages.append({"name": "fails", "kind": "python", "params": {"function": f"{F}:spawn_then_fail"}})
    return raypipe.PipelineConfig.model_validate({"name": name, "storage": storage, "stages": stages})


def logs(*args: str) -> str:
    r = runner.invoke(app, ["logs", *args])
    assert r.exit_code == 0, r.output
    return r.stdout


def test_a_stage_log_holds_its_ray_workers_output_and_its_traceback(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    res = raypipe.run(pipeline(str(tmp_path / "store"), "logs-local"), db=db)
    assert res.status == "failed" and res.stages["spawn"] == "succeeded"
    text = logs(res.run_id, "spawn", "--db", db)
    for line in (
        "stage says hello",
        "child task says hello",
        "helper actor starts for hello",
        "helper actor works",
        "data task saw 4 rows",
    ):
        assert line + "\n" in text, f"{line!r} not in the log:\n{text}"
    assert "----- Ray task _child" in text and "----- Ray actor _Helper" in text
    assert "__ray_tqdm_magic_token__" not in text
    failed = logs(res.run_id, "fails", "--db", db)
    assert "child task says bye\n" in failed and "RuntimeError: the stage failed after its child said bye" in failed
    whole = logs(res.run_id, "--db", db)
    assert "==> spawn attempt 1 · succeeded <==" in whole and "==> fails attempt 1 · failed <==" in whole
    assert (tmp_path / "store" / "logs" / res.run_id / "spawn" / "1.log").is_file()


def test_an_object_store_root_gets_the_log_when_the_attempt_ends(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    root = f"file://{tmp_path}/bucket"
    res = raypipe.run(pipeline(root, "logs-uri", fail=False), db=db)
    assert res.ok, res.errors
    stored = tmp_path / "bucket" / "logs" / res.run_id / "spawn" / "1.log"
    assert "child task says hello" in stored.read_text()
    assert "helper actor works\n" in logs(res.run_id, "spawn", "--db", db)


def test_the_runner_and_the_scheduler_export_their_metrics(tmp_path: Path) -> None:
    import ray

    db = str(tmp_path / "m.db")
    res = raypipe.run(pipeline(str(tmp_path / "store"), "metrics-run"), db=db)
    assert res.status == "failed"
    actor = find_actor(METRICS_ACTOR)
    assert actor is not None
    snap = ray.get(actor.snapshot.remote())
    outcomes = {tuple(r["tags"].values()): r["value"] for r in snap["raypipe_stage_runs_total"]}
    assert outcomes[("metrics-run", "python", "succeeded")] == 1.0
    assert outcomes[("metrics-run", "python", "failed")] == 1.0
    runs = {tuple(r["tags"].values()): r["value"] for r in snap["raypipe_runs_total"]}
    assert runs[("metrics-run", "failed")] == 1.0
    sched = ray.get(get_controller(create=False).metrics_snapshot.remote())
    assert sum(r["value"] for r in sched["raypipe_scheduler_grants_total"]) >= 1
    assert sum(r["count"] for r in sched["raypipe_scheduler_wait_seconds"]) >= 1

    # What Prometheus scrapes: Ray's metrics agent on this node (it exports every few seconds).
    port = ray._private.worker._global_node.metrics_export_port

    def scraped() -> str | None:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except requests.RequestException:
            return None
        wanted = ("ray_raypipe_runs_total{", 'pipeline="metrics-run"', "ray_raypipe_scheduler_grants_total{")
        return text if all(w in text for w in wanted) else None

    text = str(wait_for(scraped, timeout_s=90, every_s=2, what="raypipe's metrics on Ray's metrics endpoint"))
    assert "ray_raypipe_stage_duration_seconds_bucket{" in text and "ray_raypipe_scheduler_wait_seconds_bucket{" in text
