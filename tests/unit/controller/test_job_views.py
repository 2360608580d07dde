"""Typed job states and views: the controller's API, the actor's dict form, and the client's parsing."""

from __future__ import annotations

import asyncio
import json

import pytest

from raypipe.resources import Resources
from raypipe.scheduler.actor import ControllerActor
from raypipe.scheduler.backend import NodeInfo
from raypipe.scheduler.client import SchedulerClient, ledger_label_selectors
from raypipe.scheduler.jobs import VIEW_KEYS, Grant, Job, JobState, JobView, job_label, request_from_dict
from tests.unit.controller.test_controller_core import FakeBackend, make, req

#: The keys of a job view's dict form, in order, as `raypipe queue --json` prints them.
DICT_KEYS = [
    "job_id",
    "state",
    "owner",
    "team",
    "priority",
    "demand",
    "bundles",
    "pg_id",
    "nodes",
    "submit_time",
    "start_time",
    "preemptions",
    "reason",
    "version",
    "grant",
    "scale_up",
    "principal",
]


def test_states_group_as_the_lifecycle_says() -> None:
    assert [s.value for s in JobState] == ["queued", "running", "preempting", "lost", "done", "rejected"]
    assert {s for s in JobState if s.active} == {JobState.QUEUED, JobState.RUNNING, JobState.PREEMPTING, JobState.LOST}
    assert {s for s in JobState if s.holds_grant} == {JobState.RUNNING, JobState.PREEMPTING}
    assert {s for s in JobState if s.finished} == {JobState.DONE, JobState.REJECTED}
    assert JobState("running") is JobState.RUNNING and JobState.RUNNING == "running"


def test_core_returns_typed_views_whose_dict_form_is_plain_json() -> None:
    core, _, _ = make()
    view = core.submit(req("a", gpu=2, bundles=2, team="t", priority=3), "o@1")
    assert isinstance(view, JobView) and view.state is JobState.QUEUED and view.version == 0
    core.schedule()
    view = core.poll(["a"])["a"]
    assert view.state is JobState.RUNNING and view.grant is Grant.PG and len(view.nodes) == 2
    d = view.to_dict()
    assert list(d) == DICT_KEYS == list(VIEW_KEYS)
    assert type(d["state"]) is str and type(d["grant"]) is str and isinstance(d["nodes"], list)
    assert d["demand"] == str(Resources.of(cpu=2, gpu=4)) and d["bundles"] == 2 and d["priority"] == 3
    assert json.loads(json.dumps(d)) == d
    assert JobView.from_dict(d) == view and JobView.from_dict(view) is view


def test_a_view_reads_like_its_dict_form() -> None:
    core, _, _ = make()
    core.submit(req("a", grant="ledger"), "o@1")
    core.schedule()
    view = core.poll(["a"])["a"]
    d = view.to_dict()
    assert dict(view) == d and len(view) == len(d) and list(view) == list(d)
    assert view["state"] == "running" and view.get("reason", "") == "" and view.get("missing") is None
    assert "nodes" in view and "missing" not in view
    with pytest.raises(KeyError):
        view["missing"]
    assert ledger_label_selectors(view) == ledger_label_selectors(d) == [{"ray.io/node-id": view.nodes[0]}]


def test_queue_orders_by_state_then_submit_time_and_stats_count_every_state() -> None:
    core, _, clock = make()
    for i, gpus in enumerate([4, 4, 4, 4, 99]):
        clock.t += 1
        core.submit(req(f"j{i}", gpu=gpus), "o@1")
    core.schedule()
    core.release("j0")
    states = [(v.job_id, v.state) for v in core.queue()]
    assert states == [
        ("j1", JobState.RUNNING),
        ("j2", JobState.RUNNING),
        ("j3", JobState.QUEUED),
        ("j4", JobState.REJECTED),
        ("j0", JobState.DONE),
    ]
    jobs = core.stats()["jobs"]
    assert jobs == {"queued": 1, "running": 2, "preempting": 0, "lost": 0, "done": 1, "rejected": 1}
    assert all(type(k) is str for k in jobs)


def test_persisted_jobs_round_trip_with_their_states() -> None:
    core, _, _ = make()
    core.submit(req("a", grant="ledger", team="t"), "serve:app")
    core.schedule()
    job = core.jobs["a"]
    blob = json.loads(json.dumps(job.to_dict()))
    assert blob["state"] == "running" and blob["grant"] == "ledger"
    again = Job.from_dict(blob)
    assert again == job and again.state is JobState.RUNNING and again.grant is Grant.LEDGER
    assert request_from_dict(blob["request"]) == job.request
    assert job_label(job) == "serving app app"


def test_admission_rejects_over_quota_without_asking_the_autoscaler() -> None:
    core, _, _ = make(teams={"t": {"gpu": 2}})
    view = core.submit(req("big", gpu=4, team="t"), "o@1")
    assert view.state is JobState.REJECTED and view.reason.startswith("never schedulable: demand exceeds team t")
    core, _, _ = make(policy="fair_share", teams={"t": {"gpu": 2}})
    assert core.submit(req("big", gpu=4, team="t"), "o@1").state is JobState.QUEUED, "fair_share lends idle quota"


class _Backend(FakeBackend):
    def __init__(self) -> None:
        super().__init__([NodeInfo(f"node-{i}", Resources.of(cpu=8, gpu=4)) for i in range(2)])


def test_the_actor_speaks_the_dict_form_and_the_client_parses_it() -> None:
    async def scenario() -> tuple[list[dict], dict, dict, list[dict]]:
        actor = ControllerActor(tick_s=60.0, backend=f"{__name__}:_Backend")
        submitted = await actor.submit([req("a", gpu=2), req("b", gpu=8)], "o@1")
        polled = await actor.poll(["a", "b"])
        watched = await actor.watch({"a": -1}, timeout_s=0.1)
        queue = await actor.queue()
        return submitted, polled, watched, queue

    submitted, polled, watched, queue = asyncio.run(scenario())
    assert [v["state"] for v in submitted] == ["running", "rejected"]
    for d in (*submitted, *polled.values(), *watched.values(), *queue):
        assert type(d) is dict and list(d) == DICT_KEYS and type(d["state"]) is str
        assert json.loads(json.dumps(d)) == d
    views = SchedulerClient.views(polled)
    assert views["a"].state is JobState.RUNNING and views["b"].state is JobState.REJECTED
