"""Pipelines and their runs: ``run``, ``resume``, ``validate``, ``runs``, ``show``."""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from raypipe import api
from raypipe.cli.guard import EXIT_FAILED, EXIT_USER_ERROR, cwd_importable, guard
from raypipe.cli.options import (
    AddressOpt,
    DbOpt,
    JsonOpt,
    LocalOpt,
    PipelineArg,
    PipelineDbOpt,
    RunIdArg,
    VerboseOpt,
    local_or,
)
from raypipe.cli.render import (
    Reporter,
    console,
    emit_json,
    err_console,
    print_failures,
    print_outputs,
    status,
    steps_text,
    ts,
)
from raypipe.config.platform import PlatformConfig
from raypipe.exceptions import RaypipeError
from raypipe.failures import next_step, strip_ansi
from raypipe.runner.driver import stop_on_sigterm
from raypipe.runner.events import RunResult
from raypipe.runner.plan import Plan
from raypipe.runner.ray_session import console_verbose, set_verbose
from raypipe.runner.states import RunStatus

app = typer.Typer()


def rerun_text(file: str, overrides: list[str] | None, db: str | None) -> str:
    """The command that runs a pipeline again as it was run."""
    args = ["raypipe", "run", file]
    for o in overrides or ():
        args += ["--set", o]
    return shlex.join(args + (["--db", db] if db else []))


def result_doc(result: RunResult, plan: Plan | None, rerun: str | None) -> dict[str, Any]:
    """``run --json`` / ``resume --json``: the run's outcome, each stage's state, the failures
    (message, category, traceback), the artifacts and the small JSON outputs of the last stages."""
    failures = {
        stage: (
            result.failures[stage].to_dict()
            if stage in result.failures
            else {"error": strip_ansi(short), "error_category": None, "traceback": None}
        )
        for stage, short in result.errors.items()
    }
    return {
        "run_id": result.run_id,
        "pipeline": plan.config.name if plan is not None else None,
        "status": result.status,
        "ok": result.ok,
        "wall_s": result.wall_s,
        "stages": result.stages,
        "failures": failures,
        "outputs": {s: {n: ref.to_dict() for n, ref in outs.items()} for s, outs in result.outputs.items()},
        "final_outputs": api.final_outputs(plan, result) if result.ok and plan is not None else {},
        "next_step": None if result.ok else next_step(result.failures, result.run_id, rerun),
    }


def finish(result: RunResult, plan: Plan | None, rerun: str | None = None, as_json: bool = False) -> None:
    """The end of ``run`` and ``resume``: the last stages' outputs, or the failures and what to
    do next (exit code 1)."""
    if as_json:
        emit_json(result_doc(result, plan, rerun), default=str)
        if not result.ok:
            raise typer.Exit(EXIT_FAILED)
        return
    if result.ok:
        if plan is not None:
            print_outputs(api.final_outputs(plan, result))
        console.print(f"[green]run {result.run_id} succeeded[/] in {result.wall_s:.1f}s")
        return
    console.print(f"[red]run {result.run_id} {result.status}[/] in {result.wall_s:.1f}s")
    print_failures(result.errors, result.failures)
    console.print(escape(next_step(result.failures, result.run_id, rerun)), soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def reporter(address: str | None, as_json: bool) -> Reporter:
    """Progress on stdout, or on stderr when stdout carries the JSON document."""
    return Reporter(address, err_console if as_json else console, verbose=console_verbose())


@app.command("run")
def run_cmd(
    file: PipelineArg,
    address: AddressOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="PATH=VALUE", help="Override a field, e.g. stages.train.params.args.epochs=3 (repeat)."
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", metavar="", help="Run every stage even if a cached result exists.")
    ] = False,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", metavar="RUN_ID", help="The new run's id (default: NAME-DATE-TIME-RANDOM)."),
    ] = None,
    db: PipelineDbOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run a pipeline: every stage, its artifacts and lineage are recorded."""
    cwd_importable()
    set_verbose(verbose)
    address = local_or(address, local)
    rep = reporter(address, as_json)

    def go() -> RunResult:
        with rep.running(), stop_on_sigterm():
            return api.run(
                file,
                overrides=set_ or (),
                address=address,
                use_cache=not no_cache,
                on_event=rep.on_event,
                on_start=rep.on_start,
                run_id=run_id,
                db=db,
            )

    finish(guard(go, lambda: rep.run_id), rep.plan, rerun_text(file, set_, db), as_json)


@app.command("resume")
def resume_cmd(
    run_id: RunIdArg,
    db: DbOpt = None,
    address: AddressOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Continue a failed, crashed or killed run without redoing finished stages."""
    cwd_importable()
    set_verbose(verbose)
    address = local_or(address, local)
    rep = reporter(address, as_json)
    before = guard(lambda: api.run_failures(run_id, db))
    rerun = f"raypipe run {shlex.quote(before.config_path)}" if before.config_path else None
    if before.deterministic:
        err_console.print(
            "[yellow]warning:[/] these failures happen again on the same inputs and config: "
            "resuming will fail the same way unless something the stages read changed",
            soft_wrap=True,
        )
        for stage, f in before.failures.items():
            err_console.print(f"  {escape(stage)}: {escape(f.summary)}", soft_wrap=True)

    def go() -> RunResult:
        with rep.running(), stop_on_sigterm():
            return api.resume(run_id, db=db, address=address, on_event=rep.on_event, on_start=rep.on_start)

    finish(guard(go, lambda: rep.run_id), rep.plan, rerun, as_json)


def validated_doc(file: str, p: Any) -> dict[str, Any]:
    if isinstance(p, Plan):
        return {"file": file, "ok": True, "kind": "pipeline", "pipeline": p.config.name, "stages": list(p.order)}
    if isinstance(p, PlatformConfig):
        return {"file": file, "ok": True, "kind": "platform", "users": sorted(p.users), "teams": p.team_names()}
    return {"file": file, "ok": True, "kind": "rollout", "app": p.app, "candidate": p.candidate, "steps": p.steps}


def validated_text(file: str, p: Any) -> str:
    if isinstance(p, Plan):
        return f"[green]ok[/] {escape(file)}: pipeline {p.config.name}, {len(p.order)} stages"
    if isinstance(p, PlatformConfig):
        return f"[green]ok[/] {escape(file)}: platform config, {len(p.users)} users, teams {', '.join(p.team_names())}"
    return f"[green]ok[/] {escape(file)}: rollout of app {p.app}, candidate {p.candidate}, steps {steps_text(p.steps)}"


@app.command("validate")
def validate_cmd(
    files: Annotated[
        list[str], typer.Argument(metavar="FILE", help="Pipeline (or rollout, or platform config) YAML files.")
    ],
    platform: Annotated[
        bool,
        typer.Option(
            "--platform",
            metavar="",
            help="Also check each pipeline against its metadata store's platform config as you would run it "
            "(scheduler settings, teams, priorities).",
        ),
    ] = False,
    db: PipelineDbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check pipeline files (schema, graph, stage kinds, functions) without starting Ray."""
    cwd_importable()
    if as_json:
        docs = []
        for f in files:  # each file on its own, so the document says which failed and why
            try:
                docs.append(validated_doc(f, api.validate([f], platform=platform, db=db)[0]))
            except RaypipeError as e:
                docs.append({"file": f, "ok": False, "error": str(e)})
        ok = all(d["ok"] for d in docs)
        emit_json({"ok": ok, "files": docs}, default=str)
        if not ok:
            raise typer.Exit(EXIT_USER_ERROR)
        return
    plans = guard(lambda: api.validate(files, platform=platform, db=db))
    for f, p in zip(files, plans, strict=True):
        console.print(validated_text(f, p), soft_wrap=True)


def find_runs(db: str | None, limit: int, pipeline: str | None, state: str | None) -> list[Any]:
    """The newest ``limit`` runs of ``pipeline`` in ``state`` (either may be None: any)."""
    if not pipeline and not state:
        return api.list_runs(db, limit)
    fetch = max(limit, 1)
    while True:  # fetch more until enough match or the store has no more
        runs = api.list_runs(db, fetch)
        kept = [r for r in runs if (not pipeline or r.pipeline == pipeline) and (not state or r.status == state)]
        if len(kept) >= limit or len(runs) < fetch:
            return kept[: max(limit, 0)]
        fetch *= 4


@app.command("runs")
def runs_cmd(
    db: DbOpt = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="How many runs, newest first.")] = 20,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", metavar="NAME", help="Only the runs of this pipeline.")
    ] = None,
    state: Annotated[
        RunStatus | None,
        typer.Option("--status", metavar="STATUS", help=f"Only the runs in this state: {', '.join(RunStatus)}."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List recent runs."""
    runs = guard(lambda: find_runs(db, limit, pipeline, state.value if state else None))
    if as_json:
        emit_json([r.to_dict() for r in runs])
        return
    table = Table("pipeline", "status", "started", "duration")
    table.columns.insert(0, Column("run id", no_wrap=True))
    for r in runs:
        dur = f"{r.ended_at - r.created_at:.1f}s" if r.ended_at else "-"
        table.add_row(r.run_id, r.pipeline, status(r.status), ts(r.created_at), dur)
    console.print(table)


@app.command("show")
def show_cmd(run_id: RunIdArg, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Show a run: stages, attempts, status, durations, cache hits, artifacts."""
    detail = guard(lambda: api.show_run(run_id, db))
    if as_json:
        emit_json(detail.to_dict())
        return
    r = detail.run
    console.print(f"run [bold]{r.run_id}[/] · pipeline {r.pipeline} · {status(r.status)} · started {ts(r.created_at)}")
    failures = detail.failures
    if r.error and not failures:
        console.print(f"error: {escape(strip_ansi(r.error))}", soft_wrap=True)
    table = Table("stage", "attempt", "status", "duration", "outputs", "error")
    for s in detail.stages:
        outs = detail.outputs.get(s.id, {})
        out_text = "\n".join(f"{k}: {v['format']} {v['size']:,} B {v['sha256'][:10]}" for k, v in outs.items())
        f = detail.failure_of(s)
        err = f.summary if f is not None else strip_ansi(s.error or "").strip()
        dur = f"{s.duration_s:.2f}s" if s.duration_s is not None else "-"
        state = s.status + (f" (from #{s.cached_from})" if s.cached_from else "")
        err = err if len(err) <= 80 else err[:79] + "…"
        table.add_row(escape(s.stage), str(s.attempt), status(state), dur, out_text, escape(err))
    console.print(table)
    if failures:
        console.print("failed:")
        print_failures({k: f.summary for k, f in failures.items()}, failures)
        if r.status != "running":
            rerun = f"raypipe run {shlex.quote(r.config_path)}" if r.config_path else None
            console.print(escape(next_step(failures, r.run_id, rerun)), soft_wrap=True)
