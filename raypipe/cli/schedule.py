"""Schedules and triggers: ``schedule apply | list | pause | resume | delete | history``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from raypipe.api import schedules as api
from raypipe.cli.guard import cwd_importable, guard
from raypipe.cli.options import AddressOpt, DbOpt, JsonOpt, PipelineDbOpt
from raypipe.cli.render import console, emit_json, status, ts, wide

app = typer.Typer(
    name="schedule",
    help="Pipelines that run by themselves: on a schedule, on new data, on a model's alias move.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The schedule (its triggers.name, else the pipeline's).")]


@app.command("apply")
def apply_cmd(
    file: Annotated[str, typer.Argument(metavar="FILE", help="A pipeline file with a `triggers:` section.")],
    db: PipelineDbOpt = None,
    address: AddressOpt = None,
    no_start: Annotated[
        bool,
        typer.Option(
            "--no-start", metavar="", help="Only record the schedule; do not start the schedules controller on Ray."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace the schedule of FILE's `triggers:` (times, files and model versions from
    now on fire) and make sure the schedules controller runs on the cluster."""
    cwd_importable()
    doc = guard(lambda: api.apply(file, db=db, address=address, start=not no_start))
    if as_json:
        emit_json(doc, default=str)
        return
    verb = "created" if doc["created"] else "replaced"
    console.print(f"schedule [bold]{escape(doc['name'])}[/] {verb}: {escape('; '.join(doc['triggers']))}")
    if doc.get("next_due_text"):
        console.print(f"  next: {doc['next_due_text']}")
    if doc["controller"]:
        console.print(f"  controller: {doc['controller']}")


@app.command("list")
def list_cmd(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every schedule: its triggers, owner, next time, last fire."""
    rows = guard(lambda: api.list_schedules(db))
    if as_json:
        emit_json(rows, default=str)
        return
    if not rows:
        console.print("no schedules (raypipe schedule apply FILE)")
        return
    table = Table("name", "pipeline", "owner", "triggers", "next", "last fire")
    for r in rows:
        last = r["last_fire"]
        last_text = f"{ts(last['fired_at'])} {last['status']}" if last else "-"
        name = r["name"] + (" (paused)" if r["paused"] else "")
        table.add_row(
            escape(name),
            escape(r["pipeline"]),
            escape(str(r["owner"])),
            escape("; ".join(r["triggers"])),
            r["next_due_text"] or "-",
            last_text,
        )
    wide().print(table)


def _changed(doc: dict[str, object], what: str, as_json: bool) -> None:
    if as_json:
        emit_json(doc, default=str)
    else:
        console.print(f"schedule {escape(str(doc['name']))} {what}")


@app.command("pause")
def pause_cmd(name: NameArg, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Pause a schedule (missed times follow its catch_up when it is resumed)."""
    _changed(guard(lambda: api.pause(name, db=db)), "paused", as_json)


@app.command("resume")
def resume_cmd(name: NameArg, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Resume a paused schedule."""
    _changed(guard(lambda: api.resume(name, db=db)), "resumed", as_json)


@app.command("delete")
def delete_cmd(name: NameArg, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a schedule and the record of its fires (the runs it started stay)."""
    _changed(guard(lambda: api.delete(name, db=db)), "deleted", as_json)


@app.command("history")
def history_cmd(
    name: NameArg,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="The latest N fires.")] = 50,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A schedule's fires: when each was due, why it fired, what became of it and its run."""
    doc = guard(lambda: api.history(name, db=db, limit=limit))
    if as_json:
        emit_json(doc, default=str)
        return
    console.print(f"schedule [bold]{escape(doc['name'])}[/]: {escape('; '.join(doc['triggers']))}")
    if not doc["fires"]:
        console.print("  no fires yet")
        return
    table = Table("due", "why", "fire", "run", "run status")
    for f in doc["fires"]:
        why = f["reason"] + (f" ({f['note']})" if f["note"] else "")
        if f["files"] is not None:
            why += f" [{len(f['files'])} files]"
        run_status = status(f["run_status"]) if f["run_status"] else "-"
        table.add_row(ts(f["due"]), escape(why), f["status"], escape(f["run_id"] or "-"), run_status)
    wide().print(table)


@app.command("status")
def status_cmd(db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """The store's schedules controller on the cluster: running or not, its ticks and errors."""
    st = guard(lambda: api.controller_status(db, address=address))
    if as_json:
        emit_json(st, default=str)
        return
    if st is None:
        console.print("the schedules controller is not running (raypipe schedule apply FILE starts it)")
        return
    console.print(f"controller running since {ts(st['started_at'])}, tick every {st['tick_s']} s, {st['ticks']} ticks")
    for name, err in st["errors"].items():
        console.print(f"  [red]{escape(name)}:[/] {escape(err)}")
