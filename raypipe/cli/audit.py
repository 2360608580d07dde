"""The audit log: ``audit``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import DbOpt, JsonOpt
from raypipe.cli.render import emit_json, ts, wide

app = typer.Typer()


@app.command("audit")
def audit_cmd(
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="WHEN", help="Only since then: a duration back (30m, 2h, 7d) or an ISO time."),
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", metavar="NAME", help="Only what NAME did.")] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", metavar="ACTION", help="Only this action (e.g. run.start; `run` takes every run.*)."),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", metavar="TARGET", help="Only on this run, app, model@alias or job.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="At most N entries, the newest.")] = 100,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List who did what: runs started, resumed and stopped, alias moves, platform configs applied,
    queue operations, traffic splits, rollouts and closed loops; oldest first."""
    rows = guard(lambda: api.audit(since=since, actor=actor, action=action, target=target, limit=limit, db=db))
    if as_json:
        emit_json(rows, default=str)
        return
    out = wide()
    if not rows:
        out.print("nothing recorded" + (" matching" if any((since, actor, action, target)) else ""))
        return
    table = Table("when", "who", "action", "target", "detail")
    for r in rows:
        detail = json.dumps(r["detail"], default=str, separators=(", ", ": "))
        detail = detail if len(detail) <= 100 else detail[:99] + "…"
        table.add_row(ts(r["at"]), escape(str(r["actor"])), r["action"], escape(r["target"]), escape(detail))
    out.print(table)
