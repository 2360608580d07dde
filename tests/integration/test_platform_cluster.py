"""The platform config on a real (local) Ray: the driver pushes it to the scheduler, which then
ignores a pipeline's own settings and refuses a driver whose store lacks it; jobs carry their
principal, and only that principal (or an admin) releases one through `raypipe queue`."""

from __future__ import annotations

from pathlib import Path

import pytest

import raypipe
from raypipe import api
from raypipe.identity import TOKEN_ENV, TOKEN_FILE_ENV, token_sha256
from raypipe.scheduler.client import SchedulerClient, get_controller
from raypipe.store.metadata import MetadataStore
from tests.conftest import reset_scheduler

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ADMIN, BOB, CAROL = "admin-token", "bob-token", "carol-token"
F = "tests.integration.funcs"


def platform_file(tmp_path: Path, lease_s: float) -> Path:
    path = tmp_path / f"platform-{lease_s:g}.yaml"
    path.write_text(
        "kind: platform\n"
        "users:\n"
        f"  admin: {{token_sha256: '{token_sha256(ADMIN)}', admin: true}}\n"
        f"  bob: {{token_sha256: '{token_sha256(BOB)}', teams: [prod]}}\n"
        f"  carol: {{token_sha256: '{token_sha256(CAROL)}', teams: [prod]}}\n"
        "teams: {prod: {cpu: 2, max_priority: 5}}\n"
        f"scheduler: {{policy: priority, lease_s: {lease_s}}}\n"
    )
    return path


def pipeline(store: Path, **scheduler: object) -> raypipe.PipelineConfig:
    stage = raypipe.StageConfig(
        name="work",
        kind="python",
        team="prod",
        priority=3,
        resources={"cpu": 0.5},
        cache=False,
        params={"function": f"{F}:sleep", "args": {"seconds": 0.1}},
    )
    extra = {"scheduler": scheduler} if scheduler else {}
    return raypipe.PipelineConfig(name="shared", storage=str(store), stages=[stage], **extra)


def test_the_scheduler_follows_the_platform_config_and_checks_owners(
    tmp_path: Path, ray_local: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    reset_scheduler()
    store = tmp_path / "store"
    db = str(store / "raypipe.db")
    monkeypatch.setenv(TOKEN_ENV, ADMIN)
    applied = api.admin_apply(platform_file(tmp_path, 60), db=db)
    assert applied["version"] == 1 and applied["pushed"] is False  # no scheduler yet: drivers push it

    monkeypatch.setenv(TOKEN_ENV, BOB)
    result = raypipe.run(pipeline(store))
    assert result.ok, result.errors
    import ray

    handle = get_controller(create=False)
    stats = ray.get(handle.stats.remote())
    assert stats["platform_version"] == 1 and stats["policy"] == "priority"
    meta = MetadataStore(db)
    assert meta.get_run(result.run_id).actor == "bob"
    meta.close()

    # a store of one's own (no platform config there), and a lease that would reap everyone
    with pytest.raises(raypipe.RaypipeError, match=r"follows an admin's platform config \(version 1\)"):
        raypipe.run(pipeline(tmp_path / "own", lease_s=0.001), db=str(tmp_path / "own.db"))
    assert ray.get(handle.stats.remote())["platform_version"] == 1

    # bob's job: carol may not release it, bob may
    client = SchedulerClient(handle, owner="bob-work", principal="bob")
    job = client.new_job_id("bob-work")
    client.submit(job, [raypipe.Resources(cpu=0.5)], team="prod")
    monkeypatch.setenv(TOKEN_ENV, CAROL)
    with pytest.raises(raypipe.RaypipeError, match="queue release: job .* belongs to bob: only its owner or an admin"):
        api.queue_action("release", job, db=db)
    monkeypatch.setenv(TOKEN_ENV, BOB)
    assert api.queue_action("release", job, db=db)["reason"] == "released by bob"
    assert [(a["actor"], a["target"]) for a in api.audit(action="queue", db=db)] == [("bob", job)]

    # a new version reaches the running scheduler at once
    monkeypatch.setenv(TOKEN_ENV, ADMIN)
    applied = api.admin_apply(platform_file(tmp_path, 90), db=db)
    assert (applied["version"], applied["pushed"], applied["controller_version"]) == (2, True, 2)
    reset_scheduler()
