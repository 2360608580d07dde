"""Stage logs: ``logs``."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from raypipe.api.logs import NotStarted, StageLog, run_live, stage_logs
from raypipe.cli.guard import guard
from raypipe.cli.options import DbOpt, JsonOpt, RunIdArg
from raypipe.cli.render import emit_json, err_console
from raypipe.exceptions import RaypipeError

app = typer.Typer()

#: How often ``--follow`` looks for more.
FOLLOW_EVERY_S = 0.5


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class Printer:
    """Writes logs to stdout; with several logs, a ``==> stage attempt N <==`` line each time
    the output moves to another one (as ``tail -f`` does with several files)."""

    def __init__(self, headers: bool) -> None:
        self.headers = headers
        self.offsets: dict[tuple[str, int], int] = {}
        self.current: tuple[str, int] | None = None
        self.ended_with_newline = True

    def header(self, log: StageLog) -> str:
        what = f"{log.stage} attempt {log.attempt}" if not log.cached else f"{log.stage} (cache hit)"
        source = f" · the log of run {log.log_run} attempt {log.log_attempt}" if log.cached else ""
        return f"==> {what} · {log.status}{source} <==\n"

    def show(self, log: StageLog) -> bool:
        """Print what is new in ``log``; True if anything was."""
        key = (log.stage, log.attempt)
        chunk = log.read(self.offsets.get(key, 0))
        if chunk is None or (not chunk.data and key in self.offsets):
            return False
        self.offsets[key] = chunk.offset + len(chunk.data)
        if self.headers and self.current != key:
            _out(("" if self.ended_with_newline else "\n") + ("\n" if self.current else "") + self.header(log))
        self.current = key
        if chunk.data:
            text = chunk.data.decode("utf-8", errors="replace")
            _out(text)
            self.ended_with_newline = text.endswith("\n")
        return True


@app.command("logs")
def logs_cmd(
    run_id: RunIdArg,
    stage: Annotated[
        str | None,
        typer.Argument(metavar="STAGE", help="The stage (default: the last attempt of every stage that started)."),
    ] = None,
    attempt: Annotated[
        int | None,
        typer.Option("--attempt", metavar="N", min=1, help="That attempt of the stage (default: every attempt)."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", metavar="", help="Keep printing what running stages write until they (or the run) end."
        ),
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a run's stage logs: what each attempt printed and logged, the output of the Ray
    tasks and actors it started, and its traceback (kept under <storage>/logs/RUN/STAGE/ATTEMPT.log)."""
    if as_json and follow:
        raise typer.BadParameter("give --json or --follow, not both")
    the_run, logs = guard(lambda: _find(run_id, stage, attempt, db, follow))
    if as_json:
        emit_json({"run_id": the_run, "logs": [_doc(log) for log in logs]})
        return
    if not logs and not follow:
        guard(lambda: _raise(f"run {the_run} has no stage logs yet: no stage has started"))
    printer = Printer(headers=stage is None or len(logs) > 1)
    missing = [log for log in logs if not printer.show(log) and not log.live]
    for log in missing:
        why = "skipped" if log.status == "skipped" else "the attempt wrote none"
        err_console.print(f"[yellow]no log for {log.stage} attempt {log.log_attempt}[/] at {log.location} ({why})")
    if not follow:
        if missing and len(missing) == len(logs):
            raise typer.Exit(2)
        return
    if any(log.live and "://" in log.storage for log in logs):
        err_console.print("[dim]on an object-store root, a running attempt's log is uploaded when it ends[/]")
    try:
        _follow(printer, the_run, stage, attempt, db)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _find(
    run_id: str, stage: str | None, attempt: int | None, db: str | None, follow: bool
) -> tuple[str, list[StageLog]]:
    """The run's id and the logs to print; following a stage, its latest attempt (none yet when it
    has not started)."""
    try:
        run, logs = stage_logs(run_id, stage, attempt, db)
    except NotStarted:
        if not follow:
            raise
        return run_id, []
    if stage is not None and attempt is None and follow:
        logs = logs[-1:]
    return run.run_id, logs


def _doc(log: StageLog) -> dict[str, Any]:
    chunk = log.read()
    return {
        "stage": log.stage,
        "attempt": log.attempt,
        "status": log.status,
        "from_run": log.log_run if log.cached else None,
        "location": log.location,
        "exists": chunk is not None,
        "text": chunk.data.decode("utf-8", errors="replace") if chunk is not None else None,
    }


def _raise(message: str) -> None:
    raise RaypipeError(message)


def _follow(printer: Printer, run_id: str, stage: str | None, attempt: int | None, db: str | None) -> None:
    """Print what the live attempts add until there is nothing more to wait for: the attempt
    asked for ended; the stage ended for good (succeeded, skipped...) or the run ended; for a
    whole run, the run ended."""
    printer.headers = printer.headers or stage is None
    while True:
        _, logs = guard(lambda: _find(run_id, stage, attempt, db, True))
        if (
            stage is not None
            and attempt is None
            and printer.current
            and logs
            and logs[-1].attempt != printer.current[1]
        ):
            printer.headers = True  # a retry started: say which attempt is printed
        for log in logs:
            printer.show(log)
        if not any(log.live for log in logs):
            done = attempt is not None or (stage is not None and bool(logs) and logs[-1].final)
            if done or not guard(lambda: run_live(run_id, db)):
                for log in logs:  # what was written (or uploaded) as it ended
                    printer.show(log)
                return
        time.sleep(FOLLOW_EVERY_S)
