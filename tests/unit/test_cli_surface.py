"""The CLI's surface without a cluster: every command's help, --version, the serve aliases,
--json on every command that reports something (one JSON document on stdout, nothing else),
and the runs filters on a SQLite store."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from raypipe import api
from raypipe.cli import app
from raypipe.exceptions import RaypipeError
from raypipe.failures import Failure
from raypipe.runner.events import RunResult, StageEvent
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import AliasEvent
from tests.conftest import REPO

runner = CliRunner()

#: What typer shows for a parameter without a metavar (its Python type).
TYPE_LABEL = re.compile(r"<(str|int|float|bool|list\[[a-z]+\])>")
#: Typer's own options keep their labels.
TYPER_OWN = ("--help", "--install-completion", "--show-completion")


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under ``group`` (its path and itself), groups first."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for name, cmd in group.commands.items():
        found.append(((*path, name), cmd))
        if hasattr(cmd, "commands"):
            found += commands(cmd, (*path, name))
    return found


ALL = commands(typer.main.get_group(app))
LEAVES = [(path, cmd) for path, cmd in ALL if not hasattr(cmd, "commands")]


def test_version_prints_raypipe_and_ray() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert re.fullmatch(r"raypipe \S+ \(Ray \S+\)\n", r.stdout), r.stdout


def test_completion_is_on() -> None:
    r = runner.invoke(app, ["--help"], terminal_width=200)
    assert r.exit_code == 0 and "--install-completion" in r.output and "--show-completion" in r.output


@pytest.mark.parametrize("path", [(), *(p for p, _ in ALL)], ids=lambda p: " ".join(p) or "raypipe")
def test_help_exits_0_with_readable_metavars(path: tuple[str, ...]) -> None:
    r = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    usage = next(line for line in r.stdout.splitlines() if "Usage:" in line)
    assert not re.search(r"\{[a-z_]+\}|\[[a-z_]+\]", usage), usage  # arguments are named like FILE, APP
    for line in r.stdout.splitlines():
        if "--" in line and not any(own in line for own in TYPER_OWN):
            assert not TYPE_LABEL.search(line), f"raypipe {' '.join(path)} --help: {line.strip()}"


@pytest.mark.parametrize(("path", "cmd"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_parameter_has_a_metavar_or_choices(path: tuple[str, ...], cmd: Any) -> None:
    for param in cmd.params:
        if param.name == "help":
            continue
        where = f"raypipe {' '.join(path)}: {param.name}"
        assert param.metavar is not None or param.type_descriptor.is_choice, f"{where} has no metavar"
        if param.param_type_name == "argument":
            assert param.metavar.isupper(), f"{where}: {param.metavar}"


def test_serve_deploy_and_its_alias() -> None:
    for args in (["serve", "deploy", "--help"], ["deploy", "--help"]):
        r = runner.invoke(app, args, terminal_width=200)
        assert r.exit_code == 0, r.output
        assert "Serve registered model versions" in r.stdout and "FILE" in r.stdout
    for args in (["serve", "split", "--help"], ["split", "--help"]):
        r = runner.invoke(app, args, terminal_width=200)
        assert r.exit_code == 0 and "VARIANT=WEIGHT" in r.stdout
    top = runner.invoke(app, ["--help"], terminal_width=200).stdout
    aliases = top[top.index("Aliases") :]
    assert "Alias of `raypipe serve deploy`" in aliases and "Alias of `raypipe serve split`" in aliases
    serve = runner.invoke(app, ["serve", "--help"], terminal_width=200).stdout
    assert all(c in serve for c in ("deploy", "split", "status", "shutdown"))


def test_every_command_is_there() -> None:
    assert {" ".join(p) for p, _ in LEAVES} == {
        *("run", "resume", "validate", "runs", "show", "logs", "models", "model show", "model alias"),
        *("plan", "diff", "rerun", "model diff"),
        *("queue release", "queue requeue", "queue cancel"),
        *("bench scheduling", "ab report", "rollout start", "rollout status", "rollout abort"),
        *("loop status", "loop stop", "loop demo", "monitor status"),
        *("schedule apply", "schedule list", "schedule pause", "schedule resume", "schedule delete"),
        *("schedule history", "schedule status"),
        *("serve deploy", "serve split", "serve status", "serve shutdown", "deploy", "split"),
        *("db status", "db upgrade", "ui"),
        *("admin token", "admin apply", "admin show", "admin history", "whoami", "audit"),
    }
    # `raypipe queue` lists the jobs itself (the group's own command)
    queue = runner.invoke(app, ["queue", "--help"], terminal_width=200).stdout
    assert "--json" in queue and "--address" in queue and all(c in queue for c in ("release", "requeue", "cancel"))


def test_json_on_every_command_that_reports() -> None:
    without = {" ".join(path) for path, cmd in LEAVES if not any("--json" in p.opts for p in cmd.params)}
    assert without == {"loop demo", "ui"}  # the demo prints its summary and writes timeline.json; ui serves pages
    for path in ("run", "resume", "validate", "model alias", "serve shutdown", "rollout abort", "loop stop"):
        assert path not in without


def fill_runs(db: Path) -> None:
    """25 runs of pipeline a (the newest) after 3 of pipeline b: b1 succeeded, b2 and b3 failed."""
    meta = MetadataStore(str(db))
    for i in (1, 2, 3):
        meta.create_run(f"b{i}", "b", "{}", None, str(db.parent))
        meta.finish_run(f"b{i}", "succeeded" if i == 1 else "failed", None if i == 1 else "boom")
    for i in range(25):
        meta.create_run(f"a{i}", "a", "{}", None, str(db.parent))
        if i % 2:
            meta.finish_run(f"a{i}", "failed", "boom")
    meta.close()


def run_ids(args: list[str]) -> set[str]:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return {d["run_id"] for d in json.loads(r.stdout)}


def test_runs_filters_by_pipeline_and_status(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    fill_runs(db)
    base = ["runs", "--db", str(db)]
    assert run_ids([*base, "--pipeline", "b", "--limit", "3"]) == {"b1", "b2", "b3"}  # older than 25 runs of a
    assert run_ids([*base, "--pipeline", "b", "--status", "failed"]) == {"b2", "b3"}
    assert run_ids([*base, "--pipeline", "b", "--limit", "1"]) <= {"b1", "b2", "b3"}
    assert len(run_ids([*base, "--pipeline", "b", "--limit", "1"])) == 1
    assert run_ids([*base, "--status", "succeeded"]) == {"b1"}
    assert run_ids([*base, "--status", "running", "--limit", "100"]) == {f"a{i}" for i in range(0, 25, 2)}
    assert run_ids([*base, "--pipeline", "nope"]) == set()
    assert len(run_ids([*base, "--limit", "5"])) == 5
    r = runner.invoke(app, [*base, "--pipeline", "b", "--status", "failed"], terminal_width=200)
    assert r.exit_code == 0 and "b2" in r.stdout and "b3" in r.stdout and "b1" not in r.stdout
    r = runner.invoke(app, [*base, "--status", "done"])
    assert r.exit_code == 2 and "done" in r.output  # a usage error names the valid states


def test_validate_json(tmp_path: Path) -> None:
    config = str(Path(REPO) / "configs" / "quickstart.yaml")
    r = runner.invoke(app, ["validate", config, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    (entry,) = doc["files"]
    assert entry["file"] == config and entry["kind"] == "pipeline" and entry["pipeline"] == "quickstart"
    assert "train" in entry["stages"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - {name: a, kind: nope}\n")
    r = runner.invoke(app, ["validate", config, str(bad), "--json"])
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and [f["ok"] for f in doc["files"]] == [True, False]
    assert "stages[0].kind: got 'nope'" in doc["files"][1]["error"]


def fake_run(status: str, failures: dict[str, Failure]) -> Any:
    def run(*a: Any, on_event: Any = None, **k: Any) -> RunResult:
        on_event(StageEvent("read", "succeeded", 1, 0.5))  # type: ignore[arg-type]
        errors = {s: f.summary for s, f in failures.items()}
        return RunResult("r-1", status, {"read": "succeeded"}, errors, 1.5, failures=failures)  # type: ignore[arg-type]

    return run


def test_run_json_is_the_only_thing_on_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "run", fake_run("succeeded", {}))
    r = runner.invoke(app, ["run", "p.yaml", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["run_id"] == "r-1" and doc["ok"] is True and doc["stages"] == {"read": "succeeded"}
    assert "read succeeded" in r.stderr  # the progress went to stderr
    failure = Failure("gate failed: accuracy 0.81 < 0.9", "gate")
    monkeypatch.setattr(api, "run", fake_run("failed", {"evaluate": failure}))
    r = runner.invoke(app, ["run", "p.yaml", "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "failed" and doc["failures"]["evaluate"]["error_category"] == "gate"
    assert doc["next_step"].startswith("resuming would fail the same way")


def test_resume_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    MetadataStore(str(db)).create_run("r-1", "p", "{}", None, str(tmp_path))
    monkeypatch.setattr(api, "resume", fake_run("succeeded", {}))
    r = runner.invoke(app, ["resume", "r-1", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "succeeded"


def test_json_of_the_commands_that_act(monkeypatch: pytest.MonkeyPatch) -> None:
    event = AliasEvent("digits", "production", 1, 2, 1.7e9, "ok")
    monkeypatch.setattr(api, "set_model_alias", lambda *a, **k: event)
    monkeypatch.setattr(api, "serve_shutdown", lambda *a, **k: None)
    monkeypatch.setattr(api, "rollout_abort", lambda *a, **k: {"rollout_id": "digits-1", "weights": {"v3": 100}})
    monkeypatch.setattr(api, "loop_stop", lambda *a, **k: True)
    cases: list[tuple[list[str], dict[str, Any]]] = [
        (["model", "alias", "digits", "2", "production"], {"new_version": 2, "old_version": 1, "changed": True}),
        (["serve", "shutdown", "digits"], {"app": "digits", "stopped": True}),
        (["rollout", "abort", "digits"], {"rollout_id": "digits-1", "weights": {"v3": 100}}),
        (["loop", "stop", "sensors"], {"app": "sensors", "stopped": True}),
    ]
    for args, expected in cases:
        r = runner.invoke(app, [*args, "--json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        assert expected.items() <= doc.items(), (args, doc)
    monkeypatch.setattr(api, "set_model_alias", lambda *a, **k: None)  # already there: nothing recorded
    doc = json.loads(runner.invoke(app, ["model", "alias", "digits", "2", "production", "--json"]).stdout)
    assert doc["changed"] is False and doc["new_version"] == 2


def test_errors_stay_off_stdout_in_json_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(*a: Any, **k: Any) -> None:
        raise RaypipeError("no app 'nope' is deployed")

    monkeypatch.setattr(api, "serve_shutdown", unknown)
    r = runner.invoke(app, ["serve", "shutdown", "nope", "--json"])
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.strip() == "error: no app 'nope' is deployed"


def documented_command_lines() -> list[str]:
    """The ``raypipe ...`` lines of the code blocks in README.md and docs/ (placeholders such
    as ``[--json]`` or ``a|b`` left out)."""
    found = []
    for doc in [Path(REPO) / "README.md", *sorted((Path(REPO) / "docs").glob("*.md"))]:
        in_code, pending = False, ""
        for raw in doc.read_text(encoding="utf-8").splitlines():
            if raw.lstrip().startswith("```"):
                in_code, pending = not in_code, ""
                continue
            line = pending + raw.strip().removeprefix("$ ")
            pending = line[:-1] + " " if in_code and line.endswith("\\") else ""
            if in_code and not pending and line.startswith("raypipe "):
                line = line.split(" #")[0].strip()
                if not any(mark in line for mark in ("[", "|", "..", "<")):
                    found.append(line)
    return found


def parse(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The command ``args`` name and its parameters, parsed as ``raypipe`` would (not run)."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("raypipe", list(args))
    path = []
    while hasattr(cmd, "commands"):
        name, cmd, rest = cmd.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
        path.append(name)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return path, ctx.params


def test_every_documented_command_line_parses() -> None:
    lines = documented_command_lines()
    assert len(lines) > 20 and "raypipe serve shutdown digits" in lines
    for line in lines:
        path, _ = parse(shlex.split(line)[1:])
        assert path, line
    assert parse(["runs", "--pipeline", "quickstart", "--status", "failed"])[1]["state"] == "failed"
