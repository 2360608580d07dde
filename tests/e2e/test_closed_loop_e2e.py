"""The closed loop end to end, on a local Ray with real Serve over HTTP (127.0.0.1), real
training and real retraining runs (their own driver processes through the scheduler):

1. configs/closed_loop.yaml (smaller: fewer rows and epochs, short windows and canary steps)
   trains v1, registers it as production and serves it with a monitor and the loop armed,
   its candidate deliberately broken (it fails 60% of its requests).  Shifted traffic ->
   one drift event -> one retraining -> v2 registered -> canary -> rolled back: production
   is still v1 at 100%, v2 is gone from the app, the monitor still compares with v1's data.
2. The loop re-armed with a healthy candidate (the serving fault fixed): the drift ends,
   comes back -> one retraining (the same path on the same fresh data: its run is served
   from the cache, v2 again, as a deterministic pipeline should) -> canary -> promoted:
   production v2 at 100%, v1 retired, v2 linked to this cycle's drift event (features and
   statistics) and its retraining run, the monitor's reference is v2's training profile,
   and the same traffic triggers nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raypipe import api
from raypipe.config import PipelineConfig, parse_yaml
from raypipe.examples.closed_loop import Traffic
from raypipe.loop import arming
from raypipe.loop.arming import start_loop
from raypipe.loop.status import find_loop, loop_status
from raypipe.monitoring.monitor import get_monitor, read_config
from raypipe.serving import app as serve_app
from raypipe.serving.spec import ServeSpec
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from tests.conftest import REPO, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

APP = "sensors"
#: The labels of the traffic feed performance drift only with a feedback token (in a file the
#: deploy stage's task reads).
FEEDBACK_TOKEN = "e2e-feedback-4f1a7c9e2b6d8305"
CYCLE_END = ("promoted", "rolled_back", "gate_failed", "retrain_failed", "no_new_model", "failed")


def pipeline(root: Path, port: int) -> dict[str, Any]:
    (root / "feedback_token").write_text(FEEDBACK_TOKEN)
    data, _ = parse_yaml((Path(REPO) / "configs" / "closed_loop.yaml").read_text(), "closed_loop.yaml")
    data["storage"] = str(root / "store")
    data["ray"] = {}
    stages = {s["name"]: s for s in data["stages"]}
    stages["generate"]["params"]["args"]["rows"] = 2000
    stages["train"]["params"]["epochs"] = 4
    deploy = stages["deploy"]["params"]
    deploy["port"] = port
    deploy["auth"] = {"feedback_tokens": [f"${{file:{root}/feedback_token}}"]}
    deploy["monitor"].update(window_rows=150, min_window_rows=100, consecutive=2, reset_windows=2)
    deploy["retrain"].update(
        poll_s=0.5,
        rollout={
            "steps": [50, 100],
            "interval_s": 3,
            "guardrails": {
                "min_requests": 15,
                "error_rate": {"max_increase": 0.05},
                "p99_latency_ms": {"max_ratio": 5.0, "min_increase_ms": 200, "min_samples": 15},
            },
        },
        candidate={"fail_rate": 0.6},  # the broken retraining of part 1
    )
    return data


@pytest.fixture(scope="module")
def loop_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import logging

    import ray
    from ray import serve

    ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    root = tmp_path_factory.mktemp("loop")
    doc = pipeline(root, free_port())
    res = api.run(PipelineConfig.model_validate(doc))
    assert res.ok, res.errors
    meta = MetadataStore(str(root / "store" / "raypipe.db"))
    traffic = Traffic(serve_app.url(APP), threads=3, label_share=0.3, feedback_token=FEEDBACK_TOKEN).start()
    yield {"doc": doc, "meta": meta, "traffic": traffic, "root": root}
    traffic.stop()
    arming.shutdown(APP)  # also stops the app's loop and monitor
    assert find_loop(APP) is None and get_monitor(APP) is None
    serve.shutdown()
    meta.close()
    ray.shutdown()


def cycles(meta: MetadataStore) -> list[dict[str, Any]]:
    return [c for c in loop_status(APP, meta)["cycles"] if c["cycle_id"] != "loop"]


def wait_cycle_end(env: dict[str, Any], n: int, timeout: float = 300.0) -> list[dict[str, Any]]:
    """Wait until ``n`` cycles have ended; their events (loop and rollout), oldest first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [c for c in cycles(env["meta"]) if c["finished"]]
        if len(done) >= n:
            return [
                e for e in loop_status(APP, env["meta"])["timeline"] if e.get("cycle_id") == done[n - 1]["cycle_id"]
            ]
        time.sleep(1.0)
    import ray

    st = loop_status(APP, env["meta"])
    mon = ray.get(get_monitor(APP).status.remote())
    mon = {k: mon[k] for k in ("events", "debounce", "counters", "last_error")}
    logs = {p.name: p.read_text()[-3000:] for p in (env["root"] / "store" / "loops" / APP).glob("*.log")}
    pytest.fail(f"no end of cycle {n} in {timeout:g} s: {st['live']}\n{mon}\n{st['timeline']}\n{logs}")


def wait_windows(n: int, timeout: float = 120.0) -> None:
    import ray

    monitor = get_monitor(APP)

    def total() -> int:
        return sum(v["windows"] for v in ray.get(monitor.status.remote())["variants"].values())

    start = total()
    deadline = time.monotonic() + timeout
    while total() - start < n:
        assert time.monotonic() < deadline, f"fewer than {n} monitor windows closed in {timeout:g} s"
        time.sleep(0.5)


def wait_episode_end(key: str, timeout: float = 180.0) -> None:
    """Until the monitor's debouncer has ended the drift episode ``key`` (``reset_windows`` clean
    windows in a row): rows of batches generated before the shift changed may still be in flight."""
    import ray

    monitor = get_monitor(APP)
    wait_for(
        lambda: not ray.get(monitor.status.remote())["debounce"]["episodes"].get(key, {}).get("active"),
        timeout_s=timeout,
        every_s=0.5,
        what=f"the drift episode {key} to end",
    )


def test_broken_retraining_is_rolled_back_and_production_untouched(loop_env: dict[str, Any]) -> None:
    meta, traffic = loop_env["meta"], loop_env["traffic"]
    reg = ModelRegistry(meta)
    assert reg.get("sensors@production").version == 1
    wait_windows(3)  # clean traffic: no drift, no cycle
    assert cycles(meta) == []
    traffic.shift = 0.5
    events = wait_cycle_end(loop_env, 1)
    names = [e["event"] for e in events if e["source"] == "loop"]
    assert names == ["drift", "retrain_started", "retrain_finished", "canary_started", "rolled_back"], events
    drift = events[0]["detail"]
    # the shifted readings drift (a 0.5-sd shift in a 150-row window: each is detected with
    # high but not certain power, so two of the three at least)
    assert len(set(drift["drifted_features"]) & {"f0", "f1", "f2"}) >= 2 and drift["trigger"] is True
    rolled = [e for e in events if e["source"] == "rollout" and e["event"] == "rolled_back"]
    assert rolled and "error_rate" in rolled[0]["detail"]["reason"]
    # production untouched: alias, weights, the served variants, the monitor's reference
    assert reg.get("sensors@production").version == 1
    st = serve_app.status(APP)
    assert st.weights == {"v1": 100.0} and set(st.variants) == {"v1"}
    assert read_config(APP)["reference_id"].startswith("sensors:1/")
    v2 = reg.get("sensors:2")
    assert "production" not in v2.aliases
    assert [link["kind"] for link in v2.links] == ["reference_profile", "drift_event", "retraining"]
    assert len([c for c in cycles(meta)]) == 1  # drift went on during the cycle: nothing else started


def test_retraining_is_promoted_and_linked_to_its_drift_event(loop_env: dict[str, Any]) -> None:
    meta, traffic = loop_env["meta"], loop_env["traffic"]
    doc = loop_env["doc"]
    deploy = next(s for s in doc["stages"] if s["name"] == "deploy")["params"]
    deploy["retrain"]["candidate"] = {"fail_rate": 0.0}
    spec = ServeSpec.model_validate(deploy)
    store = str(loop_env["root"] / "store")
    start_loop(spec, {**doc, "storage": store}, db=meta.url, storage=store)
    assert find_loop(APP) is not None
    traffic.shift = 0.0  # the drift episode of the failed cycle ends (clean windows in a row) ...
    wait_episode_end("v1/data")
    traffic.shift = 0.5  # ... and comes back
    events = wait_cycle_end(loop_env, 2)
    names = [e["event"] for e in events if e["source"] == "loop"]
    assert names == ["drift", "retrain_started", "retrain_finished", "canary_started", "promoted"], events
    reg = ModelRegistry(meta)
    v2 = reg.get("sensors@production")
    assert v2.version == 2
    st = serve_app.status(APP)
    assert st.weights == {"v2": 100.0} and set(st.variants) == {"v2"}  # v1 retired
    # lineage: v2 <- this cycle's retraining run <- this cycle's drift event (features, statistics)
    cycle = events[0]["cycle_id"]
    [drift] = [
        link["value"] for link in v2.links if link["kind"] == "drift_event" and link["value"]["cycle_id"] == cycle
    ]
    assert drift["monitor_event_id"] == events[0]["detail"]["monitor_event_id"]
    stats = drift["statistics"]  # as in part 1: two of the three shifted readings at least
    assert sum(stats[f]["drifted"] is True and stats[f]["p_value"] < 0.01 for f in ("f0", "f1", "f2")) >= 2, stats
    [retraining] = [
        link["value"] for link in v2.links if link["kind"] == "retraining" and link["value"]["cycle_id"] == cycle
    ]
    run = api.show_run(retraining["run_id"], db=meta.url)
    assert run.run.status == "succeeded" and {sr.stage for sr in run.stages} == {
        "generate",
        "split",
        "profile",
        "train",
        "evaluate",
        "register",
    }
    assert {sr.status for sr in run.stages if sr.stage != "register"} == {"cached"}
    [profile] = [link["value"] for link in v2.links if link["kind"] == "reference_profile"]
    assert read_config(APP)["reference_id"] == f"sensors:2/{profile['sha256'][:12]}"
    # the shifted traffic is v2's normal: more windows, no new cycle
    wait_windows(3)
    assert len(cycles(meta)) == 2
