"""The metadata store's schema: ``db status``, ``db upgrade``."""

from __future__ import annotations

import typer
from rich.markup import escape

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import DbOpt, JsonOpt
from raypipe.cli.render import console, emit_json

app = typer.Typer()
db_app = typer.Typer(
    name="db",
    help="The metadata store's schema version: show it, upgrade a store an older raypipe made.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db_app)


def _version(v: int | None) -> str:
    return "none (empty database)" if v is None else str(v)


@db_app.command("status")
def db_status_cmd(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Show the schema version of the metadata store and of this raypipe, and the migrations pending."""
    doc = guard(lambda: api.db_status(db))
    if as_json:
        emit_json(doc)
        return
    console.print(f"{escape(doc['db'])} ({doc['backend']})", soft_wrap=True)
    console.print(f"  schema version: {_version(doc['version'])} · this raypipe's: {doc['code_version']}")
    if doc["state"] == "current":
        console.print("  up to date")
    elif doc["state"] == "newer":
        console.print("  [yellow]a newer raypipe upgraded it: upgrade raypipe to use it[/]")
    else:
        console.print(
            "  pending: `raypipe db upgrade` applies them (as does any command opening the store,"
            " unless $RAYPIPE_DB_AUTO_UPGRADE=0)",
            soft_wrap=True,
        )
        for m in doc["pending"]:
            console.print(f"    {m['version']}: {escape(m['description'])}", soft_wrap=True)


@db_app.command("upgrade")
def db_upgrade_cmd(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Upgrade the metadata store to this raypipe's schema version, one migration per transaction."""
    doc = guard(lambda: api.db_upgrade(db))
    if as_json:
        emit_json(doc)
        return
    where = escape(doc["db"])
    if not doc["applied"] and doc["from_version"] is not None:
        console.print(
            f"{where} is at schema version {doc['to_version']}, this raypipe's: nothing to do", soft_wrap=True
        )
        return
    console.print(f"{where}: schema version {_version(doc['from_version'])} -> {doc['to_version']}", soft_wrap=True)
    for m in doc["applied"]:
        console.print(f"  {m['version']}: {escape(m['description'])}", soft_wrap=True)
