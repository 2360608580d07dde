"""The platform on the command line, without Ray: ``admin token|apply|show|history``, ``whoami``,
``audit`` (who did what, filtered), ``validate`` of platform configs and against one, and a run
refused before anything is recorded.  Real SQLite stores; ``ray.init`` is forbidden here."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from raypipe.api.admin import parse_since
from raypipe.cli import app
from raypipe.exceptions import RaypipeError
from raypipe.identity import TOKEN_ENV, TOKEN_FILE_ENV, token_sha256
from raypipe.principal import Principal, acting_as
from raypipe.store.metadata import MetadataStore
from raypipe.store.objects import ArtifactRef
from raypipe.store.registry import ModelRegistry

runner = CliRunner()
ALICE, BOB = "alice-secret-token", "bob-secret-token"


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    monkeypatch.delenv("RAYPIPE_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def platform_yaml(path: Path, **teams: Any) -> Path:
    path.write_text(
        "kind: platform\n"
        "users:\n"
        f"  alice: {{token_sha256: '{token_sha256(ALICE)}', teams: [research], admin: true}}\n"
        f"  bob: {{token_sha256: '{token_sha256(BOB)}', teams: [prod]}}\n"
        "teams:\n"
        "  research: {gpu: 4, max_priority: 10}\n"
        "  prod: {max_priority: 5}\n"
        "scheduler: {policy: priority, policy_args: {preempt: true}, lease_s: 60}\n"
    )
    return path


def cli(*args: str, token: str | None = None) -> Any:
    env = {TOKEN_ENV: token} if token else None
    return runner.invoke(app, list(args), env=env, terminal_width=200)


def applied(tmp_path: Path) -> str:
    db = str(tmp_path / "m.db")
    r = cli(
        "admin", "apply", str(platform_yaml(tmp_path / "platform.yaml")), "--db", db, "--no-push", "--json", token=ALICE
    )
    assert r.exit_code == 0, r.output
    return db


def test_admin_token_prints_the_line_for_platform_yaml_and_saves_it_private(tmp_path: Path) -> None:
    r = cli("admin", "token", "--user", "dana", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["token_sha256"] == token_sha256(doc["token"]) and doc["saved_to"] is None
    assert doc["platform_yaml"] == f"dana: {{token_sha256: {doc['token_sha256']}, teams: [], admin: false}}"
    r = cli("admin", "token", "--save")
    assert r.exit_code == 0, (r.output, r.stderr)
    saved = tmp_path / "home" / ".config" / "raypipe" / "token"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and saved.read_text().strip() in r.stdout
    r = cli("admin", "token", "--save")
    assert r.exit_code == 2 and "exists; give --force" in r.stderr and "Traceback" not in r.output
    assert cli("admin", "token", "--user", "bad name").exit_code == 2


def test_admin_apply_show_history_and_whoami(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "m.db")
    file = str(platform_yaml(tmp_path / "platform.yaml"))
    monkeypatch.chdir(tmp_path)
    r = cli("whoami", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["admin"] is True  # no store: a single user
    r = cli("whoami", "--db", db)
    assert r.exit_code == 2 and "no metadata store" in r.stderr
    r = cli("admin", "apply", file, "--db", db, "--no-push")
    assert r.exit_code == 2 and "this config has users, and you have no token" in r.stderr
    assert "Traceback" not in r.output
    r = cli("admin", "apply", file, "--db", db, "--no-push", "--json", token=ALICE)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["version"], doc["pushed"]) == (1, False)
    # now a token is needed, and only an admin applies
    r = cli("whoami", "--db", db)
    assert r.exit_code == 2 and "give your token in $RAYPIPE_TOKEN" in r.stderr
    r = cli("whoami", "--db", db, "--json", token=BOB)
    assert json.loads(r.stdout) == {
        "name": "bob",
        "teams": ["prod", "default"],
        "admin": False,
        "source": "token",
        "platform_version": 1,
    }
    r = cli("admin", "apply", file, "--db", db, "--no-push", token=BOB)
    assert r.exit_code == 2 and "admin apply: bob is not an admin of platform config version 1" in r.stderr
    r = cli("admin", "apply", file, "--db", db, "--no-push", token=ALICE)
    assert r.exit_code == 0 and "platform config version 2 applied" in r.stdout
    r = cli("admin", "show", "--db", db, "--version", "1", "--json")
    doc = json.loads(r.stdout)
    assert doc["version"] == 1 and doc["actor"] != "alice" and doc["config"]["users"]["bob"]["teams"] == ["prod"]
    assert ALICE not in r.stdout and token_sha256(ALICE) in r.stdout  # hashes only
    r = cli("admin", "show", "--db", db)
    assert r.exit_code == 0 and "platform config version 2" in r.stdout and "by alice" in r.stdout
    assert "research" in r.stdout and "0..10" in r.stdout and "policy priority" in r.stdout
    r = cli("admin", "show", "--db", db, "--version", "7")
    assert r.exit_code == 2 and "no platform config version 7" in r.stderr
    r = cli("admin", "history", "--db", db, "--json")
    assert [(h["version"], h["admins"]) for h in json.loads(r.stdout)] == [(1, ["alice"]), (2, ["alice"])]
    assert json.loads(r.stdout)[1]["actor"] == "alice"


def fill_audit(db: str) -> None:
    meta = MetadataStore(db)
    reg = ModelRegistry(meta)
    ref = ArtifactRef("/s/objects/m1", "a" * 64, 10, "model", {"metrics": {}})
    with acting_as(Principal("alice")):
        meta.create_run("r1", "p", "{}", None, "/s")
        reg.register("digits", ref, "r1", "train", None, aliases=["candidate"])
    with acting_as(Principal("bob")):
        meta.finish_run("r1", "stopped", "stopped: SIGTERM")
        reg.set_alias("digits", 1, "production", reason="ship it")
    meta.close()


def test_audit_lists_who_did_what_with_filters(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    fill_audit(db)
    r = cli("audit", "--db", db, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(x["actor"], x["action"], x["target"]) for x in rows] == [
        ("alice", "run.start", "r1"),
        ("alice", "alias.set", "digits@candidate"),
        ("bob", "run.stop", "r1"),
        ("bob", "alias.set", "digits@production"),
    ]
    assert rows[3]["detail"] == {"old_version": None, "new_version": 1, "reason": "ship it"}
    assert rows[0]["at"] <= rows[3]["at"] <= time.time()

    def actions(*args: str) -> list[str]:
        r = cli("audit", "--db", db, "--json", *args)
        assert r.exit_code == 0, r.output
        return [f"{x['actor']} {x['action']}" for x in json.loads(r.stdout)]

    assert actions("--actor", "bob") == ["bob run.stop", "bob alias.set"]
    assert actions("--action", "run") == ["alice run.start", "bob run.stop"]
    assert actions("--action", "ru") == []  # a whole prefix, not any text
    assert actions("--action", "alias.set", "--actor", "alice") == ["alice alias.set"]
    assert actions("--target", "digits@production") == ["bob alias.set"]
    assert actions("--since", "1h") == actions()
    assert actions("--since", "2999-01-01") == []
    assert actions("--since", "2000-01-01T00:00:00+00:00", "--limit", "1") == ["bob alias.set"]
    r = cli("audit", "--db", db)
    assert r.exit_code == 0 and "alias.set" in r.stdout and "digits@production" in r.stdout and "bob" in r.stdout
    r = cli("audit", "--db", db, "--actor", "nobody")
    assert r.exit_code == 0 and "nothing recorded matching" in r.stdout
    for bad in (["--since", "yesterday"], ["--limit", "0"]):
        r = cli("audit", "--db", db, *bad)
        assert r.exit_code == 2 and "Traceback" not in r.output and r.stderr.startswith("error:")


def test_since_reads_durations_and_iso_times() -> None:
    now = 1_000_000.0
    assert [parse_since(t, now) for t in ("90s", "30m", "2h", "1d", "1w", "1.5h")] == [
        now - 90,
        now - 1800,
        now - 7200,
        now - 86400,
        now - 604800,
        now - 5400,
    ]
    assert parse_since("1970-01-02T00:00:00+00:00") == 86400.0
    with pytest.raises(RaypipeError, match="expected a duration"):
        parse_since("2 hours")


def test_the_model_alias_command_records_the_callers_name(tmp_path: Path) -> None:
    db = applied(tmp_path)
    fill_audit(db)
    r = cli("model", "alias", "digits", "1", "staging", "--db", db)
    assert r.exit_code == 2 and "give your token" in r.stderr  # users configured: who is it?
    r = cli("model", "alias", "digits", "1", "staging", "--db", db, token=BOB)
    assert r.exit_code == 0, r.output
    r = cli("audit", "--db", db, "--json", "--target", "digits@staging")
    assert [(x["actor"], x["action"]) for x in json.loads(r.stdout)] == [("bob", "alias.set")]


PIPELINE = """\
name: p
scheduler:
  lease_s: 0.001
stages:
  - name: a
    kind: python
    team: research
    params: {function: "tests.unit.funcs:make"}
"""


def test_a_run_is_refused_before_anything_is_recorded_or_ray_is_touched(tmp_path: Path) -> None:
    db = applied(tmp_path)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE)
    r = cli("run", str(pipe), "--db", db, token=BOB)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "p.yaml:3 scheduler.lease_s: set by this pipeline" in r.stderr
    assert "p.yaml:7 stages[0].team: bob is not a member of team 'research'" in r.stderr
    r = cli("validate", str(pipe), "--platform", "--db", db, token=BOB)
    assert r.exit_code == 2 and "scheduler.lease_s" in r.stderr
    r = cli("validate", str(pipe))  # without --platform: the file alone
    assert r.exit_code == 0, r.output
    r = cli("runs", "--db", db, "--json")
    assert json.loads(r.stdout) == []
    meta = MetadataStore(db)
    assert [a["action"] for a in meta.audit_log()] == ["admin.apply"]
    meta.close()


def test_validate_takes_a_platform_config(tmp_path: Path) -> None:
    ok = platform_yaml(tmp_path / "platform.yaml")
    r = cli("validate", str(ok), "--json")
    assert r.exit_code == 0, r.output
    (doc,) = json.loads(r.stdout)["files"]
    assert (doc["kind"], doc["users"], doc["teams"]) == ("platform", ["alice", "bob"], ["default", "prod", "research"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(ok.read_text().replace("[prod]", "[ghost]"))
    r = cli("validate", str(bad))
    assert r.exit_code == 2 and "bad.yaml:4 users.bob.teams[0]: team 'ghost' is not in teams" in r.stderr
    r = cli("run", str(ok))
    assert r.exit_code == 2 and "a platform config, not a pipeline; an admin applies it" in r.stderr


def test_a_loops_retraining_runs_act_for_whoever_armed_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from raypipe.loop.launch import resume_args, run_args
    from raypipe.runner.__main__ import main

    assert run_args("c1.yaml", "r1", "bob") == ["run", "c1.yaml", "--run-id", "r1", "--on-behalf-of", "bob"]
    assert resume_args("r1", "bob") == ["resume", "r1", "--on-behalf-of", "bob"]
    assert run_args("c1.yaml", "r1") == ["run", "c1.yaml", "--run-id", "r1"]  # a loop armed before identities
    db = applied(tmp_path)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.replace("scheduler:\n  lease_s: 0.001\n", ""))
    # as bob: not in team research, refused before the run exists (no Ray)
    assert main(["run", str(pipe), "--db", db, "--on-behalf-of", "bob"]) == 2
    assert "bob is not a member of team 'research'" in caplog.text
    assert main(["run", str(pipe), "--db", db, "--on-behalf-of", "mallory"]) == 2
    assert "'mallory' is not a user of platform config version 1" in caplog.text
    meta = MetadataStore(db)
    assert meta.list_runs() == []
    meta.close()
