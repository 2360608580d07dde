"""raypipe: run ML pipelines inside a Ray cluster.

The CLI is thin: it parses arguments, validates configs before touching Ray, and
prints.  User errors print one line each, no traceback, and exit with code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from raypipe import api
from raypipe.exceptions import RaypipeError
from raypipe.runner.executor import RunResult, StageEvent
from raypipe.runner.plan import Plan

app = typer.Typer(
    help=__doc__.split("\n\n")[0] if __doc__ else None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

T = TypeVar("T")

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Metadata store (path or sqlite:/// URL); default $RAYPIPE_DB or ./.raypipe/raypipe.db."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray address to connect to (default: config, $RAY_ADDRESS, or a new local Ray)."),
]


def _guard(fn: Callable[[], T], run_hint: Callable[[], str | None] = lambda: None) -> T:
    """Run ``fn``; a RaypipeError becomes a clean message and exit code 2, Ctrl-C exit 130."""
    try:
        return fn()
    except RaypipeError as e:
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _shutdown_ray()
        run_id = run_hint()
        hint = f"; continue with: raypipe resume {run_id}" if run_id else ""
        err_console.print(f"[yellow]interrupted[/]{hint}")
        raise typer.Exit(130) from None


def _shutdown_ray() -> None:
    """Leave Ray cleanly after Ctrl-C (its exit hooks can crash on an interrupted driver)."""
    mod = sys.modules.get("ray")
    if mod is not None and mod.is_initialized():
        try:
            mod.shutdown()
        except Exception:  # noqa: BLE001 - best effort while exiting
            pass


_ICONS = {
    "started": "[cyan]▶[/]",
    "succeeded": "[green]✓[/]",
    "cached": "[green]↺[/]",
    "reused": "[green]↺[/]",
    "retrying": "[yellow]↻[/]",
    "failed": "[red]✗[/]",
    "skipped": "[dim]–[/]",
    "queued": "[dim]…[/]",
    "waiting": "[dim]…[/]",
    "requeued": "[yellow]⟲[/]",
    "preempting": "[yellow]⏸[/]",
}


class _Reporter:
    """Shows a progress bar over the stages and one line per stage event."""

    def __init__(self) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None
        self.plan: Plan | None = None
        self.run_id: str | None = None

    def on_start(self, run_id: str, plan: Plan) -> None:
        self.plan = plan
        self.run_id = run_id
        console.print(f"run [bold]{run_id}[/] · pipeline {plan.config.name} · {len(plan.order)} stages")
        self.task = self.progress.add_task(plan.config.name, total=len(plan.order))

    def on_event(self, e: StageEvent) -> None:
        dur = f" ({e.duration_s:.1f}s)" if e.duration_s is not None else ""
        attempt = f" attempt {e.attempt}" if e.attempt > 1 else ""
        shown = ("failed", "retrying", "skipped", "waiting", "requeued", "queued", "preempting")
        msg = f": {e.message}" if e.message and e.status in shown else ""
        label = e.status if e.status != "cached" else "cache hit"
        self.progress.console.print(
            f"  {_ICONS.get(e.status, '·')} {e.stage} {label}{attempt}{dur}{msg}", soft_wrap=True
        )
        if e.status in ("succeeded", "cached", "reused", "failed", "skipped") and self.task is not None:
            self.progress.advance(self.task)

    @contextmanager
    def running(self) -> Iterator[None]:
        with self.progress:
            yield


def _finish(result: RunResult, plan: Plan | None) -> None:
    if result.ok:
        if plan is not None:
            for stage, outs in api.final_outputs(plan, result).items():
                for name, value in outs.items():
                    console.rule(f"{stage}.{name}", style="dim")
                    console.print(value if isinstance(value, str) else json.dumps(value, indent=2), markup=False)
        console.print(f"[green]run {result.run_id} succeeded[/] in {result.wall_s:.1f}s")
        return
    console.print(f"[red]run {result.run_id} {result.status}[/] in {result.wall_s:.1f}s")
    for stage, err in result.errors.items():
        console.print(f"  {stage}: {err}", soft_wrap=True)
    console.print(f"continue it with: raypipe resume {result.run_id}")
    raise typer.Exit(1)


def _cwd_importable() -> None:
    """Let ``module:function`` name modules in the current directory, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


@app.command("run")
def run_cmd(
    file: Annotated[str, typer.Argument(help="Pipeline YAML file.")],
    address: AddressOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: PATH=VALUE, e.g. stages.train.params.args.epochs=3."),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Run every stage even if a cached result exists.")
    ] = False,
) -> None:
    """Run a pipeline: every stage, its artifacts and lineage are recorded."""
    _cwd_importable()
    rep = _Reporter()

    def go() -> RunResult:
        with rep.running():
            return api.run(
                file,
                overrides=set_ or (),
                address=address,
                use_cache=not no_cache,
                on_event=rep.on_event,
                on_start=rep.on_start,
            )

    _finish(_guard(go, lambda: rep.run_id), rep.plan)


@app.command("resume")
def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOpt = None,
    address: AddressOpt = None,
) -> None:
    """Continue a failed, crashed or killed run without redoing finished stages."""
    _cwd_importable()
    rep = _Reporter()

    def go() -> RunResult:
        with rep.running():
            return api.resume(run_id, db=db, address=address, on_event=rep.on_event, on_start=rep.on_start)

    _finish(_guard(go, lambda: rep.run_id), rep.plan)


@app.command("validate")
def validate_cmd(files: Annotated[list[str], typer.Argument(help="Pipeline YAML files.")]) -> None:
    """Check pipeline files (schema, graph, stage kinds, functions) without starting Ray."""
    _cwd_importable()
    plans = _guard(lambda: api.validate(files))
    for f, p in zip(files, plans, strict=True):
        console.print(f"[green]ok[/] {f}: pipeline {p.config.name}, {len(p.order)} stages")


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@app.command("runs")
def runs_cmd(
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List recent runs."""
    runs = _guard(lambda: api.list_runs(db, limit))
    if as_json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return
    table = Table("pipeline", "status", "started", "duration")
    table.columns.insert(0, Column("run id", no_wrap=True))
    for r in runs:
        dur = f"{r.ended_at - r.created_at:.1f}s" if r.ended_at else "-"
        table.add_row(r.run_id, r.pipeline, _status(r.status), _ts(r.created_at), dur)
    console.print(table)


def _status(s: str) -> str:
    color = {"succeeded": "green", "cached": "green", "failed": "red", "timeout": "red", "running": "cyan"}.get(
        s, "yellow"
    )
    return f"[{color}]{s}[/]"


@app.command("show")
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: stages, attempts, status, durations, cache hits, artifacts."""
    detail = _guard(lambda: api.show_run(run_id, db))
    if as_json:
        print(json.dumps(detail.to_dict(), indent=2))
        return
    r = detail.run
    console.print(
        f"run [bold]{r.run_id}[/] · pipeline {r.pipeline} · {_status(r.status)} · started {_ts(r.created_at)}"
    )
    if r.error:
        console.print(f"error: {r.error}", soft_wrap=True)
    table = Table("stage", "attempt", "status", "duration", "outputs", "error")
    for s in detail.stages:
        outs = detail.outputs.get(s.id, {})
        out_text = "\n".join(f"{k}: {v['format']} {v['size']:,} B {v['sha256'][:10]}" for k, v in outs.items())
        err = (s.error or "").strip().splitlines()
        dur = f"{s.duration_s:.2f}s" if s.duration_s is not None else "-"
        status = s.status + (f" (from #{s.cached_from})" if s.cached_from else "")
        table.add_row(s.stage, str(s.attempt), _status(status), dur, out_text, err[-1][:80] if err else "")
    console.print(table)


@app.command("queue")
def queue_cmd(address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """List the scheduler's queued and running jobs, and why each waiting job waits."""
    data = _guard(lambda: api.scheduler_queue(address))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    st = data["stats"]
    console.print(
        f"policy {st['policy']} · {st['nodes']} nodes · "
        + ", ".join(f"{n} {s}" for s, n in st["jobs"].items() if n)
    )
    table = Table("job", "state", "team", "prio", "demand", "nodes", "preempted", "why")
    for j in data["jobs"]:
        if j["state"] == "done":
            continue
        nodes = ",".join(n[:8] for n in j["nodes"])
        table.add_row(j["job_id"], _status(j["state"]), j["team"], str(j["priority"]), j["demand"], nodes, str(j["preemptions"]), j["reason"])
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
