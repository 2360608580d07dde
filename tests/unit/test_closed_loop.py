"""The closed loop's core (raypipe.loop.core.LoopCore) against the real drift monitor core,
with the world (runs, registry, Serve, rollouts) played by a fake; and the retraining pipeline."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest

from raypipe.exceptions import ConfigError
from raypipe.loop.core import LOOP_SERIES, LoopCore, Ports
from raypipe.loop.cut import register_stage, retraining_pipeline
from raypipe.monitoring.monitor_core import MonitorCore
from raypipe.serving.spec import RetrainSpec
from raypipe.stages.data.profiling import add_counts, finalize, histogram_counts, histogram_edges, partial_profile
from raypipe.store.metadata import MetadataStore
from raypipe.store.rollouts import LOOP_FINAL, LoopStore

FEATURES = [f"f{i}" for i in range(5)]


def make_profile(df: pd.DataFrame) -> dict:
    p = partial_profile(df, sample_size=10_000, seed=0, max_categories=50)
    edges = histogram_edges(p, 20)
    return finalize(p, add_counts({}, histogram_counts(df, edges)), edges)


def normal(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, 5))
    x[:, :3] += shift
    return x


@pytest.fixture(scope="module")
def profiles() -> dict[str, dict]:
    rng = np.random.default_rng(42)
    return {
        "clean": make_profile(pd.DataFrame(normal(rng, 20_000), columns=FEATURES)),
        "shifted": make_profile(pd.DataFrame(normal(rng, 20_000, 0.5), columns=FEATURES)),
    }


@dataclass
class World:
    """Everything the loop touches, as plain state the test drives."""

    monitor: MonitorCore
    profiles: dict[str, dict]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # run id -> registered version
    production: int = 1
    weights: dict[str, float] = field(default_factory=lambda: {"v1": 100.0})
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: list[tuple[int, str, dict]] = field(default_factory=list)
    events: list[tuple[str, str, dict]] = field(default_factory=list)
    references: list[str] = field(default_factory=lambda: ["clean"])

    def ports(self) -> Ports:
        def start_run(cycle_id: str, drift: Any) -> str:
            rid = f"run-{len(self.run_ids) + 1}"
            self.run_ids.append(rid)
            self.runs[rid] = {"status": "running", "driver_alive": True}
            return rid

        def add_candidate(version: int) -> str:
            self.weights[f"v{version}"] = 0.0
            return f"v{version}"

        def start_rollout(label: str) -> str:
            rid = f"rollout-{len(self.rollouts) + 1}"
            self.rollouts[rid] = {"state": "running", "candidate": label}
            return rid

        def promoted(version: int, label: str, st: Any) -> dict:
            old = f"v{self.production}"
            self.production = version
            self.weights = {label: 100.0}
            self.references.append("shifted")
            self.monitor.set_reference(self.profiles["shifted"], retrained=True)
            return {"retired": [old]}

        def rolled_back(label: str) -> None:
            self.weights.pop(label, None)

        return Ports(
            poll=lambda since: {"started_at": self.monitor.started_at, "events": self.monitor.events_since(since)},
            begin_retraining=lambda eid, note: self.monitor.begin_retraining(eid, note),
            end_retraining=lambda ok: self.monitor.end_retraining(ok),
            start_run=start_run,
            run_state=lambda rid: self.runs[rid],
            resume_run=lambda rid: self.resumed.append(rid),
            registered=lambda rid: (
                {"version": self.versions[rid], "production": self.production, "metrics": {"accuracy": 0.95}}
                if rid in self.versions
                else None
            ),
            add_candidate=add_candidate,
            start_rollout=start_rollout,
            rollout_state=lambda rid: self.rollouts[rid],
            promoted=promoted,
            rolled_back=rolled_back,
            link=lambda v, kind, value: self.links.append((v, kind, dict(value))),
            record=lambda series, event, detail: self.events.append((series, event, dict(detail))),
        )

    def cycle_events(self) -> list[str]:
        return [e for s, e, _ in self.events if s != LOOP_SERIES]


def setup(profiles: dict[str, dict], **spec: Any) -> tuple[World, LoopCore, np.random.Generator]:
    monitor = MonitorCore(
        "sensors",
        profiles["clean"],
        {"window_rows": 500, "consecutive": 3, "reset_windows": 3, **spec},
        clock=lambda: 1000.0,
    )
    world = World(monitor, profiles)
    return world, LoopCore("sensors", world.ports(), max_resumes=2), np.random.default_rng(7)


def traffic(world: World, loop: LoopCore, rng: np.random.Generator, windows: int, shift: float) -> None:
    """``windows`` windows of 500 rows on the production variant, the loop ticking after each."""
    for _ in range(windows):
        x = normal(rng, 500, shift)
        world.monitor.log(f"v{world.production}", [dict(zip(FEATURES, r, strict=True)) for r in x.tolist()])
        loop.tick()


def test_half_sigma_shift_on_three_of_five_triggers_exactly_one_retraining(profiles: dict) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 10, 0.0)
    assert world.run_ids == [] and world.events == []  # clean traffic: nothing
    traffic(world, loop, rng, 3, 0.5)  # three drifted windows in a row: one event, one run
    assert world.run_ids == ["run-1"] and loop.state == "retraining"
    assert world.monitor.debouncer.state()["in_flight"]["event_id"] == 1
    traffic(world, loop, rng, 10, 0.5)  # drift goes on while the run runs: nothing new starts
    assert world.run_ids == ["run-1"]
    world.runs["run-1"] = {"status": "succeeded", "driver_alive": False}
    world.versions["run-1"] = 2
    traffic(world, loop, rng, 1, 0.5)
    assert loop.state == "canary" and world.weights == {"v1": 100.0, "v2": 0.0}
    traffic(world, loop, rng, 3, 0.5)  # the canary runs
    world.rollouts["rollout-1"]["state"] = "promoted"
    traffic(world, loop, rng, 1, 0.5)
    assert loop.state == "idle" and world.production == 2 and world.references == ["clean", "shifted"]
    traffic(world, loop, rng, 20, 0.5)  # the shifted traffic is the new normal: no second retraining
    assert world.run_ids == ["run-1"]
    assert world.cycle_events() == ["drift", "retrain_started", "retrain_finished", "canary_started", "promoted"]
    assert loop.outcomes == {"promoted": 1}
    # lineage: v2 links to its drift event (features and statistics) and to its retraining run
    kinds = {k: v for version, k, v in world.links if version == 2}
    drift = kinds["drift_event"]
    assert drift["drifted_features"][:3] == ["f0", "f1", "f2"] and drift["trigger"] is True
    for f in ("f0", "f1", "f2"):
        st = drift["statistics"][f]
        assert st["method"] == "ks" and st["drifted"] is True and st["p_value"] < st["threshold"] == pytest.approx(0.01)
        assert st["mean"] == pytest.approx(0.5, abs=0.2)
    assert kinds["retraining"]["run_id"] == "run-1" and kinds["retraining"]["cycle_id"] == drift["cycle_id"]
    assert world.monitor.debouncer.state()["in_flight"] is None


def test_gate_failure_leaves_production_and_does_not_retry_until_drift_comes_back(profiles: dict) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "failed", "driver_alive": False, "gate": "stage evaluate: gate failed: accuracy"}
    traffic(world, loop, rng, 1, 0.5)
    assert world.cycle_events()[-1] == "gate_failed" and loop.state == "idle"
    assert world.production == 1 and world.weights == {"v1": 100.0} and world.rollouts == {}
    assert world.monitor.debouncer.state()["in_flight"] is None
    traffic(world, loop, rng, 10, 0.5)  # the same drift episode: no retry storm
    assert world.run_ids == ["run-1"]
    traffic(world, loop, rng, 3, 0.0)  # drift ends (3 clean windows) ...
    traffic(world, loop, rng, 3, 0.5)  # ... and comes back: a new cycle
    assert world.run_ids == ["run-1", "run-2"]


def test_canary_rollback_removes_the_candidate_and_keeps_the_reference(profiles: dict) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "succeeded", "driver_alive": False}
    world.versions["run-1"] = 2
    traffic(world, loop, rng, 1, 0.5)
    world.rollouts["rollout-1"].update(state="rolled_back", reason="error_rate: candidate 30% vs baseline 0%")
    traffic(world, loop, rng, 1, 0.5)
    assert world.cycle_events()[-1] == "rolled_back"
    detail = world.events[-1][2]
    assert detail["production"] == "untouched" and "error_rate" in detail["reason"]
    assert world.production == 1 and world.weights == {"v1": 100.0} and world.references == ["clean"]
    assert world.monitor.debouncer.state()["in_flight"] is None


def test_a_dead_driver_is_resumed_then_the_cycle_fails(profiles: dict) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "running", "driver_alive": False}  # the driver was killed
    loop.tick()
    loop.tick()
    assert world.resumed == ["run-1", "run-1"] and loop.state == "retraining"
    loop.tick()  # max_resumes = 2
    assert world.cycle_events()[-1] == "retrain_failed" and loop.state == "idle"
    world2, loop2, rng2 = setup(profiles)
    traffic(world2, loop2, rng2, 3, 0.5)
    world2.runs["run-1"] = {"status": "failed", "driver_alive": False, "error": "train: CUDA error"}
    loop2.tick()  # a run that failed on its own is not resumed
    assert world2.resumed == [] and world2.events[-1][1:] == (
        "retrain_failed",
        {"reason": "train: CUDA error", "run_id": "run-1"},
    )


def test_same_model_again_is_not_rolled_out(profiles: dict) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "succeeded", "driver_alive": False}
    world.versions["run-1"] = 1  # the retraining produced the production artifact again
    loop.tick()
    assert world.cycle_events()[-1] == "no_new_model" and world.rollouts == {} and world.links == []


def test_restore_continues_a_canary_from_the_event_log(profiles: dict, metadata_db: str) -> None:
    store = LoopStore(MetadataStore(metadata_db))
    world, loop, rng = setup(profiles)
    cycle = "sensors-1"
    store.record("sensors", LOOP_SERIES, "armed", {})
    store.record("sensors", cycle, "drift", {"monitor_event_id": 4, "trigger": True})
    store.record("sensors", cycle, "retrain_started", {"run_id": "run-9"})
    store.record("sensors", cycle, "retrain_finished", {"run_id": "run-9", "version": 2})
    store.record("sensors", cycle, "canary_started", {"version": 2, "variant": "v2", "rollout_id": "rollout-1"})
    world.rollouts["rollout-1"] = {"state": "promoted"}
    world.weights["v2"] = 0.0
    loop.restore(store.events("sensors", store.latest("sensors")), LOOP_FINAL)
    assert loop.state == "canary" and loop.cycle is not None and loop.cycle.run_id == "run-9"
    assert world.monitor.debouncer.state()["in_flight"]["event_id"] == 4
    loop.tick()
    assert world.events[-1][:2] == (cycle, "promoted") and world.production == 2
    store.record("sensors", cycle, "promoted", {"version": 2})
    assert [(s["cycle_id"], s["finished"]) for s in store.series("sensors")] == [("loop", False), (cycle, True)]


def test_a_restarted_monitor_renumbers_events(profiles: dict) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "failed", "driver_alive": False, "error": "boom"}
    loop.tick()
    assert loop.since == 1
    # the monitor actor restarts: a new core, event ids from 1 again
    world.monitor = MonitorCore(
        "sensors", profiles["clean"], {"window_rows": 500, "consecutive": 3}, clock=lambda: 2000.0
    )
    world.monitor.started_at = 2000.0
    loop.ports = world.ports()
    traffic(world, loop, rng, 3, 0.5)
    assert world.run_ids == ["run-1", "run-2"]


# --------------------------------------------------------------------------- the retraining pipeline


PIPELINE = {
    "name": "closed_loop",
    "storage": "/tmp/store",
    "stages": [
        {"name": "generate", "kind": "python", "params": {"function": "m:f", "args": {"shift": 0.0}}},
        {"name": "split", "kind": "data.split", "inputs": {"data": "generate.data"}, "params": {}},
        {"name": "profile", "kind": "data.profile", "inputs": {"data": "split.train"}},
        {"name": "train", "kind": "train", "inputs": {"train": "split.train"}, "priority": 0},
        {"name": "evaluate", "kind": "evaluate", "inputs": {"model": "train.model", "data": "split.test"}},
        {
            "name": "register",
            "kind": "register",
            "inputs": {"model": "train.model", "profile": "profile.profile"},
            "params": {"name": "sensors"},
        },
        {"name": "report", "kind": "python", "inputs": {"m": "evaluate.metrics"}, "params": {"function": "m:g"}},
        {
            "name": "deploy",
            "kind": "deploy",
            "depends_on": ["register", "evaluate"],
            "params": {"app": "sensors", "model": "sensors"},
        },
    ],
}


def test_retraining_pipeline_is_the_deploy_stages_upstream_at_its_priority() -> None:
    spec = RetrainSpec(set={"stages.generate.params.args.shift": 0.5}, priority=7, team="ml")
    doc = retraining_pipeline(PIPELINE, spec, "sensors", "sensors")
    names = [s["name"] for s in doc["stages"]]
    assert names == ["generate", "split", "profile", "train", "evaluate", "register"]  # no report, no deploy
    assert all(s["priority"] == 7 and s["team"] == "ml" for s in doc["stages"])
    assert doc["stages"][0]["params"]["args"]["shift"] == 0.5
    assert PIPELINE["stages"][0]["params"]["args"]["shift"] == 0.0  # the original is not changed
    assert register_stage(doc, "sensors") == "register"
    only = retraining_pipeline(PIPELINE, RetrainSpec(stages=["register"]), "sensors", "sensors")
    assert [s["name"] for s in only["stages"]] == ["generate", "split", "profile", "train", "register"]


@pytest.mark.parametrize(
    ("spec", "model", "message"),
    [
        (RetrainSpec(stages=["nope"]), "sensors", "retrain.stages: no stage named 'nope'"),
        (RetrainSpec(set={"stages.nope.params.x": 1}), "sensors", "retrain.set: --set stages.nope.params.x: no stage"),
        (RetrainSpec(), "other", "has no register stage for model 'other'"),
        (RetrainSpec(stages=["split"]), "sensors", "has no register stage"),
        (
            RetrainSpec(set={"stages.register.inputs": {"model": "train.model"}}),
            "sensors",
            "stage register registers 'sensors' without a `profile` input",
        ),
    ],
)
def test_retraining_pipeline_errors_name_the_problem(spec: RetrainSpec, model: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        retraining_pipeline(PIPELINE, spec, "sensors", model)


def test_a_new_controller_does_not_act_on_events_an_earlier_one_saw(profiles: dict, metadata_db: str) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "failed", "driver_alive": False, "error": "boom"}
    loop.tick()
    store = LoopStore(MetadataStore(metadata_db))
    for series, event, detail in world.events:
        store.record("sensors", series, event, detail)
    # the controller is replaced (a new spec): same monitor, its event 1 already acted on
    again = LoopCore("sensors", world.ports(), history=store.all_events("sensors"))
    again.tick()
    assert again.since == 1 and again.state == "idle" and world.run_ids == ["run-1"]
    fresh = LoopCore("sensors", world.ports())  # without the history it would act again
    fresh.tick()
    assert world.run_ids == ["run-1", "run-2"]


def test_model_show_prints_the_links() -> None:
    from raypipe.cli.render import link_text

    drift = {
        "app": "sensors",
        "variant": "v1",
        "kind": "data_drift",
        "monitor_event_id": 4,
        "detected_at": 1.7e9,
        "drifted_features": ["f0", "f2"],
        "statistics": {"f0": {"p_value": 1.7e-9}, "f2": {"p_value": None}},
        "cycle_id": "c1",
    }
    text = link_text("drift_event", drift)
    assert "event 4 of app sensors on v1" in text and "f0 p=1.7e-09, f2" in text and "cycle c1" in text
    assert link_text("retraining", {"run_id": "r1", "cycle_id": "c1", "app": "sensors"}).startswith("run r1 (cycle c1")
    assert link_text("reference_profile", {"sha256": "ab" * 32}).startswith("profile abababababab")


def test_a_failure_after_the_promotion_is_recorded_and_the_claim_ends(profiles: dict) -> None:
    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "succeeded", "driver_alive": False}
    world.versions["run-1"] = 2
    loop.tick()
    world.rollouts["rollout-1"]["state"] = "promoted"

    def broken(version: int, label: str, st: Any) -> dict:
        raise RuntimeError("the profile artifact is gone")

    loop.ports.promoted = broken
    loop.tick()
    assert world.events[-1][1] == "promoted" and "the profile artifact is gone" in world.events[-1][2]["error"]
    assert world.weights == {"v1": 100.0, "v2": 0.0}  # nothing was removed: the rollout owns the weights
    assert world.monitor.debouncer.state()["in_flight"] is None and loop.state == "idle"


def test_a_failing_rollout_start_removes_the_candidate(profiles: dict) -> None:
    from raypipe.exceptions import RaypipeError

    world, loop, rng = setup(profiles)
    traffic(world, loop, rng, 3, 0.5)
    world.runs["run-1"] = {"status": "succeeded", "driver_alive": False}
    world.versions["run-1"] = 2

    def refuse(label: str) -> str:
        raise RaypipeError("app 'sensors' also sends traffic to v7 (10%)")

    loop.ports.start_rollout = refuse
    loop.tick()
    assert world.events[-1][1] == "failed" and "also sends traffic" in world.events[-1][2]["reason"]
    assert world.weights == {"v1": 100.0} and loop.state == "idle"
