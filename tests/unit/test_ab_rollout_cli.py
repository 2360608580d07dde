"""`raypipe ab report` and `raypipe rollout ...` printing (the api calls replaced: no Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from raypipe import api
from raypipe.cli import app
from raypipe.exceptions import RaypipeError
from raypipe.serving.abtest.stats import ab_report
from raypipe.serving.rollout.run import Ports, RolloutRun
from raypipe.serving.rollout.settings import Guardrails, RolloutPlan
from raypipe.store.metadata import MetadataStore
from raypipe.store.rollouts import RolloutStore

runner = CliRunner()


def conv(requests: int, n: int, positives: int, errors: int, p99: float) -> dict[str, Any]:
    return {
        "requests": requests,
        "errors": errors,
        "shadow_requests": 0,
        "latency_ms": {"p50": p99 / 3, "p95": p99 / 2, "p99": p99},
        "outcomes": {"n": n, "sum": float(positives), "sumsq": float(positives), "positives": positives},
    }


def report() -> dict[str, Any]:
    snaps = {"v3": conv(1000, 1000, 120, 10, 20.0), "v4": conv(1000, 1000, 150, 40, 25.0)}
    rep = ab_report(snaps, {"v3": 50, "v4": 50})
    return {"app": "digits", "model": "digits", "url": None, "since": None, "window_s": None, **rep.to_dict()}


def test_ab_report_table_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "ab_report", lambda *a, **k: report())
    r = runner.invoke(app, ["ab", "report", "digits"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "v4 vs v3" in r.output and "conversion" in r.output and "error_rate" in r.output
    assert "B better" in r.output and "B worse" in r.output  # conversion up, errors up
    assert "+3.00%" in r.output and "[0.01%, 5.99%]" in r.output
    assert "sample ratio: chi-square" in r.output
    r = runner.invoke(app, ["ab", "report", "digits", "--json"])
    doc = json.loads(r.output)
    assert doc["comparisons"][0]["outcome"]["verdict"] == "B better"


def test_ab_report_insufficient_data_says_how_many_more(monkeypatch: pytest.MonkeyPatch) -> None:
    rep = ab_report({"v3": conv(40, 40, 4, 0, 9.0), "v4": conv(10, 10, 2, 0, 9.0)}, {"v3": 80, "v4": 20})
    monkeypatch.setattr(api, "ab_report", lambda *a, **k: {"app": "digits", "model": "digits", **rep.to_dict()})
    r = runner.invoke(app, ["ab", "report", "digits"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "insufficient data (needs v3 +60, v4 +90)" in r.output


def test_errors_are_one_line_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(*a: Any, **k: Any) -> None:
        raise RaypipeError("no app 'nope' is deployed; deployed apps: digits")

    for name in ("ab_report", "rollout_status", "rollout_abort"):
        monkeypatch.setattr(api, name, unknown)
    for args in (["ab", "report", "nope"], ["rollout", "status", "nope"], ["rollout", "abort", "nope"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2
        assert r.output.strip() == "error: no app 'nope' is deployed; deployed apps: digits"
    r = runner.invoke(app, ["rollout", "start", "digits", "--candidate", "v4", "--steps", "5,x"])
    assert r.exit_code == 2 and "--steps '5,x'" in r.output
    monkeypatch.undo()  # the real api: its checks run before Ray is touched
    r = runner.invoke(app, ["ab", "report", "digits", "--since", "-5"])
    assert r.exit_code == 2 and r.output.startswith("error: --since -5: expected a number of seconds > 0")
    r = runner.invoke(app, ["ab", "report", "digits", "--metric", "revenue"])
    assert r.exit_code == 2 and "--metric 'revenue'" in r.output
    r = runner.invoke(app, ["ab", "report", "digits", "--min-samples", "1"])
    assert r.exit_code == 2 and "min_samples must be at least 2" in r.output


def rollout(
    tmp_path: Path, steps: list[float], guardrails: Guardrails, snaps: dict[str, Any], t: list[float]
) -> tuple[RolloutStore, RolloutRun]:
    """A rollout of v4 against v3 on fake ports (``snaps`` every window, clock ``t[0]``),
    recording its events in a SQLite store."""
    store = RolloutStore(MetadataStore(str(tmp_path / "m.db")))
    p = RolloutPlan(
        rollout_id="digits-1",
        app="digits",
        model="digits",
        baseline="v3",
        candidate="v4",
        steps=steps,
        interval_s=60.0,
        guardrails=guardrails,
    )
    ports = Ports(
        lambda w: None, lambda since: snaps, lambda v, r: 3, lambda e, d: store.record("digits", "digits-1", e, d)
    )
    return store, RolloutRun(p, ports, clock=lambda: t[0])


def rollout_status_doc(store: RolloutStore, run: RolloutRun, live: bool = True) -> dict[str, Any]:
    """What ``api.rollout_status`` returns: the controller's status (or none) and the events."""
    st = run.status()
    return {
        "app": "digits",
        "rollout_id": "digits-1",
        "state": st["state"],
        "live": st if live else None,
        "events": [e.to_dict() for e in store.events("digits")],
        "rollouts": store.rollouts("digits"),
        "note": None,
    }


def test_rollout_status_prints_the_timeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    snaps = {"v3": {"requests": 100, "errors": 0}, "v4": {"requests": 20, "errors": 9}}
    guards = Guardrails.model_validate({"min_requests": 5, "p99_latency_ms": {"min_samples": 5}})
    store, run = rollout(tmp_path, [5.0, 50.0, 100.0], guards, snaps, [1000.0])
    run.begin()
    run.tick()
    assert run.state == "rolled_back"
    status = rollout_status_doc(store, run)
    monkeypatch.setattr(api, "rollout_status", lambda *a, **k: status)
    r = runner.invoke(app, ["rollout", "status", "digits"], terminal_width=250)
    assert r.exit_code == 0, r.output
    assert "rolled_back" in r.output and "started" in r.output and "step 1: v3 95%, v4 5%" in r.output
    assert "rolled back at step 1 of 3 (5% -> 50% -> 100%): v4 was at 5%, now 0%" in r.output
    assert "error_rate: error rate 45.00% (9/20)" in r.output
    r = runner.invoke(app, ["rollout", "status", "digits", "--json"])
    assert [e["event"] for e in json.loads(r.output)["events"]] == ["started", "step", "rolled_back"]


def test_rollout_status_counts_steps_as_listed_and_shows_an_abort(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    t = [1000.0]
    store, run = rollout(tmp_path, [5.0, 25.0, 50.0, 100.0], Guardrails(), {}, t)
    run.begin()
    t[0] += 12
    run.tick()  # wait: step 1 (5%) in progress
    monkeypatch.setattr(api, "rollout_status", lambda *a, **k: rollout_status_doc(store, run))
    r = runner.invoke(app, ["rollout", "status", "digits"], terminal_width=250)
    assert r.exit_code == 0, r.output
    assert "step 1 of 4 (5% -> 25% -> 50% -> 100%): v4 at 5% for 12 s of 60 s" in r.output
    assert "last decision: wait · step 1 (5%) in progress" in r.output
    run.abort("changed my mind")
    for live in (True, False):  # the controller's status, or only the recorded events
        monkeypatch.setattr(api, "rollout_status", lambda *a, live=live, **k: rollout_status_doc(store, run, live))
        r = runner.invoke(app, ["rollout", "status", "digits"], terminal_width=250)
        assert r.exit_code == 0, r.output
        assert "rollout digits-1 of app digits · aborted" in r.output
        assert "aborted at step 1 of 4 (5% -> 25% -> 50% -> 100%): v4 was at 5%, now 0%" in r.output
        assert "aborted: changed my mind" in r.output and "weights: v3 100%, v4 0%" in r.output
        assert "in progress" not in r.output and "of 3" not in r.output
