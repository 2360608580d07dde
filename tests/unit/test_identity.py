"""Identities and the platform config: who a caller is (token, token file, the single-user
default), what a platform config may say, what a pipeline may do under one, and the stored,
versioned configs.  Real SQLite stores, no Ray."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from raypipe import identity
from raypipe.config import ConfigSource, parse_yaml
from raypipe.config.platform import PlatformConfig, is_platform_document
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.identity import IdentityError
from raypipe.principal import Principal, acting, acting_as
from raypipe.runner.plan import build_plan
from raypipe.store.metadata import MetadataStore, current_actor
from raypipe.store.platform import PlatformStore, StoredPlatform

ALICE, BOB, CAROL = "alice-token", "bob-token", "carol-token"


def users(**extra: Any) -> dict[str, Any]:
    return {
        "alice": {"token_sha256": identity.token_sha256(ALICE), "teams": ["research"], "admin": True},
        "bob": {"token_sha256": identity.token_sha256(BOB), "teams": ["prod"]},
        **extra,
    }


def config(**kw: Any) -> PlatformConfig:
    doc: dict[str, Any] = {
        "users": users(),
        "teams": {"research": {"gpu": 4, "max_priority": 10}, "prod": {"min_priority": 1, "max_priority": 5}},
        "scheduler": {"policy": "priority", "policy_args": {"preempt": True}, "lease_s": 60},
    }
    doc.update(kw)
    return PlatformConfig.model_validate(doc)


def stored(cfg: PlatformConfig | None = None, version: int = 1) -> StoredPlatform:
    return StoredPlatform(version, 0.0, "root", cfg or config())


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token unless a test gives one; the token file under a home of the test's own."""
    monkeypatch.delenv(identity.TOKEN_ENV, raising=False)
    monkeypatch.delenv(identity.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------------- principals


def test_a_single_user_is_the_os_user_an_admin_in_team_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(identity.TOKEN_ENV, "whatever")  # not read without users
    for platform in (None, stored(PlatformConfig(teams={"research": {"gpu": 1}}))):
        who = identity.resolve(platform)
        assert (who.name, who.teams, who.admin, who.source) == (identity.os_user(), ("default",), True, "single-user")
        assert who.member_of("research")  # an admin runs as any team


def test_with_users_a_token_names_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(identity.TOKEN_ENV, f"  {BOB}\n")
    who = identity.resolve(stored())
    assert (who.name, who.teams, who.admin, who.source) == ("bob", ("prod", "default"), False, "token")
    assert who.member_of("prod") and who.member_of("default") and not who.member_of("research")
    monkeypatch.setenv(identity.TOKEN_ENV, ALICE)
    assert identity.resolve(stored()).admin


def test_with_users_no_token_or_an_unknown_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(IdentityError, match=r"this platform has users \(platform config version 1\): give your token"):
        identity.resolve(stored())
    monkeypatch.setenv(identity.TOKEN_ENV, "guess")
    with pytest.raises(IdentityError, match=r"the token in \$RAYPIPE_TOKEN is no user's in platform config version 1"):
        identity.resolve(stored())


def write(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_the_token_file_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "home" / ".config" / "raypipe" / "token"
    write(default, CAROL + "\n", 0o600)
    with pytest.raises(IdentityError, match="no user's"):  # carol is no user yet
        identity.resolve(stored())
    write(default, BOB + "\n", 0o600)
    assert identity.resolve(stored()).name == "bob"
    for mode in (0o640, 0o604, 0o660, 0o644):
        os.chmod(default, mode)
        with pytest.raises(
            IdentityError, match=rf"has mode {mode:04o}: .*not be readable by group or others; run: chmod 600"
        ):
            identity.resolve(stored())
    os.chmod(default, 0o600)
    monkeypatch.setenv(identity.TOKEN_ENV, ALICE)  # the variable wins over the file
    assert identity.resolve(stored()).name == "alice"
    monkeypatch.delenv(identity.TOKEN_ENV)
    other = write(tmp_path / "elsewhere", "", 0o600)
    monkeypatch.setenv(identity.TOKEN_FILE_ENV, str(other))
    with pytest.raises(IdentityError, match="is empty"):
        identity.resolve(stored())
    monkeypatch.setenv(identity.TOKEN_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(IdentityError, match=r"\$RAYPIPE_TOKEN_FILE names .*missing, which does not exist"):
        identity.resolve(stored())


def test_minted_tokens_are_random_and_saved_private(tmp_path: Path) -> None:
    a, b = identity.mint_token(), identity.mint_token()
    assert a != b and len(a) > 40 and identity.token_sha256(a) != identity.token_sha256(b)
    path = identity.save_token(a, tmp_path / "cfg" / "token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == a
    with pytest.raises(IdentityError, match="exists; give --force"):
        identity.save_token(b, path)
    identity.save_token(b, path, force=True)
    assert path.read_text().strip() == b


def test_a_delegated_principal_is_a_known_user() -> None:
    who = identity.delegated(stored(), "bob")
    assert (who.name, who.teams, who.admin, who.source) == ("bob", ("prod", "default"), False, "delegated")
    with pytest.raises(IdentityError, match="'mallory' is not a user of platform config version 1"):
        identity.delegated(stored(), "mallory")
    assert identity.delegated(None, "ray-user").admin  # a single-user store: as the loop's armer


def test_the_acting_principal_is_what_records_name() -> None:
    os_name = current_actor()
    with acting_as(Principal("alice")):
        assert current_actor() == "alice" and acting() == Principal("alice")
        with acting_as(None):
            assert current_actor() == "alice"
    assert current_actor() == os_name


# --------------------------------------------------------------------------- platform configs


def issues_of(doc: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as err:
        PlatformConfig.model_validate(doc)
    return [(tuple(e["loc"]), e["msg"]) for e in err.value.errors()]


def test_a_platform_config_is_checked_field_by_field() -> None:
    sha = identity.token_sha256
    found = issues_of(
        {
            "users": {
                "a": {"token_sha256": sha("x"), "teams": ["research", "ghost"]},
                "b": {"token_sha256": sha("x")},
            },
            "teams": {"research": {}},
        }
    )
    assert (("users", "a", "teams", 1), "team 'ghost' is not in teams; known teams: default, research") in found
    assert any(loc == ("users", "b", "token_sha256") and "the same token as user 'a'" in m for loc, m in found)
    assert any(loc == ("users",) and "no user is an admin" in m for loc, m in found)
    bad = {"users": {"a": {"token_sha256": "plain-token", "admin": True}}}
    assert [loc for loc, _ in issues_of(bad)] == [("users", "a", "token_sha256")]
    assert [loc for loc, _ in issues_of({"teams": {"t": {"min_priority": 3, "max_priority": 1}}})] == [("teams", "t")]
    assert [loc for loc, _ in issues_of({"scheduler": {"lease_s": 0.001}})] == [("scheduler", "lease_s")]
    assert [loc for loc, _ in issues_of({"scheduler": {"preempt": True}})] == [("scheduler", "preempt")]
    assert [loc for loc, _ in issues_of({"kind": "pipeline"})] == [("kind",)]


def test_a_platform_file_names_the_line_of_each_problem(tmp_path: Path) -> None:
    p = tmp_path / "platform.yaml"
    p.write_text("kind: platform\nteams:\n  research: {gpu: 4}\nscheduler:\n  policy: nope\n")
    with pytest.raises(ConfigError, match=r"platform.yaml:5 scheduler.policy: .*nope"):
        identity.load_platform(p)
    p.write_text("kind: platform\nusers:\n  a: {token_sha256: '" + "0" * 64 + "', teams: [ghost], admin: true}\n")
    with pytest.raises(ConfigError, match=r"platform.yaml:3 users.a.teams\[0\]: team 'ghost' is not in teams"):
        identity.load_platform(p)
    p.write_text("name: x\nstages: []\n")
    with pytest.raises(ConfigError, match="not a platform config"):
        identity.load_platform(p)
    shipped = identity.load_platform(Path(__file__).resolve().parents[2] / "configs" / "platform.yaml")
    assert shipped.admins() == ["alice"] and shipped.team_names() == ["default", "prod", "research"]
    assert is_platform_document({"users": {}}) and not is_platform_document({"name": "p", "stages": []})


def test_the_controllers_settings_come_from_the_config() -> None:
    s = config().settings(7)
    assert (s["version"], s["admins"], s["policy"], s["lease_s"]) == (7, ["alice"], "priority", 60.0)
    assert s["teams"]["research"] == {"gpu": 4.0, "custom": {}, "priority": 0, "weight": 1.0}
    assert PlatformConfig().settings(1)["admins"] is None  # no users: every caller is an admin


def test_apply_needs_an_admin_who_stays_one(monkeypatch: pytest.MonkeyPatch) -> None:
    new = config()
    bob = identity.delegated(stored(), "bob")
    with pytest.raises(IdentityError, match="admin apply: bob is not an admin of platform config version 1"):
        identity.check_apply(new, bob, stored())
    me = identity.single_user()
    with pytest.raises(IdentityError, match="this config has users, and you have no token"):
        identity.check_apply(new, me, None)
    monkeypatch.setenv(identity.TOKEN_ENV, CAROL)
    with pytest.raises(IdentityError, match="no user's in this config: you would lock yourself out"):
        identity.check_apply(new, me, None)
    monkeypatch.setenv(identity.TOKEN_ENV, BOB)
    with pytest.raises(IdentityError, match=r"makes you \(bob, by the token in \$RAYPIPE_TOKEN\) no admin"):
        identity.check_apply(new, me, None)
    monkeypatch.setenv(identity.TOKEN_ENV, ALICE)
    identity.check_apply(new, me, None)
    identity.check_apply(PlatformConfig(), identity.resolve(stored()), stored())  # back to a single user


# --------------------------------------------------------------------------- pipelines under a platform


PIPELINE = """\
name: p
stages:
  - name: a
    kind: python
    params: {function: "tests.unit.funcs:make"}
  - name: b
    kind: python
    team: research
    priority: 9
    params: {function: "tests.unit.funcs:make"}
"""


def plan_of(text: str) -> Any:
    data, source = parse_yaml(text, "p.yaml")
    from raypipe.config import parse_config

    return build_plan(parse_config(data, source), source)


def test_a_pipeline_may_not_set_what_the_platform_owns() -> None:
    alice = identity.delegated(stored(), "alice")
    assert identity.pipeline_issues(plan_of(PIPELINE).config, stored(), alice) == []
    for field, value in (
        ("lease_s", "0.001"),
        ("policy", "las"),
        ("policy_args", "{aging_s: 1}\n  policy: priority"),
        ("teams", "{research: {gpu: 99}}"),
        ("autoscaler", "{node_types: {g: {resources: {CPU: 1}, max_workers: 1}}}"),
    ):
        plan = plan_of(f"scheduler:\n  {field}: {value}\n" + PIPELINE)
        with pytest.raises(ConfigError) as err:
            identity.check_pipeline(plan.config, stored(), alice, plan.source)
        assert f"p.yaml:2 scheduler.{field}: set by this pipeline" in str(err.value)
        assert "raypipe admin apply" in str(err.value)
        assert identity.pipeline_issues(plan.config, None, alice) == []  # no platform: as before
    # what a pipeline chooses: enabled, its default team, written as the defaults are
    plan = plan_of("scheduler: {enabled: true, team: research, lease_s: 30}\n" + PIPELINE)
    assert identity.pipeline_issues(plan.config, stored(), alice) == []
    assert [s.team for s in plan.config.stages] == ["research", "research"]


def test_a_stages_team_must_be_known_and_the_callers_and_its_priority_in_range() -> None:
    bob = identity.delegated(stored(), "bob")
    plan = plan_of(PIPELINE.replace("team: research", "team: ghost"))
    with pytest.raises(
        ConfigError, match=r"p.yaml:8 stages\[1\].team: unknown team 'ghost'; known teams: default, prod, research"
    ):
        identity.check_pipeline(plan.config, stored(), bob, plan.source)
    found = identity.pipeline_issues(plan_of(PIPELINE).config, stored(), bob)
    assert found == [
        (
            ("stages", 1, "team"),
            "bob is not a member of team 'research' (their teams: prod, default); an admin adds members in the "
            "platform config",
        )
    ]
    prod = plan_of(PIPELINE.replace("team: research", "team: prod"))
    assert identity.pipeline_issues(prod.config, stored(), bob) == [
        (("stages", 1, "priority"), "got 9; team 'prod' allows priorities 1..5")
    ]
    # an admin runs as any team, within its range; team default: 0..0 unless configured
    alice = identity.delegated(stored(), "alice")
    assert identity.pipeline_issues(prod.config, stored(), alice)[0][1] == "got 9; team 'prod' allows priorities 1..5"
    assert identity.pipeline_issues(plan_of(PIPELINE).config, stored(), alice) == []
    high = plan_of(PIPELINE.replace("    team: research\n", ""))
    assert identity.pipeline_issues(high.config, stored(), alice) == [
        (("stages", 1, "priority"), "got 9; team 'default' allows priorities 0..0")
    ]


# --------------------------------------------------------------------------- the stored versions


def test_platform_configs_are_stored_versioned_with_who_applied_them(metadata_db: str) -> None:
    meta = MetadataStore(metadata_db)
    store = PlatformStore(meta)
    assert store.latest() is None and store.history() == []
    with pytest.raises(RaypipeError, match="no platform config .* single-user store"):
        store.get()
    with acting_as(Principal("root")):
        first = store.apply(config(), expected=None)
    second = store.apply(config(description="v2"), expected=1, detail={"file": "p.yaml"})
    assert (first.version, second.version, first.actor, second.actor) == (1, 2, "root", current_actor())
    with pytest.raises(RaypipeError, match=r"changed while this one was checked \(now version 2, checked against 1\)"):
        store.apply(config(), expected=1)
    assert store.latest() == store.get(2) and store.get(1).config == config()
    with pytest.raises(RaypipeError, match=r"no platform config version 9 .* \(versions 1..2\)"):
        store.get(9)
    assert [(h["version"], h["actor"], h["admins"], h["teams"]) for h in store.history()] == [
        (1, "root", ["alice"], ["prod", "research"]),
        (2, current_actor(), ["alice"], ["prod", "research"]),
    ]
    applied = meta.audit_log(action="admin")
    assert [(a["actor"], a["detail"]["version"]) for a in applied] == [("root", 1), (current_actor(), 2)]
    assert "token" not in str(store.get(1).to_dict()).replace("token_sha256", "")  # hashes, never tokens
    meta.close()


def test_users_without_an_admin_are_refused_naming_the_file() -> None:
    with pytest.raises(ConfigError, match="x users: no user is an admin"):
        identity.parse_platform({"users": {"a": {"token_sha256": "0" * 64}}}, ConfigSource(path="x"))
