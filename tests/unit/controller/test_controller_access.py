"""The controller follows the platform config (versioned settings) and checks who releases,
requeues or cancels a job: its principal or an admin.  ControllerCore and ControllerActor with a
fake backend and clock, no Ray."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from raypipe.scheduler.access import AccessDenied, act
from raypipe.scheduler.actor import ControllerActor
from raypipe.scheduler.controller import ControllerCore, SchedulerSettings
from raypipe.scheduler.errors import SchedulingError
from tests.unit.controller.test_controller_core import FakeBackend, gpu_nodes, make, req

ALICE = {"name": "alice", "admin": False}
BOB = {"name": "bob", "admin": False}
BOB_CLAIMING_ADMIN = {"name": "bob", "admin": True}
CAROL_ADMIN = {"name": "carol", "admin": True}


def platform(version: int, admins: list[str] | None = None, **kw: Any) -> SchedulerSettings:
    return SchedulerSettings(version=version, admins=["carol"] if admins is None else admins, **kw)


def test_a_platform_config_replaces_a_pipelines_settings_and_only_a_newer_one_replaces_it() -> None:
    core, be, clock = make()
    assert core.configure(SchedulerSettings(policy="priority", lease_s=0.001))  # single user: as before
    assert core.settings.lease_s == 0.001 and core.settings.version is None
    assert core.configure(platform(3, lease_s=60.0, policy="fair_share"))
    assert (core.settings.version, core.settings.lease_s, core.settings.policy) == (3, 60.0, "fair_share")
    # a pipeline's settings, the same version again, an older one: ignored
    assert not core.configure(SchedulerSettings(policy="fifo", lease_s=0.001))
    assert not core.configure(platform(3, lease_s=1.0))
    assert not core.configure(platform(2, lease_s=1.0))
    assert (core.settings.version, core.settings.lease_s, core.settings.policy) == (3, 60.0, "fair_share")
    assert core.stats()["platform_version"] == 3
    assert core.configure(platform(4, lease_s=30.0))
    assert core.settings.lease_s == 30.0
    # a restarted controller keeps following it
    restarted = ControllerCore(be, None, clock)
    assert (restarted.settings.version, restarted.settings.admins) == (4, ["carol"])
    assert not restarted.configure(SchedulerSettings(lease_s=0.001))


def test_a_pipelines_tiny_lease_cannot_reap_another_owners_job_once_a_platform_config_rules() -> None:
    core, _, clock = make()
    core.configure(platform(1, lease_s=60.0))
    core.submit(req("theirs", principal="alice"), "run-a@job1")
    core.schedule()
    core.configure(SchedulerSettings(lease_s=0.001))  # the attack: ignored
    clock.t += 5.0  # alice's driver polls less often than 0.001 s, well within 60 s
    core.reap()
    assert core.jobs["theirs"].state == "running"


def _running(core: ControllerCore, job_id: str, principal: str | None) -> None:
    core.submit(req(job_id, principal=principal), f"{job_id}@job1")
    core.schedule()
    assert core.jobs[job_id].state == "running"


def test_only_the_jobs_principal_or_an_admin_releases_requeues_or_cancels_it() -> None:
    core, be, _ = make()
    core.configure(platform(1))
    _running(core, "a", "alice")
    for action in ("release", "requeue"):
        with pytest.raises(AccessDenied, match=rf"job a belongs to alice: only its owner or an admin may {action}"):
            act(core, action, "a", BOB)
        with pytest.raises(AccessDenied):  # claiming admin does not make bob one: the platform says who is
            act(core, action, "a", BOB_CLAIMING_ADMIN)
    assert core.jobs["a"].state == "running" and len(be.pgs) == 1
    view = act(core, "requeue", "a", ALICE)
    assert view.state == "queued" and view.reason == "requeued by alice"
    core.schedule()
    view = act(core, "release", "a", CAROL_ADMIN)
    assert view.state == "done" and view.reason == "released by carol" and not be.pgs


def test_cancel_takes_a_queued_job_out_and_refuses_a_running_one() -> None:
    core, _, _ = make()
    core.configure(platform(1))
    for i in range(3):
        core.submit(req(f"big{i}", gpu=4, bundles=3, principal="alice"), "o@1")  # 12 GPUs: one at a time
    core.schedule()
    assert [core.jobs[f"big{i}"].state for i in range(3)] == ["running", "queued", "queued"]
    with pytest.raises(AccessDenied):
        act(core, "cancel", "big1", BOB)
    assert act(core, "cancel", "big1", ALICE).reason == "cancelled by alice"
    with pytest.raises(SchedulingError, match="big0 is running: only a queued or lost job is cancelled; release it"):
        act(core, "cancel", "big0", ALICE)
    with pytest.raises(SchedulingError, match="big2 is queued: only a running, preempting or lost job is requeued"):
        act(core, "requeue", "big2", ALICE)
    with pytest.raises(SchedulingError, match="big1 is done: nothing to release"):
        act(core, "release", "big1", ALICE)
    with pytest.raises(SchedulingError, match="no job 'nope'"):
        act(core, "release", "nope", CAROL_ADMIN)
    with pytest.raises(SchedulingError, match="unknown action 'kill'"):
        act(core, "kill", "big0", CAROL_ADMIN)


def test_without_a_platform_config_the_callers_claim_counts() -> None:
    """A single-user cluster: every principal is an admin (the OS user); a caller that does not
    claim admin still acts on its own jobs only."""
    core, _, _ = make()
    _running(core, "a", "alice")
    with pytest.raises(AccessDenied):
        act(core, "release", "a", BOB)
    assert act(core, "release", "a", BOB_CLAIMING_ADMIN).state == "done"
    # a platform config without users (admins None): the claim counts too
    assert core.configure(SchedulerSettings(version=1, admins=None))
    _running(core, "b", "alice")
    assert act(core, "requeue", "b", BOB_CLAIMING_ADMIN).state == "queued"


def test_a_job_without_a_principal_is_an_admins_only() -> None:
    core, _, _ = make()
    core.configure(platform(1))
    _running(core, "serve", None)
    with pytest.raises(AccessDenied, match="belongs to owner serve@job1"):
        act(core, "release", "serve", ALICE)
    assert act(core, "release", "serve", CAROL_ADMIN).state == "done"


class _Backend(FakeBackend):
    def __init__(self) -> None:
        super().__init__(gpu_nodes())


def test_the_actor_answers_a_refusal_as_data_and_jobs_carry_their_principal() -> None:
    async def scenario() -> tuple[Any, ...]:
        actor = ControllerActor(tick_s=60.0, backend=f"{__name__}:_Backend")
        configured = await actor.configure(platform(2).__dict__)
        ignored = await actor.configure(SchedulerSettings(lease_s=0.001).__dict__)
        (view,) = await actor.submit([req("a", principal="alice")], "run@1")
        denied = await actor.act("release", "a", BOB)
        done = await actor.act("release", "a", ALICE)
        return configured, ignored, view, denied, done, await actor.stats()

    configured, ignored, view, denied, done, stats = asyncio.run(scenario())
    assert configured == {"applied": True, "version": 2} and ignored == {"applied": False, "version": 2}
    assert view["principal"] == "alice" and json.loads(json.dumps(view)) == view
    assert set(denied) == {"error"} and "belongs to alice" in denied["error"]
    assert done["job"]["state"] == "done" and done["job"]["reason"] == "released by alice"
    assert stats["platform_version"] == 2
