"""Red team: the attacks of issue 19 on a shared cluster's scheduler and identities, each of
which must fail to do harm.  No Ray: the CLI with real SQLite stores, the driver's scheduler
hand-off and the controller's core (its actor's methods too) with a fake cluster.

* a pipeline setting ``lease_s`` (or the policy, or teams) to reap or starve others: refused
  when a platform config exists, and ignored by a controller that follows one even when the
  pipeline's metadata store has none;
* team impersonation (a stage in a team its user is not in) and unknown teams: refused;
* another owner's ``release`` / ``requeue`` / ``cancel``: refused, also when claiming admin;
* a non-admin's ``admin apply``: refused, nothing stored;
* a token file others can read: refused.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from raypipe.cli import app
from raypipe.exceptions import RaypipeError
from raypipe.identity import TOKEN_ENV, TOKEN_FILE_ENV, token_sha256
from raypipe.runner import driver
from raypipe.runner.plan import build_plan
from raypipe.scheduler.access import AccessDenied, act
from raypipe.scheduler.actor import ControllerActor
from raypipe.scheduler.controller import ControllerCore, SchedulerSettings
from raypipe.store.metadata import MetadataStore
from raypipe.store.platform import PlatformStore
from tests.unit.controller.test_controller_core import FakeBackend, gpu_nodes, make, req

runner = CliRunner()
ADMIN, VICTIM, ATTACKER = "admin-token-1", "victim-token-2", "attacker-token-3"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Ray (as in tests/unit), no token unless given, a home of the test's own."""
    import ray

    def _no(*a: object, **k: object) -> None:
        raise RuntimeError("these attacks run without Ray")

    monkeypatch.setattr(ray, "init", _no)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    monkeypatch.delenv("RAYPIPE_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


PLATFORM = f"""\
kind: platform
users:
  admin: {{token_sha256: '{token_sha256(ADMIN)}', admin: true}}
  victim: {{token_sha256: '{token_sha256(VICTIM)}', teams: [ml-prod]}}
  attacker: {{token_sha256: '{token_sha256(ATTACKER)}', teams: [interns]}}
teams:
  ml-prod: {{gpu: 8, min_priority: 0, max_priority: 100}}
  interns: {{gpu: 1, min_priority: 0, max_priority: 2}}
scheduler: {{policy: priority, policy_args: {{preempt: true}}, lease_s: 60}}
"""


def cli(*args: str, token: str | None = None) -> Any:
    return runner.invoke(app, list(args), env={TOKEN_ENV: token} if token else None, terminal_width=200)


@pytest.fixture
def platform_db(tmp_path: Path) -> str:
    db = str(tmp_path / "platform.db")
    (tmp_path / "platform.yaml").write_text(PLATFORM)
    r = cli("admin", "apply", str(tmp_path / "platform.yaml"), "--db", db, "--no-push", token=ADMIN)
    assert r.exit_code == 0, r.output
    return db


def pipeline(tmp_path: Path, scheduler: str = "", team: str = "interns", priority: int = 0) -> str:
    path = tmp_path / "attack.yaml"
    path.write_text(
        "name: attack\n"
        + scheduler
        + "stages:\n"
        + "  - name: grab\n"
        + "    kind: python\n"
        + f"    team: {team}\n"
        + f"    priority: {priority}\n"
        + "    resources: {cpu: 1, gpu: 8}\n"
        + '    params: {function: "tests.unit.funcs:make"}\n'
    )
    return str(path)


def nothing_ran(db: str) -> None:
    meta = MetadataStore(db)
    try:
        assert meta.list_runs() == []
        assert [a["action"] for a in meta.audit_log()] == ["admin.apply"]
    finally:
        meta.close()


@pytest.mark.parametrize(
    "scheduler",
    [
        "scheduler: {lease_s: 0.001}\n",
        "scheduler: {policy: las}\n",
        "scheduler: {teams: {interns: {gpu: 64, priority: 100}}}\n",
        "scheduler: {policy: priority, policy_args: {preempt: true, aging_s: 1}}\n",
    ],
    ids=["lease_s", "policy", "teams", "policy_args"],
)
def test_a_pipeline_cannot_reconfigure_the_shared_scheduler(tmp_path: Path, platform_db: str, scheduler: str) -> None:
    r = cli("run", pipeline(tmp_path, scheduler), "--db", platform_db, token=ATTACKER)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "set by this pipeline, but on this platform the scheduler's settings belong to its admins" in r.stderr
    assert "raypipe admin apply" in r.stderr
    nothing_ran(platform_db)


class AttackBackend(FakeBackend):
    """The fake cluster (three nodes of 4 GPUs) the controller actor starts with."""

    def __init__(self) -> None:
        super().__init__(gpu_nodes())


class _Handle:
    """A controller actor handle over a real ControllerCore, for the driver's hand-off (no Ray)."""

    def __init__(self, core: ControllerCore) -> None:
        self.core = core


def test_a_pipeline_from_a_store_without_the_platform_config_is_refused_and_its_lease_ignored(
    tmp_path: Path, platform_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same attack through a metadata store of one's own (no platform config there)."""
    core, _, clock = make()
    meta = MetadataStore(platform_db)
    stored = PlatformStore(meta).latest()
    meta.close()
    assert stored is not None and core.configure(SchedulerSettings(**stored.settings()))
    core.submit(req("victim-job", gpu=4, principal="victim"), "victim-run@job1")
    core.schedule()

    handle = _Handle(core)
    monkeypatch.setattr(driver, "get_controller", lambda *a, **k: handle)
    monkeypatch.setattr(driver, "platform_version", lambda h: h.core.settings.version)

    def configure(h: _Handle, settings: dict[str, Any]) -> dict[str, Any]:
        applied = h.core.configure(SchedulerSettings(**settings))
        return {"applied": applied, "version": h.core.settings.version}

    monkeypatch.setattr(driver, "configure_controller", configure)
    from raypipe.config import read_config

    cfg, source = read_config(pipeline(tmp_path, "scheduler: {lease_s: 0.001}\n"))
    own = build_plan(cfg, source)
    with pytest.raises(RaypipeError, match=r"follows an admin's platform config \(version 1\), and this run's"):
        driver.scheduler_client(own.config, None, driver.identity.single_user(), "attack-run")
    configure(handle, cfg.scheduler.settings())  # and were it sent straight to the controller:
    assert core.settings.lease_s == 60.0
    clock.t += 5.0
    core.reap()
    assert core.jobs["victim-job"].state == "running"


def test_team_impersonation_and_unknown_teams_are_refused(tmp_path: Path, platform_db: str) -> None:
    r = cli("run", pipeline(tmp_path, team="ml-prod", priority=100), "--db", platform_db, token=ATTACKER)
    assert r.exit_code == 2
    assert "attacker is not a member of team 'ml-prod' (their teams: interns, default)" in r.stderr
    r = cli("run", pipeline(tmp_path, team="ml_prod"), "--db", platform_db, token=ATTACKER)
    assert r.exit_code == 2 and "unknown team 'ml_prod'; known teams: default, interns, ml-prod" in r.stderr
    r = cli("run", pipeline(tmp_path, team="interns", priority=99), "--db", platform_db, token=ATTACKER)
    assert r.exit_code == 2 and "got 99; team 'interns' allows priorities 0..2" in r.stderr
    r = cli("run", pipeline(tmp_path, team="ml-prod"), "--db", platform_db, token="forged")
    assert r.exit_code == 2 and "no user's in platform config version 1" in r.stderr
    r = cli("run", pipeline(tmp_path, team="ml-prod"), "--db", platform_db)
    assert r.exit_code == 2 and "give your token" in r.stderr
    nothing_ran(platform_db)


def test_another_owners_jobs_cannot_be_released_requeued_or_cancelled() -> None:
    core, be, _ = make()
    core.configure(SchedulerSettings(version=1, admins=["admin"]))
    core.submit(req("victim-running", gpu=4, bundles=3, principal="victim"), "victim-run@job1")
    core.submit(req("victim-queued", gpu=4, bundles=3, principal="victim"), "victim-run@job1")
    core.schedule()
    before = {jid: (j.state, j.version) for jid, j in core.jobs.items()}
    for caller in ({"name": "attacker", "admin": False}, {"name": "attacker", "admin": True}):
        for action, job in (("release", "victim-running"), ("requeue", "victim-running"), ("cancel", "victim-queued")):
            with pytest.raises(AccessDenied, match=f"belongs to victim: only its owner or an admin may {action}"):
                act(core, action, job, caller)
    assert {jid: (j.state, j.version) for jid, j in core.jobs.items()} == before and len(be.pgs) == 1

    async def through_the_actor() -> dict[str, Any]:
        actor = ControllerActor(tick_s=60.0, backend=f"{__name__}:AttackBackend")
        await actor.configure(SchedulerSettings(version=1, admins=["admin"]).__dict__)
        await actor.submit([req("v", principal="victim")], "victim-run@job1")
        return await actor.act("release", "v", {"name": "attacker", "admin": True})

    assert "belongs to victim" in asyncio.run(through_the_actor())["error"]


def test_a_non_admin_cannot_apply_a_platform_config(tmp_path: Path, platform_db: str) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(PLATFORM.replace("teams: [interns]}", "teams: [interns], admin: true}"))
    r = cli("admin", "apply", str(mine), "--db", platform_db, "--no-push", token=ATTACKER)
    assert r.exit_code == 2 and "admin apply: attacker is not an admin of platform config version 1" in r.stderr
    r = cli("admin", "apply", str(mine), "--db", platform_db, "--no-push")  # no token: not the single user either
    assert r.exit_code == 2 and "give your token" in r.stderr
    r = cli("admin", "history", "--db", platform_db, "--json")
    assert [h["version"] for h in json.loads(r.stdout)] == [1]


def test_a_token_file_others_can_read_is_refused(tmp_path: Path, platform_db: str) -> None:
    path = tmp_path / "home" / ".config" / "raypipe" / "token"
    path.parent.mkdir(parents=True)
    path.write_text(VICTIM)
    os.chmod(path, 0o644)
    r = cli("whoami", "--db", platform_db)
    assert r.exit_code == 2 and "has mode 0644" in r.stderr and "chmod 600" in r.stderr
    os.chmod(path, 0o600)
    r = cli("whoami", "--db", platform_db, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "victim"
