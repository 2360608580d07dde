"""The drift monitor actor on a real local Ray: logging, windows, events, labels, bounded
memory, status through the API and ``raypipe monitor status``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from raypipe import api
from raypipe.cli import app as cli_app
from raypipe.exceptions import RaypipeError
from raypipe.monitoring.monitor import get_monitor, monitor_name, read_config, start_monitor, stop_monitor
from raypipe.stages.data.profiling import add_counts, finalize, histogram_counts, histogram_edges, partial_profile
from tests.conftest import wait_for

FEATURES = ["f0", "f1", "f2", "f3", "color"]
COLORS = np.array(["red", "green", "blue"])
APP = "drift-it"


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    x = rng.normal(size=(n, 4))
    x[:, :3] += shift
    df = pd.DataFrame(x, columns=FEATURES[:4])
    df["color"] = rng.choice(COLORS, size=n, p=[0.5, 0.3, 0.2])
    return df


@pytest.fixture(scope="module")
def profile() -> dict:
    df = _frame(np.random.default_rng(0), 20_000)
    df["label"] = (df["f0"] > 0).astype(int)
    p = partial_profile(df, sample_size=10_000, seed=0, max_categories=50)
    edges = histogram_edges(p, 20)
    return finalize(p, add_counts({}, histogram_counts(df, edges)), edges)


META = {
    "task": "classification",
    "features": FEATURES,
    "label": "label",
    "classes": [0, 1],
    "metrics": {"val_accuracy": 0.95},
}
SPEC = {
    "window_rows": 200,
    "reservoir_size": 200,
    "history_windows": 4,
    "max_events": 5,
    "max_pending_labels": 300,
    "consecutive": 2,
    "performance": {"window_labels": 100},
}


def _rows(df: pd.DataFrame) -> list[dict]:
    return df.to_dict("records")


def test_monitor_actor(ray_local: str, profile: dict) -> None:
    import ray

    rng = np.random.default_rng(1)
    mon = start_monitor(APP, profile, META, SPEC)
    assert ray.get(mon.ping.remote()) == "ok"
    assert get_monitor(APP) is not None and monitor_name(APP) == "raypipe-monitor-drift-it"
    assert start_monitor(APP, profile, META, SPEC)._actor_id == mon._actor_id  # get-or-create

    # fire-and-forget batches, as the ingress sends them: 4 clean windows, then 4 shifted
    for shift in [0.0] * 8 + [0.5] * 8:
        df = _frame(rng, 100, shift)
        preds = (df["f0"] > 0).astype(int).tolist()
        mon.log.remote("v1", _rows(df), preds)
    # lists in the model's feature order + request ids (the Router's rows)
    df = _frame(rng, 100, 0.5)
    ids = [f"q{i}" for i in range(100)]
    mon.log.remote("v1", df[FEATURES].values.tolist(), [1] * 100, ids, FEATURES)
    assert ray.get(mon.log.remote("v1", [1, 2], [0])) == -1  # a bad batch: counted, never raised

    st = ray.get(mon.status.remote())
    json.dumps(st, allow_nan=False)
    v = st["variants"]["v1"]
    assert v["rows_logged"] == 1700 and v["windows"] == 8 and v["open_window"]["rows"] == 100
    brief = v["windows_brief"]
    assert len(brief) == 4 and all(w["dataset_drifted"] for w in brief)  # the last 4 windows are shifted
    assert v["features"]["f0"]["drifted"] and v["features"]["f0"]["method"] == "ks"
    assert v["features"]["color"]["method"] == "chi2" and v["features"]["color"]["drifted"] is False
    assert v["features"]["f3"]["drift_count"] <= 1
    assert st["counters"]["rejected_batches"] == 1 and "predictions" in st["last_error"]

    events = ray.get(mon.events.remote(0))
    assert [(e["kind"], e["trigger"]) for e in events] == [("data_drift", True)]
    assert ray.get(mon.events.remote(events[0]["event_id"])) == []

    # labels for the logged request ids: 100 labels close one performance window
    matched = ray.get(mon.labels.remote([(rid, 1 if i < 60 else 0) for i, rid in enumerate(ids)]))
    assert matched == 100
    perf = ray.get(mon.status.remote())["variants"]["v1"]["performance"]
    assert perf["last"]["value"] == pytest.approx(0.6) and perf["last"]["drifted"] is True
    assert ray.get(mon.label.remote("never-logged", 1)) is False

    # memory stays bounded however much is logged
    for _ in range(12):
        df = _frame(rng, 500)
        mon.log.remote("v1", _rows(df), [0] * 500, [f"m{rng.integers(1 << 62)}" for _ in range(500)])
    mem = ray.get(mon.memory.remote())
    assert mem["buffer_rows"] <= 200 and mem["buffer_capacity"] == 200
    assert mem["windows_kept"] <= 2 * 4 and mem["events_kept"] <= 5 and mem["pending_labels"] <= 300

    # the retraining hooks of part 4
    state = ray.get(mon.end_retraining.remote(True))
    assert state["in_flight"] is None


def test_status_api_and_cli(ray_local: str, profile: dict) -> None:
    st = api.monitor_status(APP)
    assert st["app"] == APP and "v1" in st["variants"]
    runner = CliRunner()
    res = runner.invoke(cli_app, ["monitor", "status", APP, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["app"] == APP
    res = runner.invoke(cli_app, ["monitor", "status", APP], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for text in ("variant v1", "f0", "ks", "chi2", "(prediction)", "drift events", "data_drift"):
        assert text in res.stdout, res.stdout
    res = runner.invoke(cli_app, ["monitor", "status", "no-such-app"])
    assert res.exit_code == 2
    assert "no drift monitor" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(RaypipeError, match="no drift monitor"):
        api.monitor_status("no-such-app")


def test_restart_keeps_the_configuration(ray_local: str, profile: dict) -> None:
    import ray

    mon = get_monitor(APP)
    ray.get(mon.set_model.remote("v2", {**META, "metrics": {"val_accuracy": 0.77}}))
    ray.kill(mon, no_restart=False)  # a crash: Ray restarts it from the configuration in the KV

    def restarted() -> dict | None:
        try:
            st = ray.get(get_monitor(APP).status.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, AttributeError):
            return None
        return st if not st["variants"] else None

    st = wait_for(restarted, timeout_s=60, what="the monitor to restart")
    assert st["spec"]["window_rows"] == 200 and st["events"] == []
    mon = get_monitor(APP)
    mon.log.remote("v2", _rows(_frame(np.random.default_rng(3), 10)), [0] * 10)
    perf = ray.get(mon.status.remote())["variants"]["v2"]["performance"]
    assert perf["reference"] == 0.77  # v2's own model, set before the crash


def test_replace_stop_and_bad_spec(ray_local: str, profile: dict) -> None:
    import ray

    with pytest.raises(RaypipeError, match="not in the reference profile"):
        start_monitor(APP, profile, META, {"features": ["nope"]})
    mon = start_monitor(APP, profile, META, {"window_rows": 100}, replace=True)
    st = ray.get(mon.status.remote())
    assert st["variants"] == {} and st["spec"]["window_rows"] == 100
    assert set(read_config(APP)["profile"]["columns"]) == set(FEATURES) | {"label"}
    assert stop_monitor(APP) is True
    assert get_monitor(APP) is None and read_config(APP) is None
    assert stop_monitor(APP) is False
