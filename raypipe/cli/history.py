"""What a run would do and what runs did: ``plan``, ``diff``, ``rerun`` (``model diff`` is in
:mod:`raypipe.cli.models`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.api.history import Diff
from raypipe.api.plans import PipelinePlan
from raypipe.cli.guard import EXIT_FAILED, cwd_importable, guard
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
from raypipe.cli.render import console, emit_json, err_console, status, ts
from raypipe.cli.runs import finish, reporter
from raypipe.exceptions import RaypipeError
from raypipe.runner.driver import stop_on_sigterm
from raypipe.runner.events import RunResult
from raypipe.runner.ray_session import set_verbose

app = typer.Typer()

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="PATH=VALUE", help="Override a field, e.g. stages.train.params.args.epochs=3 (repeat)."
    ),
]
#: ``plan --detailed-exitcode``: nothing would run, something would (like ``terraform plan``); errors exit 1.
EXIT_NOTHING_RUNS = 0
EXIT_SOMETHING_RUNS = 2


def plan_table(p: PipelinePlan) -> Table:
    checked = any(not s.cluster.startswith("cluster not checked") for s in p.stages)
    table = Table("stage", "kind", "action", "why", "resources", *(["cluster"] if checked else []))
    for s in p.stages:
        res = s.resources
        ask = ", ".join(f"{k} {v:g}" for k, v in res.items() if k != "custom" and v) or "-"
        ask += "".join(f", {k} {v:g}" for k, v in (res.get("custom") or {}).items())
        ask = (f"{s.gang_size} x " if s.gang_size > 1 else "") + ask
        action = "[green]cached[/]" if s.action == "cached" else "[yellow]run[/]" + ("" if s.key_known else " (?)")
        why = "\n".join(s.reasons)
        if s.cached_run:
            why += f" of run {s.cached_run}"
        table.add_row(escape(s.stage), s.kind, action, escape(why), ask, *([escape(s.cluster)] if checked else []))
    return table


@app.command("plan")
def plan_cmd(
    file: PipelineArg,
    set_: SetOpt = None,
    db: PipelineDbOpt = None,
    address: AddressOpt = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", metavar="", help="Plan as `run --no-cache` would run.")
    ] = False,
    no_cluster: Annotated[
        bool, typer.Option("--no-cluster", metavar="", help="Do not ask a running Ray cluster whether the stages fit.")
    ] = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            metavar="",
            help="Exit 0 when nothing would run, 2 when a stage would run, 1 on an error (as `terraform plan`).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what `raypipe run FILE` would do now, without running it: per stage `cached` (and the run it
    reuses) or `run` and why (which part of its cache key changed), its resources and whether the cluster fits
    them. Ray is never started; a running cluster is asked."""
    cwd_importable()

    def go() -> PipelinePlan:
        return api.plan_pipeline(
            file, overrides=set_ or (), db=db, address=address, use_cache=not no_cache, check_cluster=not no_cluster
        )

    if detailed_exitcode:
        try:
            p = go()
        except RaypipeError as e:
            err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(EXIT_FAILED) from None
    else:
        p = guard(go)
    if as_json:
        emit_json(p.to_dict(), default=str)
    else:
        runs = [s.stage for s in p.stages if s.action == "run"]
        console.print(f"plan of pipeline [bold]{escape(p.pipeline)}[/] · store {escape(p.db)}", soft_wrap=True)
        console.print(plan_table(p))
        console.print(f"cluster: {escape(p.cluster)}", soft_wrap=True)
        if runs:
            console.print(f"{len(runs)} of {len(p.stages)} stages would run: {', '.join(runs)}", soft_wrap=True)
            if any(not s.key_known for s in p.stages):
                console.print("run (?): decided when its upstream's outputs exist; cached if they come out as before")
        else:
            console.print(f"nothing would run: all {len(p.stages)} stages are cached")
    if detailed_exitcode:
        raise typer.Exit(EXIT_SOMETHING_RUNS if p.would_run else EXIT_NOTHING_RUNS)


#: Sections whose equal rows are hidden unless ``--all`` (long, and mostly the same).
QUIET_SECTIONS = ("config", "packages", "env")


def _cell(v: Any, section: str, name: str) -> str:
    if v is None:
        return "-"
    if name == "started_at" or name == "created_at":
        return ts(float(v))
    return str(v)


def print_diff(d: Diff, show_all: bool) -> None:
    table = Table("", "section", "name", d.a, d.b)
    hidden = 0
    for r in d.rows:
        if not r.differs and not show_all and r.section in QUIET_SECTIONS:
            hidden += 1
            continue
        mark = "[yellow]≠[/]" if r.differs else ""
        a, b = _cell(r.a, r.section, r.name), _cell(r.b, r.section, r.name)
        if r.differs:
            a, b = f"[yellow]{escape(a)}[/]", f"[yellow]{escape(b)}[/]"
        else:
            a, b = escape(a), escape(b)
        table.add_row(mark, r.section, escape(r.name), a, b)
    console.print(table)
    more = f"; {hidden} equal rows of {', '.join(QUIET_SECTIONS)} hidden (--all shows them)" if hidden else ""
    console.print(f"{len(d.differing)} of {len(d.rows)} rows differ (≠){more}", soft_wrap=True)


AllOpt = Annotated[
    bool, typer.Option("--all", metavar="", help="Also show the equal rows of config, packages and env.")
]


@app.command("diff")
def diff_cmd(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="Run id (or a unique prefix).")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="Run id (or a unique prefix).")],
    db: DbOpt = None,
    show_all: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Two runs side by side: stage states, params, config, code fingerprints, input and output versions,
    environment (git, Python, packages) and metrics; differing rows marked."""
    d = guard(lambda: api.diff_runs(run_a, run_b, db))
    if as_json:
        emit_json(d.to_dict(), default=str)
        return
    print_diff(d, show_all)


@app.command("rerun")
def rerun_cmd(
    run_id: RunIdArg,
    set_: SetOpt = None,
    db: DbOpt = None,
    address: AddressOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", metavar="", help="Run every stage again.")] = False,
    new_run_id: Annotated[
        str | None,
        typer.Option("--run-id", metavar="RUN_ID", help="The new run's id (default: NAME-DATE-TIME-RANDOM)."),
    ] = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A new run from the config recorded with RUN_ID (--set overrides it); first prints how the recorded git
    commit, dirty flag and package versions differ from now."""
    cwd_importable()
    set_verbose(verbose)
    address = local_or(address, local)
    check = guard(lambda: api.rerun_check(run_id, db))
    out = err_console if as_json else console
    rec = check.run
    out.print(f"rerun of {rec.run_id} ({rec.pipeline}, {status(rec.status)}, started {ts(rec.created_at)})")
    if check.changes:
        out.print("since then:")
        for line in check.changes:
            out.print(f"  {escape(line)}", soft_wrap=True)
    else:
        out.print("git commit, dirty flag, Python and packages: as recorded")
    rep = reporter(address, as_json)

    def go() -> RunResult:
        with rep.running(), stop_on_sigterm():
            return api.rerun(
                check,
                overrides=set_ or (),
                address=address,
                use_cache=not no_cache,
                on_event=rep.on_event,
                on_start=rep.on_start,
                run_id=new_run_id,
            )

    finish(guard(go, lambda: rep.run_id), rep.plan, f"raypipe rerun {rec.run_id}", as_json)
