"""Failures that help (no Ray started): the clean message of a stage's error, its category,
what the console says after a failed run, `raypipe show` and `raypipe resume`."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import pytest
from ray.data.exceptions import ExecutionTimeoutError, RayDataUserCodeException
from ray.exceptions import RayTaskError, WorkerCrashedError
from typer.testing import CliRunner

from raypipe import api, failures
from raypipe.cli import app
from raypipe.exceptions import (
    ConfigError,
    DataError,
    GateFailed,
    InputNotFound,
    ModelNotFoundError,
    StageError,
    StagePreempted,
    StorageError,
    ValidationFailed,
)
from raypipe.runner.executor import RunResult, short_error
from raypipe.stages.data.validate import failure
from raypipe.stages.data.violations import ValidationReport, Violation
from raypipe.store.metadata import MetadataStore

runner = CliRunner()

REPORT = ValidationReport(
    rows_checked=1000,
    rows_bad=12,
    violations=[
        Violation(column="age", rule="min", expected=">= 0", count=7, examples=[{"age": -3, "user_id": 17}]),
        Violation(column="country", rule="allowed", expected="in ['DE', 'FR', 'US']", count=5, examples=[]),
    ],
)


def ray_error(exc: BaseException) -> BaseException:
    """What ``ray.get`` raises on the driver for a stage task that raised ``exc``: Ray's
    ``RayTaskError`` as an instance of the cause, whose text is a traceback in colour."""
    try:
        raise exc
    except BaseException as e:  # noqa: BLE001 - re-raised as Ray does
        tb = "".join(traceback.format_exception(e))
    return RayTaskError(
        "execute_stage", tb, exc, proctitle="ray::raypipe:p:check", pid=7, ip="10.0.0.1"
    ).as_instanceof_cause()


def validation_error() -> BaseException:
    return ray_error(failure(REPORT, "input 'data'"))


def test_rays_text_has_a_traceback_and_colour_codes_the_message_has_neither() -> None:
    e = validation_error()
    assert "\x1b[" in str(e) and 'File "' in str(e)  # what used to be stored and shown
    msg = failures.message(e)
    assert msg.splitlines() == [
        "DataError: input 'data' failed validation: age: min (7 rows); country: allowed (5 rows)",
        "validation failed: 2 rules broken in 1,000 rows (12 rows bad)",
        "  column 'age': rule min >= 0: 7 rows, e.g. {'age': -3, 'user_id': 17}",
        "  column 'country': rule allowed in ['DE', 'FR', 'US']: 5 rows",
    ]
    assert short_error(e) == msg.splitlines()[0]


@pytest.mark.parametrize(
    ("exc", "category", "deterministic"),
    [
        (GateFailed("gate failed: accuracy 0.81 < 0.9 (missed by 0.09)"), "gate", True),
        (ValidationFailed("input 'data' failed validation: age: min (7 rows)"), "validation", True),
        (InputNotFound("path not found: /data/x.csv"), "missing_input", True),
        (FileNotFoundError(2, "No such file or directory"), "missing_input", True),
        (ConfigError("bad.yaml:3 stages[0].kind: got 'nope'"), "config", True),
        (ModelNotFoundError("no model 'digits'"), "config", True),
        (DataError("empty dataset: no rows in x.csv"), "data", True),
        (StageError("stage 'a' declares outputs ['x'] but returned []"), "stage", True),
        (StorageError("cannot write artifact"), "io", False),
        (OSError(28, "No space left on device"), "io", False),
        (TimeoutError("timed out"), "timeout", False),
        (StagePreempted("checkpointed at step 3"), "preempted", False),
        (ValueError("cannot divide the amounts"), "error", False),
    ],
)
def test_every_failure_is_classified_in_one_place(exc: BaseException, category: str, deterministic: bool) -> None:
    for e in (exc, ray_error(exc)):  # raised on the driver, or inside a stage's Ray task
        assert failures.classify(e) == category
        assert failures.retryable(e) is not deterministic
        f = failures.parse("failed", failures.record(e))
        assert f is not None and f.category == category and f.deterministic is deterministic
        assert (f.advice("s") is not None) is deterministic


def test_rays_own_errors() -> None:
    """A lost worker or a stalled Ray Data execution may pass on another attempt (data stages
    pass them on instead of calling them a DataError); an error of the user's function that
    Ray Data wraps is the user code's."""
    for e in (WorkerCrashedError(), ExecutionTimeoutError("no progress for 600 s")):
        assert failures.is_system_failure(e) and failures.retryable(e)
    assert failures.classify(WorkerCrashedError()) == "crash"
    user = RayDataUserCodeException("ValueError: bad batch")
    assert failures.classify(user) == "error" and not failures.is_system_failure(user)
    assert not failures.is_system_failure(DataError("malformed CSV line"))


def test_the_record_keeps_the_message_apart_from_the_traceback() -> None:
    stored = failures.record(validation_error())
    assert stored.startswith("DataError: input 'data' failed validation")  # readable in the database too
    f = failures.parse("failed", stored)
    assert f is not None and f.category == "validation"
    assert f.message == failures.message(validation_error())
    assert f.traceback is not None and 'File "' in f.traceback and "\x1b" not in f.traceback
    assert f.summary.startswith("DataError: input 'data' failed validation: age: min (7 rows)")
    assert f.advice("check") == (
        "fix the data, or set `on_error: quarantine` on stage check to set bad rows aside, then run again"
    )


def test_records_from_before_categories_read_the_same() -> None:
    """A record of an older raypipe holds Ray's text (a traceback in colour): the message is
    the exception's own, the category comes from its name."""
    f = failures.parse("failed", str(validation_error()).replace("ValidationFailed", "DataError"))
    assert f is not None and f.category == "validation" and "\x1b" not in f.message
    assert f.message.startswith("DataError: input 'data' failed validation") and 'File "' not in f.message
    assert "column 'age': rule min >= 0" in f.message
    gate = failures.parse("failed", str(ray_error(GateFailed("gate failed: accuracy 0.5 < 0.9"))))
    assert (
        gate is not None and gate.category == "gate" and gate.message == "GateFailed: gate failed: accuracy 0.5 < 0.9"
    )
    plain = failures.parse("failed", "the scheduler ended the job: lease expired")
    assert (
        plain is not None
        and plain.category == "error"
        and plain.message == "the scheduler ended the job: lease expired"
    )


def test_categories_from_the_status() -> None:
    assert failures.parse("timeout", "timed out after 5s") == failures.Failure("timed out after 5s", "timeout")
    rejected = failures.parse("rejected", "cannot be scheduled: 64 GPUs; the cluster has 8")
    assert rejected is not None and rejected.category == "unschedulable" and rejected.deterministic
    assert failures.parse("interrupted", "driver interrupted").category == "interrupted"  # type: ignore[union-attr]
    # a stage skipped because its upstream failed did not fail itself; one that could not start did
    assert failures.parse("skipped", "upstream stage 'a' failed") is None
    unstarted = failures.encode("input 'x': stage 'a' produced no output 'y'", failures.CONFIG)
    assert failures.parse("skipped", unstarted) == failures.Failure(
        "input 'x': stage 'a' produced no output 'y'", "config"
    )
    assert failures.parse("succeeded", None) is None


def test_next_step_resumes_only_where_it_can_help() -> None:
    transient = {"train": failures.Failure("WorkerCrashedError: the worker died", "crash")}
    assert failures.next_step(transient, "r-1", "raypipe run p.yaml") == "continue it with: raypipe resume r-1"
    both = {**transient, "check": failures.Failure("DataError: ...", "validation")}
    assert failures.next_step(both, "r-1", "raypipe run p.yaml") == (
        "resuming would fail the same way; after the change, run it again: raypipe run p.yaml"
    )


# --------------------------------------------------------------------------- the CLI


def fill(
    db: Path, errors: dict[str, tuple[str, str]], done: tuple[str, ...] = ("read",), status: str = "failed"
) -> str:
    """A run in a SQLite store that ended ``status``: ``done`` stages succeeded, ``errors`` stage ->
    (status, stored error)."""
    meta = MetadataStore(str(db))
    meta.create_run("r-1", "p", "{}", str(db.parent / "p.yaml"), str(db.parent))
    for stage in done:
        meta.succeed_stage(meta.start_stage("r-1", stage, 1, "k-" + stage), {}, {})
    for stage, (stage_status, text) in errors.items():
        meta.fail_stage(meta.start_stage("r-1", stage, 1, "k-" + stage), stage_status, text)
    meta.skip_stage("r-1", "train", f"upstream stage {next(iter(errors))!r} failed")
    meta.finish_run("r-1", status, "; ".join(f"{s}: {t.splitlines()[0]}" for s, (_, t) in errors.items()))
    meta.close()
    return str(db)


def test_show_prints_the_report_and_what_to_change(tmp_path: Path) -> None:
    db = fill(tmp_path / "m.db", {"check": ("failed", failures.record(validation_error()))})
    r = runner.invoke(app, ["show", "r-1", "--db", db], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and 'File "' not in r.output and "ray::" not in r.output
    assert "check: DataError: input 'data' failed validation: age: min (7 rows); country: allowed (5 rows)" in r.output
    assert "    validation failed: 2 rules broken in 1,000 rows (12 rows bad)" in r.output
    assert "column 'age': rule min >= 0: 7 rows, e.g. {'age': -3, 'user_id': 17}" in r.output
    assert "column 'country': rule allowed in ['DE', 'FR', 'US']: 5 rows" in r.output  # not eaten as markup
    assert "→ fix the data, or set `on_error: quarantine` on stage check" in r.output
    assert "resuming would fail the same way; after the change, run it again: raypipe run" in r.output
    assert "raypipe resume" not in r.output
    doc = json.loads(runner.invoke(app, ["show", "r-1", "--db", db, "--json"]).output)
    check = next(s for s in doc["stages"] if s["stage"] == "check")
    assert check["error"] == failures.message(validation_error())
    assert check["error_category"] == "validation" and 'File "' in check["traceback"]
    read = next(s for s in doc["stages"] if s["stage"] == "read")
    assert read["error"] is None and read["error_category"] is None and read["traceback"] is None


def test_show_of_an_old_record_is_clean_too(tmp_path: Path) -> None:
    db = fill(
        tmp_path / "m.db", {"check": ("failed", str(validation_error()).replace("ValidationFailed", "DataError"))}
    )
    r = runner.invoke(app, ["show", "r-1", "--db", db], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and 'File "' not in r.output
    assert "column 'age': rule min >= 0" in r.output and "set `on_error: quarantine`" in r.output


def test_show_of_a_transient_failure_suggests_resume(tmp_path: Path) -> None:
    db = fill(tmp_path / "m.db", {"fit": ("timeout", "timed out after 600s")})
    r = runner.invoke(app, ["show", "r-1", "--db", db], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "fit: timed out after 600s" in r.output and "continue it with: raypipe resume r-1" in r.output
    assert "→" not in r.output


def failed_result(errors: dict[str, failures.Failure]) -> RunResult:
    return RunResult(
        "r-1",
        "failed",
        {"read": "succeeded", **dict.fromkeys(errors, "failed")},
        {s: f.summary for s, f in errors.items()},
        1.5,
        failures=errors,
    )


def test_a_failed_validation_prints_its_report_after_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = failures.parse("failed", failures.record(validation_error()))
    assert f is not None
    monkeypatch.setattr(api, "run", lambda *a, **k: failed_result({"check": f}))
    r = runner.invoke(app, ["run", "p.yaml", "--set", "stages.check.params.rows.min=10"], terminal_width=200)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    start = lines.index("run r-1 failed in 1.5s")
    assert lines[start + 1 : start + 6] == [
        "  check: DataError: input 'data' failed validation: age: min (7 rows); country: allowed (5 rows)",
        "    validation failed: 2 rules broken in 1,000 rows (12 rows bad)",
        "      column 'age': rule min >= 0: 7 rows, e.g. {'age': -3, 'user_id': 17}",
        "      column 'country': rule allowed in ['DE', 'FR', 'US']: 5 rows",
        "    → fix the data, or set `on_error: quarantine` on stage check to set bad rows aside, then run again",
    ]
    assert lines[start + 6] == (
        "resuming would fail the same way; after the change, run it again: "
        "raypipe run p.yaml --set stages.check.params.rows.min=10"
    )
    assert "raypipe resume" not in r.output


def test_a_missed_gate_says_what_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    f = failures.parse("failed", failures.record(ray_error(GateFailed("gate failed: accuracy 0.81 < 0.9"))))
    assert f is not None
    monkeypatch.setattr(api, "run", lambda *a, **k: failed_result({"evaluate": f}))
    r = runner.invoke(app, ["run", "p.yaml"], terminal_width=200)
    assert r.exit_code == 1
    assert "  evaluate: GateFailed: gate failed: accuracy 0.81 < 0.9" in r.output
    assert "→ the gate failed: change the model or the gate, then run again" in r.output
    assert "run it again: raypipe run p.yaml" in r.output and "raypipe resume" not in r.output


def test_a_crash_keeps_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    f = failures.parse("failed", failures.record(WorkerCrashedError()))
    assert f is not None and f.category == "crash"
    monkeypatch.setattr(api, "run", lambda *a, **k: failed_result({"train": f}))
    r = runner.invoke(app, ["run", "p.yaml"], terminal_width=200)
    assert r.exit_code == 1
    assert r.output.rstrip().splitlines()[-1] == "continue it with: raypipe resume r-1"
    assert "→" not in r.output


def test_resume_warns_when_it_would_fail_the_same_way(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = fill(tmp_path / "m.db", {"check": ("failed", failures.record(validation_error()))})
    f = failures.parse("failed", failures.record(validation_error()))
    assert f is not None
    called: list[Any] = []

    def resume(*a: Any, **k: Any) -> RunResult:
        called.append(a)
        return failed_result({"check": f})

    monkeypatch.setattr(api, "resume", resume)
    r = runner.invoke(app, ["resume", "r-1", "--db", db], terminal_width=200)
    assert called and r.exit_code == 1
    assert "warning: these failures happen again on the same inputs and config" in r.output
    assert "check: DataError: input 'data' failed validation: age: min (7 rows)" in r.output
    assert f"run it again: raypipe run {tmp_path / 'p.yaml'}" in r.output

    monkeypatch.setattr(api, "resume", lambda *a, **k: RunResult("r-1", "succeeded", {}, {}, 1.0))
    transient = fill(tmp_path / "t.db", {"fit": ("timeout", "timed out after 600s")})
    # killed mid-way: resuming runs what the driver left, whatever failed before
    killed = fill(tmp_path / "k.db", {"check": ("failed", failures.record(validation_error()))}, status="interrupted")
    for store in (transient, killed):
        r = runner.invoke(app, ["resume", "r-1", "--db", store], terminal_width=200)
        assert r.exit_code == 0, r.output
        assert "warning" not in r.output
