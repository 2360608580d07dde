"""ControllerCore with a fake backend and clock: no Ray."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from raypipe.resources import Resources
from raypipe.scheduler.backend import NodeInfo
from raypipe.scheduler.controller import ControllerCore, SchedulerSettings
from raypipe.scheduler.jobs import JobState


class FakeBackend:
    def __init__(self, nodes: list[NodeInfo]) -> None:
        self._nodes = nodes
        self.pgs: dict[str, tuple[str, tuple[Resources, ...], tuple[str, ...]]] = {}
        self.settings: bytes | None = None
        self.saved: dict[str, bytes] = {}
        self.dead: set[str] = set()
        self._n = 0

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    def create_pg(self, name: str, bundles: Sequence[Resources], node_ids: Sequence[str]) -> str:
        self._n += 1
        pid = f"pg{self._n:04d}"
        self.pgs[pid] = (name, tuple(bundles), tuple(node_ids))
        return pid

    def remove_pg(self, pg_id: str) -> None:
        self.pgs.pop(pg_id, None)

    def live_pgs(self) -> set[str]:
        return set(self.pgs)

    def dead_drivers(self) -> set[str]:
        return set(self.dead)

    def load_state(self) -> tuple[bytes | None, dict[str, bytes]]:
        return self.settings, dict(self.saved)

    def save_settings(self, blob: bytes) -> None:
        self.settings = blob

    def save_jobs(self, jobs: dict[str, bytes | None]) -> None:
        for k, v in jobs.items():
            if v is None:
                self.saved.pop(k, None)
            else:
                self.saved[k] = v

    def kill_node(self, node_id: str) -> None:
        self._nodes = [replace(n, alive=n.alive and n.node_id != node_id) for n in self._nodes]

    def set_available(self, node_id: str, available: Resources | None) -> None:
        self._nodes = [replace(n, available=available) if n.node_id == node_id else n for n in self._nodes]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def gpu_nodes(n: int = 3, gpus: int = 4) -> list[NodeInfo]:
    return [NodeInfo(f"node-{i}", Resources.of(cpu=8, gpu=gpus)) for i in range(n)]


def req(job_id: str, gpu: float = 1, bundles: int = 1, **kw: object) -> dict:
    return {"job_id": job_id, "bundles": [{"gpu": gpu, "cpu": 1}] * bundles, **kw}


def make(policy: str = "fifo", teams: dict | None = None, **args: object) -> tuple[ControllerCore, FakeBackend, Clock]:
    be, clock = FakeBackend(gpu_nodes()), Clock()
    core = ControllerCore(be, SchedulerSettings(policy=policy, policy_args=dict(args), teams=teams or {}), clock)
    core.refresh_nodes()
    return core, be, clock


def states(core: ControllerCore) -> dict[str, str]:
    return {jid: j.state for jid, j in core.jobs.items()}


def test_gangs_are_granted_whole_and_pinned_to_the_chosen_nodes() -> None:
    core, be, _ = make()
    core.submit(req("big1", gpu=4, bundles=2), "o@1")
    core.submit(req("big2", gpu=4, bundles=2), "o@1")
    core.submit(req("small", gpu=4), "o@1")
    core.schedule()
    # Strict FIFO: big2 does not fit (4 GPU left), and small waits behind it.
    assert states(core) == {"big1": "running", "big2": "queued", "small": "queued"}
    ((name, bundles, nodes),) = [v for v in be.pgs.values() if "big1" in v[0]]
    assert len(bundles) == 2 and len(set(nodes)) == 2, "8 GPUs need two 4-GPU nodes"
    assert core.jobs["big2"].reason and core.jobs["small"].reason
    core.release("big1")
    core.schedule()
    assert states(core) == {"big1": "done", "big2": "running", "small": "running"}
    assert len(be.pgs) == 2


def test_infeasible_request_is_rejected_with_reason() -> None:
    core, be, _ = make()
    view = core.submit(req("huge", gpu=8), "o@1")
    assert view["state"] == "rejected" and "8" in view["reason"]
    view = core.submit(req("label", gpu=1, label_selector={"gpu_type": "H100"}), "o@1")
    assert view["state"] == "rejected" and "gpu_type" in view["reason"]
    assert not be.pgs


def test_team_quota_holds_under_many_submissions() -> None:
    core, be, _ = make(teams={"research": {"gpu": 4}})
    for i in range(50):
        core.submit(req(f"j{i}", gpu=1, team="research"), "o@1")
    core.schedule()
    assert sum(1 for s in states(core).values() if s == "running") == 4
    waiting = [j for j in core.jobs.values() if j.state == "queued"]
    assert all("quota" in j.reason for j in waiting), waiting[0].reason


def test_restart_keeps_queue_adopts_groups_and_removes_leaks() -> None:
    core, be, clock = make()
    core.submit(req("a", gpu=4), "o@1")
    core.submit(req("b", gpu=4, bundles=3), "o@1")  # waits: 12 GPU while a holds 4
    core.schedule()
    be.pgs["leaked"] = ("raypipe-grant-x", (), ())
    restarted = ControllerCore(be, None, clock)
    assert states(restarted) == {"a": "running", "b": "queued"}
    assert restarted.settings.policy == "fifo"
    assert "leaked" not in be.pgs and len(be.pgs) == 1
    restarted.refresh_nodes()
    restarted.release("a")
    restarted.schedule()
    assert restarted.jobs["b"].state == "running"


def test_dead_node_loses_its_jobs_and_requeue_counts_service() -> None:
    core, be, clock = make()
    core.submit(req("a", gpu=4), "o@1")
    core.schedule()
    node = core.jobs["a"].placement[0]  # type: ignore[index]
    clock.t += 100
    be.kill_node(node)
    assert core.refresh_nodes()
    assert core.jobs["a"].state == "lost" and not be.pgs
    core.requeue("a")
    job = core.jobs["a"]
    assert job.state == "queued" and job.request.attained_service == pytest.approx(400.0)
    core.schedule()
    assert job.state == "running" and job.placement[0] != node  # type: ignore[index]


def test_priority_preemption_round_trip() -> None:
    core, be, clock = make("priority", preempt=True)
    for i in range(3):
        core.submit(req(f"low{i}", gpu=4, priority=0), "o@1")
    core.schedule()
    clock.t += 10
    core.submit(req("high", gpu=4, priority=10), "o@1")
    core.schedule()
    victims = [j for j in core.jobs.values() if j.state == "preempting"]
    assert len(victims) == 1
    core.requeue(victims[0].job_id)
    core.schedule()
    assert core.jobs["high"].state == "running"
    assert victims[0].preemptions == 1 and victims[0].state == "queued"


def test_leases_and_dead_drivers_free_grants() -> None:
    core, be, clock = make()
    core.settings.lease_s = 30
    core.submit(req("a", gpu=1), "run1@01000000")
    core.submit(req("b", gpu=1), "run2@02000000")
    core.schedule()
    be.dead.add("01000000")
    core.reap()
    assert core.jobs["a"].state == "done" and "exited" in core.jobs["a"].reason
    assert core.jobs["b"].state == "running"
    clock.t += 31
    core.reap()
    assert core.jobs["b"].state == "done" and not be.pgs


def test_poll_is_idempotent_submit_and_versions_increase() -> None:
    core, _, _ = make()
    v1 = core.submit(req("a"), "o@1")
    v2 = core.submit(req("a"), "o@1")
    assert v1["version"] == v2["version"] == 0
    core.schedule()
    assert core.poll(["a"])["a"]["version"] == 1


def test_ledger_grant_reserves_capacity_without_a_group() -> None:
    core, be, clock = make()
    view = core.submit(req("train", gpu=4, bundles=2, grant="ledger"), "o@1")
    core.schedule()
    job = core.jobs["train"]
    assert job.state == "running" and job.pg_id is None and not be.pgs
    assert len(set(job.placement or ())) == 2, "the owner pins the library's workers to these nodes"
    core.submit(req("other", gpu=4, bundles=2), "o@1")
    core.schedule()
    assert core.jobs["other"].state == "queued", "the ledger holds 8 of 12 GPUs"
    restarted = ControllerCore(be, None, clock)
    assert restarted.jobs["train"].state == "running" and restarted.jobs["train"].grant == "ledger"
    restarted.refresh_nodes()
    restarted.release("train")
    restarted.schedule()
    assert restarted.jobs["other"].state == "running"
    with pytest.raises(ValueError, match="grant"):
        core.submit(req("bad", grant="gang"), "o@1")
    assert view["grant"] == "ledger"


def test_work_raypipe_did_not_admit_is_not_granted_again() -> None:
    core, be, _ = make()
    # Something outside raypipe took 3 GPUs on node-0 and 4 on node-1.
    be.set_available("node-0", Resources.of(cpu=8, gpu=1))
    be.set_available("node-1", Resources.of(cpu=8, gpu=0))
    core.refresh_nodes()
    core.submit(req("a", gpu=4), "o@1")
    core.submit(req("b", gpu=2), "o@1")
    core.schedule()
    assert core.jobs["a"].placement == ("node-2",)
    assert core.jobs["b"].state == "queued" and "node" in core.jobs["b"].reason
    # Ray reports raypipe's own groups as taken too: they are not counted twice.
    be.set_available("node-2", Resources.of(cpu=7, gpu=0))
    be.set_available("node-1", None)
    core.refresh_nodes()
    core.schedule()
    assert core.jobs["b"].placement == ("node-1",)


def test_a_job_already_stopping_is_not_chosen_again() -> None:
    core, be, _ = make("priority", preempt=True)
    core.submit(req("low", gpu=4, bundles=3, priority=0), "o@1")
    core.schedule()
    core.submit(req("high1", gpu=4, priority=5), "o@1")
    core.schedule()
    assert core.jobs["low"].state == "preempting"
    version = core.jobs["low"].version
    core.submit(req("high2", gpu=4, priority=5), "o@1")
    core.schedule()
    assert core.jobs["low"].version == version, "no second preemption of a job that is stopping"
    assert core.jobs["high2"].state == "queued"


def test_unchanged_running_jobs_keep_their_objects_across_decisions() -> None:
    # The policy's indexes diff running jobs by identity: an unchanged job keeps its RunningJob,
    # a job that starts stopping gets a new one that is no longer a victim.
    core, _, clock = make("priority", preempt=True)
    core.submit(req("a", gpu=4, priority=0), "o@1")
    core.submit(req("b", gpu=4, priority=0), "o@1")
    core.schedule()
    first = {r.job_id: r for r in core._running_jobs(clock())}
    clock.t += 5
    again = {r.job_id: r for r in core._running_jobs(clock())}
    assert set(first) == {"a", "b"} and all(again[j] is first[j] for j in first)
    core.jobs["a"].state = JobState.PREEMPTING
    after = {r.job_id: r for r in core._running_jobs(clock())}
    assert after["b"] is first["b"]
    assert after["a"] is not first["a"] and not after["a"].request.preemptible
    core.release("b")
    assert [r.job_id for r in core._running_jobs(clock())] == ["a"]
