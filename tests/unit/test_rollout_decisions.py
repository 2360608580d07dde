"""Canary rollouts without Ray: the spec, the decisions, the state machine on fake ports, the event table."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

import raypipe
import raypipe.api
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.serving.abtest.stats import VariantStats
from raypipe.serving.rollout.controller import RolloutController
from raypipe.serving.rollout.decisions import ADVANCE, HOLD, OK, PENDING, PROMOTE, ROLLBACK, VIOLATED, WAIT, decide
from raypipe.serving.rollout.run import Ports, RolloutRun, progress_text, status_from_events, tick_seconds
from raypipe.serving.rollout.settings import (
    Guardrails,
    RolloutPlan,
    RolloutSpec,
    build_spec,
    load_rollout_file,
    parse_steps,
)
from raypipe.store.metadata import MetadataStore
from raypipe.store.rollouts import RolloutStore

REPO = Path(__file__).resolve().parents[2]
STEPS = [5.0, 25.0, 50.0, 100.0]


def vs(
    label: str, requests: int, errors: int = 0, p99: float | None = 10.0, outcomes: list[float] | None = None
) -> VariantStats:
    o = outcomes or []
    return VariantStats.from_snapshot(
        label,
        {
            "requests": requests,
            "errors": errors,
            "latency_ms": {"p99": p99 if requests else None},
            "outcomes": {
                "n": len(o),
                "sum": float(sum(o)),
                "sumsq": float(sum(x * x for x in o)),
                "positives": sum(1 for x in o if x > 0),
            },
        },
    )


def guards(min_requests: int, **kw: Any) -> Guardrails:
    """Guardrails judged at ``min_requests`` (p99 too: its own minimum of 100 off)."""
    return Guardrails.model_validate({"min_requests": min_requests, "p99_latency_ms": {"min_samples": 1}, **kw})


G = guards(50)

# --------------------------------------------------------------------------- spec


def test_spec_defaults_and_checks() -> None:
    s = RolloutSpec(app="digits", candidate="v4")
    assert s.steps == STEPS and s.interval_s == 60 and s.guardrails.min_requests == 100
    assert s.guardrails.error_rate is not None and s.guardrails.error_rate.max_increase == 0.02
    assert s.guardrails.p99_latency_ms is not None and s.guardrails.p99_latency_ms.max_ratio == 1.5
    assert s.guardrails.business is None
    for steps, msg in [
        ([100], "at least one step below 100"),
        ([5, 5, 100], "increase strictly"),
        ([5, 50], "last step must be 100"),
        ([0, 100], "in (0, 100]"),
    ]:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            build_spec({"app": "a", "candidate": "v2", "steps": steps})
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        build_spec({"app": "a", "candidate": "v2", "guardrails": {"bogus": 1}})
    with pytest.raises(ConfigError, match="max_increase, alpha or both"):
        build_spec({"app": "a", "candidate": "v2", "guardrails": {"error_rate": {"max_increase": None, "alpha": None}}})
    assert parse_steps("5, 25,50%,100") == STEPS
    with pytest.raises(ConfigError, match="--steps"):
        parse_steps("5,x")


def test_rollout_file_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("rollout:\n  app: digits\n  candidate: v4\n  interval_s: -3\n")
    with pytest.raises(ConfigError, match=r"r.yaml:4 rollout.interval_s: got -3; expected a number > 0"):
        load_rollout_file(f)
    spec = load_rollout_file(f, {"interval_s": 7.5, "steps": None})
    assert spec.interval_s == 7.5
    f.write_text("name: x\nstages: []\n")
    with pytest.raises(ConfigError, match="expected a rollout spec"):
        load_rollout_file(f)


def test_shipped_canary_config_is_a_valid_rollout_spec() -> None:
    path = REPO / "configs" / "canary_digits.yaml"
    spec = load_rollout_file(path)
    assert spec.app == "digits" and spec.steps[-1] == 100
    (checked,) = raypipe.validate([path])  # `raypipe validate configs/*.yaml` covers rollout specs
    assert checked == spec
    with pytest.raises(RaypipeError, match="a rollout spec, not a pipeline"):
        raypipe.load(path)


def test_rollout_spec_from_flags_and_file(tmp_path: Path) -> None:
    spec = raypipe.api.rollout_spec("digits", candidate="v4", steps=[10, 100], interval_s=5)
    assert (spec.app, spec.candidate, spec.steps, spec.interval_s) == ("digits", "v4", [10, 100], 5)
    path = REPO / "configs" / "canary_digits.yaml"
    spec = raypipe.api.rollout_spec("digits", candidate="v7", config=path)
    assert spec.candidate == "v7" and spec.guardrails.min_requests == 200
    with pytest.raises(RaypipeError, match="rolls out app 'digits', but the command names app 'other'"):
        raypipe.api.rollout_spec("other", config=path)
    with pytest.raises(RaypipeError, match="give --candidate"):
        raypipe.api.rollout_spec("digits")
    with pytest.raises(ConfigError, match=r"rollout start: steps: the last step must be 100"):
        raypipe.api.rollout_spec("digits", candidate="v4", steps=[5, 50])


# --------------------------------------------------------------------------- decisions


def test_a_failing_candidate_is_rolled_back_with_the_numbers() -> None:
    d = decide(STEPS, G, 0, vs("v3", 950, 5), vs("v4", 60, 18), step_done=False)
    assert d.action == ROLLBACK and d.guardrail == "error_rate" and d.candidate_percent == 0
    check = d.checks[0]
    assert check.status == VIOLATED
    assert check.observed["candidate"] == pytest.approx(0.3)
    assert check.observed["increase"] == pytest.approx(0.3 - 5 / 950)
    assert "30.00%" in d.reason and "<= 2.00%" in d.reason and check.observed["p_value"] < 1e-6


def test_early_stop_before_min_requests_only_when_clear() -> None:
    # 12 of 30 failed against 0 of 600: the Wilson bounds separate them at 0.001
    d = decide(STEPS, G, 0, vs("v3", 600), vs("v4", 30, 12), step_done=False)
    assert d.action == ROLLBACK and "early stop" in d.reason
    # 1 of 3: not enough evidence yet
    d = decide(STEPS, G, 0, vs("v3", 600), vs("v4", 3, 1), step_done=False)
    assert d.action == WAIT and d.checks[0].status == PENDING
    # judged (min_requests reached): one unlucky error in 20 against a 1% baseline is not significant
    g20 = guards(20)
    d = decide(STEPS, g20, 0, vs("v3", 1000, 10), vs("v4", 20, 1), step_done=True)
    assert d.checks[0].status == OK and d.checks[0].observed["p_value"] == pytest.approx(0.1966, abs=1e-4)
    assert d.action == ADVANCE
    # without the test (alpha null) the +4 points alone roll back
    point = guards(20, error_rate={"alpha": None})
    assert decide(STEPS, point, 0, vs("v3", 1000, 10), vs("v4", 20, 1), step_done=True).action == ROLLBACK


def test_a_finished_step_advances_then_promotes() -> None:
    d = decide(STEPS, G, 0, vs("v3", 950), vs("v4", 55), step_done=True)
    assert d.action == ADVANCE and d.candidate_percent == 25
    assert all(c.status == OK for c in d.checks)
    d = decide(STEPS, G, 2, vs("v3", 500), vs("v4", 500), step_done=True)
    assert d.action == PROMOTE and d.candidate_percent == 100
    # mid-step, all fine: wait
    assert decide(STEPS, G, 1, vs("v3", 500), vs("v4", 500), step_done=False).action == WAIT
    with pytest.raises(ValueError):
        decide(STEPS, G, 3, vs("v3", 1), vs("v4", 1), step_done=True)


def test_too_little_traffic_holds_and_says_how_much() -> None:
    d = decide(STEPS, G, 0, vs("v3", 300), vs("v4", 12), step_done=True)
    assert d.action == HOLD and d.candidate_percent == 5
    assert "v4 (candidate) has 12 of 50 requests" in d.reason


def test_latency_guardrail() -> None:
    slow = decide(STEPS, G, 1, vs("v3", 200, p99=20.0), vs("v4", 80, p99=45.0), step_done=False)
    assert slow.action == ROLLBACK and slow.guardrail == "p99_latency_ms"
    assert slow.checks[1].observed["ratio"] == pytest.approx(2.25)
    # x2 but only 2 ms slower: under min_increase_ms (5), not a violation
    fast = decide(STEPS, G, 1, vs("v3", 200, p99=2.0), vs("v4", 80, p99=4.0), step_done=True)
    assert fast.action == ADVANCE
    no_guard = Guardrails(min_requests=50, p99_latency_ms=None)
    assert (
        decide(STEPS, no_guard, 1, vs("v3", 200, p99=20.0), vs("v4", 80, p99=400.0), step_done=True).action == ADVANCE
    )


def test_business_guardrail() -> None:
    g = guards(50, business={"metric": "conversion", "max_decrease": 0.02})
    base = vs("v3", 400, outcomes=[1.0] * 40 + [0.0] * 60)  # 40%
    worse = vs("v4", 100, outcomes=[1.0] * 30 + [0.0] * 70)  # 30%
    d = decide(STEPS, g, 1, base, worse, step_done=False)
    assert d.action == ROLLBACK and d.guardrail == "business"
    assert d.checks[2].observed["decrease"] == pytest.approx(0.1)
    same = vs("v4", 100, outcomes=[1.0] * 39 + [0.0] * 61)
    assert decide(STEPS, g, 1, base, same, step_done=True).action == ADVANCE
    # no outcomes fed back yet: a finished step holds (no promotion without the metric)
    d = decide(STEPS, g, 1, base, vs("v4", 100), step_done=True)
    assert d.action == HOLD and "business" in d.reason and "needs 50" in d.reason


def test_error_rate_with_a_significance_test() -> None:
    g = guards(50, error_rate={"max_increase": 0.02, "alpha": 0.01})
    # +3 points on 60 requests: over the limit but not significant: no rollback
    d = decide(STEPS, g, 0, vs("v3", 1000, 10), vs("v4", 60, 2), step_done=True)
    assert d.checks[0].status == OK and d.action == ADVANCE
    d = decide(STEPS, g, 0, vs("v3", 1000, 10), vs("v4", 200, 20), step_done=True)
    assert d.action == ROLLBACK and d.checks[0].observed["p_value"] < 0.01
    only_test = guards(50, error_rate={"max_increase": None, "alpha": 0.01})
    assert decide(STEPS, only_test, 0, vs("v3", 1000, 10), vs("v4", 200, 20), step_done=True).action == ROLLBACK


# --------------------------------------------------------------------------- the state machine on fake ports


class FakeApp:
    """Weights, a collector fed by simulated traffic, a registry alias and an event log, on a fake clock."""

    def __init__(self, error_rates: dict[str, float], rps: float = 40.0, seed: int = 0) -> None:
        self.now = 1000.0
        self.weights: dict[str, float] = {"v3": 100.0, "v4": 0.0}
        self.error_rates = error_rates
        self.rps = rps
        self.rng = random.Random(seed)
        self.requests: list[tuple[float, str, bool, float]] = []
        self.production = 3
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.fail_weights = 0

    def clock(self) -> float:
        return self.now

    def set_weights(self, w: dict[str, float]) -> None:
        if self.fail_weights:
            self.fail_weights -= 1
            raise RuntimeError("serve is busy")
        self.weights = {**self.weights, **w}

    def advance(self, seconds: float) -> None:
        """``seconds`` of traffic split by the current weights."""
        n = int(round(seconds * self.rps))
        labels, w = zip(*self.weights.items(), strict=True)
        for i in range(n):
            v = self.rng.choices(labels, weights=w)[0] if sum(w) else labels[0]
            err = self.rng.random() < self.error_rates.get(v, 0.0)
            self.requests.append((self.now + i / max(n, 1) * seconds, v, err, 10.0))
        self.now += seconds

    def snapshot(self, since: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for ts, v, err, lat in self.requests:
            if ts >= since:
                s = out.setdefault(v, {"requests": 0, "errors": 0, "latency_ms": {"p99": lat}})
                s["requests"] += 1
                s["errors"] += int(err)
        return out

    def set_production(self, version: int, reason: str) -> int | None:
        old, self.production = self.production, version
        return old

    def record(self, event: str, detail: dict[str, Any]) -> None:
        self.events.append((event, detail))

    def ports(self) -> Ports:
        return Ports(self.set_weights, self.snapshot, self.set_production, self.record)


def plan(**kw: Any) -> RolloutPlan:
    base = dict(
        rollout_id="digits-1",
        app="digits",
        model="digits",
        baseline="v3",
        candidate="v4",
        steps=STEPS,
        interval_s=8.0,
        guardrails=guards(20),
    )
    return RolloutPlan(**{**base, **kw})


def drive(app: FakeApp, run: RolloutRun, seconds: float) -> None:
    tick = tick_seconds(run.plan.interval_s)
    end = app.now + seconds
    while app.now < end and run.state in ("running", "paused"):
        app.advance(tick)
        run.tick()


def test_good_candidate_is_promoted() -> None:
    app = FakeApp({"v3": 0.01, "v4": 0.01}, rps=100)
    run = RolloutRun(plan(), app.ports(), clock=app.clock)
    run.begin()
    assert app.weights == {"v3": 95.0, "v4": 5.0}
    drive(app, run, 120)
    assert run.state == "promoted"
    assert app.weights == {"v3": 0.0, "v4": 100.0}
    assert app.production == 4
    names = [e for e, _ in app.events]
    assert names == ["started", "step", "step", "step", "promoted"]
    assert [d["percent"] for e, d in app.events if e == "step"] == [5.0, 25.0, 50.0]
    promoted = app.events[-1][1]
    assert promoted["previous_production"] == 3 and promoted["production"] == 4
    assert run.status()["state"] == "promoted"


def test_failing_candidate_is_rolled_back_within_one_interval() -> None:
    app = FakeApp({"v3": 0.0, "v4": 0.3}, rps=100)
    run = RolloutRun(plan(steps=[20.0, 50.0, 100.0]), app.ports(), clock=app.clock)
    run.begin()
    start = app.now
    drive(app, run, 60)
    assert run.state == "rolled_back"
    assert app.weights["v4"] == 0.0 and app.weights["v3"] == 100.0
    assert app.production == 3
    ev, detail = app.events[-1]
    assert ev == "rolled_back" and detail["guardrail"] == "error_rate"
    assert detail["observed"]["candidate"] > 0.1 and detail["observed"]["baseline"] == 0.0
    assert detail["allowed"].startswith("candidate - baseline <= 2.00% or not significantly worse")
    assert run.ended_at is not None and run.ended_at - start <= run.plan.interval_s
    assert run.tick() is None  # over


def test_too_little_traffic_pauses_instead_of_promoting() -> None:
    app = FakeApp({}, rps=2)  # 5% of 2 rps: 0.1 candidate requests per second
    run = RolloutRun(plan(), app.ports(), clock=app.clock)
    run.begin()
    drive(app, run, 30)
    assert run.state == "paused"
    assert [e for e, _ in app.events] == ["started", "step", "paused"]
    assert "v4 (candidate) has" in app.events[-1][1]["reason"]
    assert app.production == 3 and app.weights["v4"] == 5.0
    app.rps = 400  # traffic arrives: the step passes without waiting for another interval
    drive(app, run, tick_seconds(run.plan.interval_s))
    assert run.state == "running" and run.step_index == 1


def test_abort_and_a_failing_port_is_retried() -> None:
    app = FakeApp({})
    run = RolloutRun(plan(), app.ports(), clock=app.clock)
    run.begin()
    app.fail_weights = 1
    with pytest.raises(RuntimeError, match="busy"):
        run.abort("operator said so")
    assert app.weights["v4"] == 5.0
    run.tick()  # the pending abort is retried
    assert run.state == "aborted" and app.weights["v4"] == 0.0
    assert app.events[-1][0] == "aborted" and app.events[-1][1]["reason"] == "operator said so"
    with pytest.raises(RaypipeError, match="nothing to abort"):
        run.abort()


def test_resume_enters_the_recorded_step() -> None:
    app = FakeApp({})
    run = RolloutRun(plan(), app.ports(), clock=app.clock)
    run.resume(2, 900.0, "controller restarted")
    assert run.step_index == 2 and app.weights == {"v3": 50.0, "v4": 50.0}
    assert [e for e, _ in app.events] == ["resumed", "step"]


def events_of(app: FakeApp) -> list[dict[str, Any]]:
    """The fake app's events as ``rollout status`` gets them from the store."""
    return [{"app": "digits", "event": e, "detail": d, "at": 1000.0 + i} for i, (e, d) in enumerate(app.events)]


def test_progress_counts_the_steps_as_listed() -> None:
    """Four steps listed (the last, 100%, is the promotion): step 1 of 4 ... step 4 of 4."""
    app = FakeApp({"v3": 0.01, "v4": 0.01}, rps=100)
    run = RolloutRun(plan(), app.ports(), clock=app.clock)
    run.begin()
    app.advance(2.0)
    st = run.status()
    assert (st["step"], st["steps"]) == (1, STEPS)
    assert progress_text(st) == "step 1 of 4 (5% -> 25% -> 50% -> 100%): v4 at 5% for 2 s of 8 s"
    drive(app, run, 9)
    assert progress_text(run.status()).startswith("step 2 of 4 (5% -> 25% -> 50% -> 100%): v4 at 25%")
    drive(app, run, 120)
    st = run.status()
    assert st["state"] == "promoted" and st["step"] == 4
    assert progress_text(st) == "promoted: step 4 of 4 (5% -> 25% -> 50% -> 100%): v4 at 100%"
    assert progress_text(status_from_events(events_of(app)) or {}) == progress_text(st)


def test_an_aborted_rollout_says_so_and_where_it_stopped() -> None:
    app = FakeApp({})
    run = RolloutRun(plan(), app.ports(), clock=app.clock)
    run.begin()
    run.tick()  # a "wait: step 1 (5%) in progress" decision
    assert run.last_decision is not None and "in progress" in run.last_decision["reason"]
    app.fail_weights = 1
    with pytest.raises(RuntimeError, match="busy"):
        run.abort("operator said so")
    st = run.status()
    assert st["state"] == "running" and st["stopping"] == "aborted"
    assert progress_text(st).startswith("aborting at step 1 of 4 (5% -> 25% -> 50% -> 100%): v4 at 5%")
    run.tick()
    st = run.status()
    assert st["state"] == "aborted" and st["stopping"] is None and (st["step"], st["percent"]) == (1, 0.0)
    text = "aborted at step 1 of 4 (5% -> 25% -> 50% -> 100%): v4 was at 5%, now 0%"
    assert progress_text(st) == text
    from_events = status_from_events(events_of(app))
    assert from_events is not None and from_events["state"] == "aborted"
    assert from_events["end_reason"] == "operator said so" and progress_text(from_events) == text


def test_status_from_the_events_of_a_rollback_and_of_a_pause() -> None:
    app = FakeApp({"v3": 0.0, "v4": 0.3}, rps=100)
    run = RolloutRun(plan(steps=[20.0, 50.0, 100.0]), app.ports(), clock=app.clock)
    run.begin()
    drive(app, run, 60)
    st = status_from_events(events_of(app))
    assert st is not None and st["state"] == "rolled_back" and st["weights"] == {"v3": 100.0, "v4": 0.0}
    assert progress_text(st) == "rolled back at step 1 of 3 (20% -> 50% -> 100%): v4 was at 20%, now 0%"
    slow = FakeApp({}, rps=2)
    paused = RolloutRun(plan(), slow.ports(), clock=slow.clock)
    paused.begin()
    drive(slow, paused, 30)
    st = status_from_events(events_of(slow))
    assert st is not None and st["state"] == "paused" and st["step"] == 1
    assert progress_text(st) == (
        "step 1 of 4 (5% -> 25% -> 50% -> 100%): v4 at 5% (paused: too little traffic to judge the step)"
    )
    assert status_from_events([]) is None


# --------------------------------------------------------------------------- the event table


def test_rollout_events_table(metadata_db: str) -> None:
    meta = MetadataStore(metadata_db)
    store = RolloutStore(meta)
    assert store.events("digits") == [] and store.latest_rollout_id("digits") is None
    store.record("digits", "r1", "started", {"plan": {"x": 1}})
    store.record("digits", "r1", "rolled_back", {"guardrail": "error_rate"})
    store.record("digits", "r2", "started", {})
    store.record("other", "o1", "started", {})
    assert store.latest_rollout_id("digits") == "r2"
    assert [e.event for e in store.events("digits", "r1")] == ["started", "rolled_back"]
    assert store.events("digits", "r1")[1].detail == {"guardrail": "error_rate"}
    assert [(r["rollout_id"], r["finished"]) for r in store.rollouts("digits")] == [("r1", True), ("r2", False)]
    meta.close()
    # reopening an existing database keeps the table and its rows
    again = RolloutStore(MetadataStore(metadata_db))
    assert len(again.events("digits", "r1")) == 2


# --------------------------------------------------------------------------- the controller (its class, no Ray)


class SteadyTraffic:
    """A fake app on the real clock: ``rps`` requests a second split by the current weights,
    ``error_rates`` of them failing; the snapshot counts what arrived since ``since``."""

    def __init__(self, error_rates: dict[str, float], rps: float) -> None:
        self.error_rates, self.rps = error_rates, rps
        self.segments: list[tuple[float, dict[str, float]]] = [(time.time(), {"v3": 100.0, "v4": 0.0})]
        self.production = 3

    def set_weights(self, w: dict[str, float]) -> None:
        self.segments.append((time.time(), {**self.segments[-1][1], **w}))

    def snapshot(self, since: float) -> dict[str, dict[str, Any]]:
        now, out = time.time(), {}
        for i, (start, w) in enumerate(self.segments):
            end = self.segments[i + 1][0] if i + 1 < len(self.segments) else now
            secs = max(0.0, end - max(start, since))
            for v, pct in w.items():
                n = int(secs * self.rps * pct / 100)
                s = out.setdefault(v, {"requests": 0, "errors": 0, "latency_ms": {"p99": 10.0}})
                s["requests"] += n
                s["errors"] += int(n * self.error_rates.get(v, 0.0))
        return out

    def set_production(self, version: int, reason: str) -> int | None:
        old, self.production = self.production, version
        return old


def controller_with(monkeypatch: pytest.MonkeyPatch, traffic: SteadyTraffic, db: str) -> RolloutController:
    def ports(self: RolloutController, p: RolloutPlan) -> Ports:
        return Ports(
            traffic.set_weights,
            traffic.snapshot,
            traffic.set_production,
            lambda event, detail: self.store.record(p.app, p.rollout_id, event, detail),
        )

    monkeypatch.setattr(RolloutController, "_ports", ports)
    return RolloutController("digits", str(db))


def wait_state(c: RolloutController, states: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = c.status()
        if st and st["state"] in states:
            return st
        time.sleep(0.05)
    raise TimeoutError(f"rollout never reached {states}: {c.status()}")


def test_controller_promotes_and_a_restarted_one_resumes(monkeypatch: pytest.MonkeyPatch, metadata_db: str) -> None:
    traffic = SteadyTraffic({}, rps=2000)
    db = metadata_db
    c = controller_with(monkeypatch, traffic, db)
    assert c.status() is None
    p = plan(interval_s=0.8, guardrails=guards(20)).model_dump(mode="json")
    st = c.start(p)
    assert st["state"] == "running" and st["weights"] == {"v3": 95.0, "v4": 5.0}
    with pytest.raises(RaypipeError, match="abort it first"):
        c.start(p)
    # a "restart": the old instance stops, a new one reads the events and goes on from the recorded step
    c._stop.set()
    c._thread.join()
    step = c.run.step_index
    again = controller_with(monkeypatch, traffic, db)
    assert again.run is not None and again.run.step_index == step
    st = wait_state(again, ("promoted",))
    assert st["weights"] == {"v3": 0.0, "v4": 100.0} and traffic.production == 4
    events = [e.event for e in RolloutStore(MetadataStore(str(db))).events("digits")]
    assert events[:2] == ["started", "step"] and "resumed" in events and events[-1] == "promoted"
    # a finished rollout is shown after a restart too, and a new one may start
    third = controller_with(monkeypatch, traffic, db)
    assert third.status()["state"] == "promoted"


def test_controller_rolls_back_and_aborts(monkeypatch: pytest.MonkeyPatch, metadata_db: str) -> None:
    traffic = SteadyTraffic({"v4": 0.3}, rps=2000)
    c = controller_with(monkeypatch, traffic, metadata_db)
    c.start(plan(rollout_id="r1", interval_s=0.8, guardrails=guards(20)).model_dump(mode="json"))
    st = wait_state(c, ("rolled_back",))
    assert st["weights"]["v4"] == 0.0 and "error_rate" in st["end_reason"] and traffic.production == 3
    with pytest.raises(RaypipeError, match="nothing to abort"):
        c.abort()
    traffic.error_rates = {}
    c.start(plan(rollout_id="r2", interval_s=30.0).model_dump(mode="json"))
    st = c.abort("changed my mind")
    assert st["state"] == "aborted" and st["weights"]["v4"] == 0.0
    last = RolloutStore(MetadataStore(metadata_db)).events("digits", "r2")[-1]
    assert (last.event, last.detail["reason"]) == ("aborted", "changed my mind")
