"""Schedules on a real local Ray: the controller actor ticked with an injected clock, killed and
restarted by Ray (it fires once, not again), a file dropped into a watched folder (one run per
debounce window, whose read saw exactly the snapshot that fired it), and an alias move (one run).
Runs start as real driver processes through the closed loop's launch path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from raypipe.api import schedules
from raypipe.config.cron import CronExpr, describe
from raypipe.schedules.controller import find_controller
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from raypipe.store.schedules import ScheduleStore
from tests.unit.test_registry import model_ref

pytestmark = pytest.mark.usefixtures("ray_local")

PIPELINE = """\
name: scored
storage: {storage}
stages:
  - name: read
    kind: data.read
    params: {{path: {inbox}}}
triggers:
{triggers}
"""


def write(tmp_path: Path, name: str, triggers: str) -> str:
    path = tmp_path / f"{name}.yaml"
    inbox, storage = tmp_path / "inbox", tmp_path / "store"
    path.write_text(PIPELINE.format(storage=storage, inbox=inbox, triggers=triggers))
    return str(path)


def wait_runs(meta: MetadataStore, run_ids: list[str], timeout_s: float = 120.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = {r.run_id: r.status for r in meta.list_runs(limit=50) if r.run_id in run_ids}
        if len(found) == len(run_ids) and "running" not in found.values() or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_fires_once_across_a_restart_and_on_data_and_on_model(tmp_path: Path) -> None:
    import ray

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "seed.csv").write_text("x,y\n1,2\n")
    db = str(tmp_path / "m.db")
    meta = MetadataStore(db)
    reg = ModelRegistry(meta)
    reg.register("digits", model_ref("a"), None, None, None, aliases=["production"])
    cron = 'name: clock\n  schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}'
    data = f"name: drop\n  on_data: {{path: {inbox}, debounce_s: 30}}"
    model = "name: alias\n  on_model: {model: digits, alias: production}"
    for name, triggers in (("clock", cron), ("drop", data), ("alias", model)):
        schedules.apply(write(tmp_path, name, "  " + triggers), db=db, tick_s=0)
    handle = find_controller(meta.url)
    assert handle is not None

    def tick(t: float) -> list[dict[str, Any]]:
        fires: list[dict[str, Any]] = ray.get(handle.tick.remote(t), timeout=60)
        return fires

    due = CronExpr.parse("0 3 * * *").next_after(time.time(), "Europe/Berlin")
    assert due is not None
    first = tick(due + 5)
    assert [(f["schedule"], f["reason"], f["status"]) for f in first] == [
        ("clock", f"cron 0 3 * * * at {describe(due, 'Europe/Berlin')}", "starting")
    ]
    pid = ray.get(handle.status.remote(), timeout=30)["pid"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + 60
    while True:  # Ray restarts it; its state comes back from the store
        try:
            if ray.get(handle.status.remote(), timeout=10)["pid"] != pid:
                break
        except ray.exceptions.RayActorError:
            pass
        assert time.monotonic() < deadline, "the controller did not restart"
        time.sleep(0.2)
    assert tick(due + 5) == [] and tick(due + 10) == []  # the same time, and later: no second fire

    # A file dropped into the watched folder opens a window; another in it joins; one run.
    (inbox / "a.csv").write_text("x,y\n3,4\n")
    assert tick(due + 20) == []
    (inbox / "b.csv").write_text("x,y\n5,6\n")
    assert tick(due + 40) == []
    dropped = tick(due + 51)
    assert [(f["schedule"], f["reason"]) for f in dropped] == [("drop", "files changed: a.csv, b.csv")]
    snap = dropped[0]["files"]
    assert sorted(Path(p).name for p in snap) == ["a.csv", "b.csv", "seed.csv"]
    assert tick(due + 90) == []

    # An alias move starts one run.
    reg.register("digits", model_ref("b"), None, None, None)
    reg.set_alias("digits", 2, "production")
    moved = tick(due + 100)
    assert [(f["schedule"], f["reason"]) for f in moved] == [("alias", "alias production -> v2 (was v1)")]
    assert tick(due + 110) == []

    runs = [dropped[0]["run_id"], moved[0]["run_id"]]
    assert wait_runs(meta, runs) == {runs[0]: "succeeded", runs[1]: "succeeded"}
    # The run's read saw exactly the snapshot that fired it (recorded with the run and the fire).
    config = json.loads(meta.get_run(runs[0]).config_json)
    assert config["stages"][0]["params"]["path"] == sorted(snap)
    store = ScheduleStore(meta)
    assert [f.status for f in store.fires("clock")] == ["started"]
    assert [(f.status, f.run_status) for f in store.fires("drop")] == [("started", "succeeded")]
    assert store.fires("drop")[0].files == snap
    assert meta.get_run(runs[1]).actor == store.get("alias").owner  # runs act for the schedule's owner
    hist = schedules.history("drop", db=db)
    assert hist["fires"][0]["run_id"] == runs[0]
    ray.kill(handle, no_restart=True)
    meta.close()
