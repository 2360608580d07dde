"""ControllerCore with an autoscaler in its settings: fake backend and clock, no Ray."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from raypipe.resources import Resources
from raypipe.scheduler.autoscale import MaxShape
from raypipe.scheduler.backend import NodeInfo
from raypipe.scheduler.controller import ControllerCore, SchedulerSettings
from raypipe.scheduler.errors import InvalidRequestError
from raypipe.scheduler.types import ClusterView, JobRequest, NodeView
from tests.unit.controller.test_controller_core import Clock, FakeBackend

GPU_NODE = {"resources": {"CPU": 8, "GPU": 4}, "max_workers": 3}


class AutoscalingBackend(FakeBackend):
    """The fake backend plus ``request_resources``, recorded call by call."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        super().__init__(nodes)
        self.requests: list[list[tuple[Resources, dict[str, str]]]] = []
        self.fail = False

    def request_resources(self, bundles: Sequence[Resources], label_selectors: Sequence[Mapping[str, str]]) -> None:
        if self.fail:
            raise ConnectionError("GCS unavailable")
        self.requests.append(list(zip(bundles, map(dict, label_selectors), strict=True)))

    def last(self) -> list[Resources]:
        return [b for b, _ in self.requests[-1]]

    def add_node(self, node: NodeInfo) -> None:
        """What the autoscaler would do."""
        self._nodes = [*self._nodes, node]


def head() -> NodeInfo:
    return NodeInfo("head", Resources.of(cpu=2), head=True)


def gpu_worker(i: int) -> NodeInfo:
    return NodeInfo(f"w{i}", Resources.of(cpu=8, gpu=4, memory_mb=30000))


def make(
    autoscaler: dict | None = None, nodes: list[NodeInfo] | None = None, **settings: object
) -> tuple[ControllerCore, AutoscalingBackend, Clock]:
    if autoscaler is None:
        autoscaler = {"node_types": {"gpu_worker": dict(GPU_NODE)}, "max_workers": 3}
    be, clock = AutoscalingBackend(nodes if nodes is not None else [head(), gpu_worker(0)]), Clock()
    core = ControllerCore(be, None, clock)
    core.configure(SchedulerSettings(autoscaler=autoscaler, **settings))  # type: ignore[arg-type]  # as the actor does
    core.refresh_nodes()
    return core, be, clock


def req(job_id: str, gpu: float = 4, bundles: int = 1, **kw: object) -> dict:
    return {"job_id": job_id, "bundles": [{"gpu": gpu, "cpu": 1}] * bundles, **kw}


def four(n: int) -> list[Resources]:
    return [Resources.of(cpu=1, gpu=4)] * n


def test_a_job_that_fits_now_requests_nothing() -> None:
    core, be, _ = make()
    view = core.submit(req("a"), "o@1")
    core.schedule()
    assert view["state"] == "queued" and core.jobs["a"].state == "running"
    assert not core.jobs["a"].scale_up
    assert all(r == [] for r in be.requests), "at most the startup clear of an earlier request"


def test_a_gang_that_fits_only_at_max_size_waits_for_the_autoscaler_then_runs() -> None:
    core, be, _ = make()
    view = core.submit(req("gang", bundles=3), "o@1")  # 12 GPU; one 4-GPU worker up now, 3 at most
    assert view["state"] == "queued"
    assert view["reason"] == "waiting for the autoscaler: requested 3 x {CPU: 1, GPU: 4}"
    core.step()
    assert core.jobs["gang"].state == "queued" and be.last() == four(3)
    assert core.queue()[0]["reason"].startswith("waiting for the autoscaler: requested 3 x {CPU: 1, GPU: 4}")
    calls = len(be.requests)
    core.step()
    assert len(be.requests) == calls, "an unchanged request is not sent again"
    be.add_node(gpu_worker(1))
    core.step()
    assert core.jobs["gang"].state == "queued", "12 GPU still do not fit 8"
    assert be.last() == four(3), "still requested"
    be.add_node(gpu_worker(2))
    core.step()
    job = core.jobs["gang"]
    assert job.state == "running" and sorted(job.placement or ()) == ["w0", "w1", "w2"]
    assert be.requests[-1] == [], "cleared once no job needs it"
    assert not job.scale_up and core.stats()["autoscaler"]["requested"] == "nothing"


def test_a_job_that_cannot_fit_even_at_max_size_is_rejected_with_the_shape() -> None:
    core, be, _ = make()
    view = core.submit(req("wide", gpu=8), "o@1")
    assert view["state"] == "rejected"
    assert view["reason"] == (
        "never schedulable, even at the cluster's maximum size: needs 1 CPU, 8 GPU on one node; "
        "largest node has 4 GPU (w0); max shape: head + up to 3 x gpu_worker {CPU: 8, GPU: 4}; at most 3 workers"
    )
    view = core.submit(req("many", bundles=4), "o@1")  # 16 GPU > 3 workers x 4
    assert view["state"] == "rejected" and "gang of 4 bundles (PACK) needs 4 CPU, 16 GPU" in view["reason"]
    assert "12 GPU in total" in view["reason"]
    core.schedule()
    assert all(r == [] for r in be.requests)


def test_without_an_autoscaler_nothing_changes() -> None:
    be = FakeBackend([NodeInfo("w0", Resources.of(cpu=8, gpu=4))])  # no request_resources at all
    core = ControllerCore(be, SchedulerSettings(), Clock())
    core.refresh_nodes()
    view = core.submit(req("gang", bundles=2), "o@1")
    core.step()
    assert view["state"] == "rejected" and view["reason"].startswith("never schedulable: ")
    assert core.stats()["autoscaler"] is None


def test_the_request_is_the_union_of_every_waiting_job_and_shrinks_as_they_leave() -> None:
    core, be, _ = make()
    core.submit(req("g2", bundles=2), "o@1")
    core.submit(req("g3", bundles=3, strategy="SPREAD"), "o@1")
    core.submit(req("small", gpu=1), "o@1")
    core.schedule()
    assert core.jobs["small"].state == "running"
    assert be.last() == four(5)
    assert core.stats()["autoscaler"]["requested"] == "5 x {CPU: 1, GPU: 4}"
    core.release("g2")  # cancelled while waiting
    core.schedule()
    assert be.last() == four(3)
    core.release("g3")
    core.schedule()
    assert be.requests[-1] == []


def test_strict_pack_asks_for_one_node_that_holds_the_whole_gang() -> None:
    big = {"resources": {"CPU": 16, "GPU": 8}, "max_workers": 1}
    core, be, _ = make({"node_types": {"gpu_worker": dict(GPU_NODE), "big": big}, "max_workers": 3})
    view = core.submit(req("sp", bundles=2, strategy="STRICT_PACK"), "o@1")
    assert view["state"] == "queued" and view["reason"].endswith("requested 1 x {CPU: 2, GPU: 8}")
    core.schedule()
    assert be.last() == [Resources.of(cpu=2, gpu=8)]


def test_the_global_max_workers_caps_what_may_be_added() -> None:
    shape = {"node_types": {"gpu_worker": {**GPU_NODE, "max_workers": 5}}, "max_workers": 2}
    core, _, _ = make(shape)
    # w0 is up: one more worker at most (max_workers 2), so 8 GPU, not 24.
    assert core.submit(req("ok", bundles=2), "o@1")["state"] == "queued"
    view = core.submit(req("no", bundles=3), "o@1")
    assert view["state"] == "rejected" and "at most 2 workers" in view["reason"]


def test_workers_already_up_count_against_their_type() -> None:
    # Three gpu_workers up (one declared by Ray's node-group label, two matched by shape): none to add.
    nodes = [head(), gpu_worker(0), gpu_worker(1), NodeInfo("w2", Resources.of(cpu=8, gpu=4), node_type="gpu_worker")]
    core, _, _ = make({"node_types": {"gpu_worker": dict(GPU_NODE)}}, nodes)
    assert core.submit(req("g3", bundles=3), "o@1")["state"] == "queued"  # fits now (busy or not)
    assert core.submit(req("g4", bundles=4), "o@1")["state"] == "rejected"


def test_label_selectors_pick_the_node_type_and_travel_with_the_request() -> None:
    a100 = {"resources": {"CPU": 8, "GPU": 8}, "labels": {"gpu_type": "A100"}, "max_workers": 2}
    core, be, _ = make({"node_types": {"gpu_worker": dict(GPU_NODE), "a100": a100}, "max_workers": 4})
    view = core.submit(req("sel", gpu=8, label_selector={"gpu_type": "A100"}), "o@1")
    assert view["state"] == "queued"
    core.schedule()
    assert be.requests[-1] == [(Resources.of(cpu=1, gpu=8), {"gpu_type": "A100"})]
    view = core.submit(req("t4", gpu=1, label_selector={"gpu_type": "T4"}), "o@1")
    assert view["state"] == "rejected" and "no alive node has labels gpu_type=T4" in view["reason"]
    be.add_node(NodeInfo("a0", Resources.of(cpu=8, gpu=8), {"gpu_type": "A100"}))
    core.step()
    assert core.jobs["sel"].placement == ("a0",) and be.requests[-1] == []


def test_quota_still_rejects_first() -> None:
    core, _, _ = make(teams={"small": {"gpu": 4}})
    view = core.submit(req("q", bundles=2, team="small"), "o@1")
    assert view["state"] == "rejected" and "quota" in view["reason"]


def test_a_restarted_controller_sends_the_waiting_jobs_again() -> None:
    core, be, clock = make()
    core.submit(req("gang", bundles=2), "o@1")
    core.schedule()
    sent = len(be.requests)
    restarted = ControllerCore(be, None, clock)
    assert restarted.jobs["gang"].scale_up and restarted.settings.autoscaler is not None
    restarted.step()
    assert len(be.requests) == sent + 1 and be.last() == four(2)


def test_a_failed_request_shows_in_the_queue_and_is_retried() -> None:
    core, be, _ = make()
    be.fail = True
    core.submit(req("gang", bundles=2), "o@1")
    core.step()
    assert "the last request failed: ConnectionError: GCS unavailable" in core.jobs["gang"].reason
    assert core.stats()["autoscaler"]["error"]
    be.fail = False
    core.step()
    assert be.last() == four(2) and core.autoscale_error == ""
    assert core.jobs["gang"].reason == "waiting for the autoscaler: requested 2 x {CPU: 1, GPU: 4}"


def test_turning_the_autoscaler_off_clears_the_request() -> None:
    core, be, _ = make()
    core.submit(req("gang", bundles=2), "o@1")
    core.schedule()
    assert be.last() == four(2)
    core.configure(SchedulerSettings())
    core.schedule()
    assert be.requests[-1] == [] and not core.jobs["gang"].scale_up
    assert "never schedulable" in core.jobs["gang"].reason, "it stays queued, as a job that stopped fitting"


def test_a_bad_max_shape_changes_nothing() -> None:
    core, _, _ = make()
    with pytest.raises(InvalidRequestError, match="gpu_worker"):
        core.configure(SchedulerSettings(autoscaler={"node_types": {"gpu_worker": {"resources": {"CPU": -1}}}}))
    assert core.settings.autoscaler is not None and core._shape is not None


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"node_types": {}}, "no node types"),
        ({"node_types": {"x": {"resources": {"CPU": 1}}}}, "max_workers must be an integer"),
        ({"node_types": {"x": {"max_workers": 1}}}, "malformed"),
        ({"node_types": {"x": {"resources": {"CPU": 1}, "max_workers": 1}}, "extra": 1}, "unknown key"),
        ({"node_types": {"x": {"resources": {"CPU": 1}, "max_workers": 1}}, "max_workers": -1}, "max_workers"),
    ],
)
def test_max_shape_settings_are_checked(settings: dict, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        MaxShape.from_settings(settings)


def test_max_shape_reuses_placement_strategies() -> None:
    shape = MaxShape.from_settings({"node_types": {"gpu_worker": dict(GPU_NODE)}, "max_workers": 3})
    assert shape is not None
    now = ClusterView((NodeView("w0", Resources.of(cpu=8, gpu=4), Resources.of()),))
    spread = JobRequest("s", tuple(four(3)), strategy="SPREAD")
    assert shape.never_reason(spread, now, {"gpu_worker": 1}, 1) is None
    strict = JobRequest("p", tuple(four(2)), strategy="STRICT_PACK")
    why = shape.never_reason(strict, now, {"gpu_worker": 1}, 1)
    assert why is not None and "(STRICT_PACK)" in why and "largest node has 4 GPU" in why
    assert shape.never_reason(spread, now, {"gpu_worker": 3}, 3) is not None, "no worker left to add"
