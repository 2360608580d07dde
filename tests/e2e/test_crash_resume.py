"""Kill -9 the driver mid-run: the store stays consistent and `raypipe resume` finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from raypipe.store.artifacts import ArtifactStore
from raypipe.store.metadata import MetadataStore
from tests.conftest import REPO, assert_cluster_free, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RAYPIPE = [sys.executable, "-m", "raypipe.cli"]


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAYPIPE, *args], cwd=REPO, capture_output=True, text=True, timeout=180, **kw)  # type: ignore[call-overload]


def test_sigkill_driver_then_resume(tmp_path: Path, ray_local: str, reliability: Any) -> None:
    store = tmp_path / "store"
    gate, started = tmp_path / "gate", tmp_path / "started"
    gate.write_text("hold")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            name: crashy
            storage: {store}
            stages:
              - {{name: a, kind: python, params: {{function: "tests.integration.funcs:make"}}}}
              - name: b
                kind: python
                inputs: {{x: a.out}}
                params: {{function: "tests.integration.funcs:add"}}
              - name: hold
                kind: python
                depends_on: [a]
                params:
                  function: "tests.integration.funcs:slow"
                  args: {{seconds: 120, started: "{started}", gate: "{gate}"}}
              - name: c
                kind: python
                inputs: {{x: b.out}}
                depends_on: [hold]
                params: {{function: "tests.integration.funcs:total"}}
            """
        )
    )
    proc = subprocess.Popen(
        [*RAYPIPE, "run", str(cfg), "--address", ray_local], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    db = store / "raypipe.db"
    wait_for(lambda: started.exists() and db.exists(), timeout_s=90, what="the hold stage to start")

    def b_done() -> bool:
        meta = MetadataStore(str(db))
        try:
            return any(s.stage == "b" and s.status == "succeeded" for s in meta.stage_runs(meta.list_runs()[0].run_id))
        finally:
            meta.close()

    wait_for(b_done, what="stage b to finish")
    reliability.fault("driver SIGKILLed mid-run, then `raypipe resume`")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    meta = MetadataStore(str(db))
    run = meta.list_runs()[0]
    assert run.status == "running", "a killed driver cannot mark its run"
    before = {s.stage: s.status for s in meta.stage_runs(run.run_id)}
    assert before == {"a": "succeeded", "b": "succeeded", "hold": "running"}
    artifacts = ArtifactStore(run.storage)
    for s in meta.stage_runs(run.run_id):
        if s.status == "succeeded":
            outs = meta.io_of(s.id, "out")
            assert outs and all(artifacts.exists(r) for r in outs.values()), f"{s.stage} done without artifacts"

    listed = json.loads(cli("runs", "--db", str(db), "--json").stdout)
    assert listed[0]["status"] == "interrupted", "a dead driver's run is not shown running forever"
    assert "exited without finishing the run" in listed[0]["error"]

    gate.unlink()
    res = cli("resume", run.run_id[:18], "--db", str(db), "--address", ray_local)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reused" in res.stdout

    history: dict[str, list[str]] = {}
    for s in meta.stage_runs(run.run_id):
        history.setdefault(s.stage, []).append(s.status)
    reliability.records("stage runs", 4, sum(h[-1] == "succeeded" for h in history.values()))
    assert history == {"a": ["succeeded"], "b": ["succeeded"], "hold": ["interrupted", "succeeded"], "c": ["succeeded"]}
    assert meta.get_run(run.run_id).status == "succeeded"

    shown = json.loads(cli("show", run.run_id, "--db", str(db), "--json").stdout)
    assert shown["run"]["status"] == "succeeded"
    assert {s["stage"] for s in shown["stages"]} == {"a", "b", "hold", "c"}

    # Everything the killed driver held is given back.
    assert_cluster_free()


def test_sigterm_stops_the_run_and_records_it_stopped(tmp_path: Path, ray_local: str) -> None:
    """SIGTERM (what `loop stop` and supervisors send) cancels the running stage and ends the
    run `stopped`, never leaving it `running`."""
    store = tmp_path / "store"
    started = tmp_path / "started"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            name: stoppable
            storage: {store}
            stages:
              - name: hold
                kind: python
                params:
                  function: "tests.integration.funcs:slow"
                  args: {{seconds: 120, started: "{started}"}}
            """
        )
    )
    proc = subprocess.Popen(
        [*RAYPIPE, "run", str(cfg), "--address", ray_local], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    wait_for(started.exists, timeout_s=90, what="the hold stage to start")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    meta = MetadataStore(str(store / "raypipe.db"))
    run = meta.list_runs()[0]
    assert run.status == "stopped" and run.error == "stopped: SIGTERM"
    assert [s.status for s in meta.stage_runs(run.run_id)] == ["interrupted"]
    assert_cluster_free()
