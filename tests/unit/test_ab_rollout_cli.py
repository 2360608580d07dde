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
from raypipe.serve.abstats import ab_report
from raypipe.serve.rollout import Guardrails, Ports, RolloutPlan, RolloutRun
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


def test_rollout_status_prints_the_timeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    meta = MetadataStore(str(tmp_path / "m.db"))
    store = RolloutStore(meta)
    p = RolloutPlan(
        rollout_id="digits-1",
        app="digits",
        model="digits",
        baseline="v3",
        candidate="v4",
        steps=[5.0, 50.0, 100.0],
        interval_s=10.0,
        guardrails=Guardrails.model_validate({"min_requests": 5, "p99_latency_ms": {"min_samples": 5}}),
    )
    t = [1000.0]
    snaps = {"v3": {"requests": 100, "errors": 0}, "v4": {"requests": 20, "errors": 9}}
    run = RolloutRun(
        p,
        Ports(
            lambda w: None, lambda since: snaps, lambda v, r: 3, lambda e, d: store.record("digits", "digits-1", e, d)
        ),
        clock=lambda: t[0],
    )
    run.begin()
    run.tick()
    assert run.state == "rolled_back"
    live = run.status()
    status = {
        "app": "digits",
        "rollout_id": "digits-1",
        "state": live["state"],
        "live": live,
        "events": [e.to_dict() for e in store.events("digits")],
        "rollouts": store.rollouts("digits"),
        "note": None,
    }
    monkeypatch.setattr(api, "rollout_status", lambda *a, **k: status)
    r = runner.invoke(app, ["rollout", "status", "digits"], terminal_width=250)
    assert r.exit_code == 0, r.output
    assert "rolled_back" in r.output and "started" in r.output and "step 1: v3 95%, v4 5%" in r.output
    assert "error_rate: error rate 45.00% (9/20)" in r.output
    r = runner.invoke(app, ["rollout", "status", "digits", "--json"])
    assert [e["event"] for e in json.loads(r.output)["events"]] == ["started", "step", "rolled_back"]
