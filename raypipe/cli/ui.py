"""The web UI: ``ui``."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from raypipe.cli.guard import guard
from raypipe.cli.options import DbOpt
from raypipe.cli.render import err_console
from raypipe.exceptions import RaypipeError
from raypipe.ui import UiSettings, create_app
from raypipe.ui.app import run_server
from raypipe.ui.auth import ACTIONS

app = typer.Typer()


@app.command("ui")
def ui_cmd(
    db: DbOpt = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            metavar="ADDRESS",
            help="Ray cluster whose scheduler queue, served apps, A/B reports and drift the pages show (and "
            "the apps' actions act on); without it those pages say so.",
        ),
    ] = None,
    actions: Annotated[
        str,
        typer.Option(
            "--actions",
            metavar="admins|users|none",
            help="Who may act (move an alias, change a split, abort a rollout, stop a loop): the platform's "
            "admins, every user with a token, or nobody (read-only). Without users configured: the OS user, "
            "from this machine only.",
        ),
    ] = "admins",
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Interface to listen on (other machines: 0.0.0.0).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="TCP port.")] = 8600,
    bench: Annotated[
        str | None,
        typer.Option("--bench", metavar="DIR", help="Folder of benchmark results (results.json and plots) for /bench."),
    ] = None,
) -> None:
    """Serve web pages on the metadata store: runs, stage logs and artifacts, models and lineage, the scheduler,
    served apps; actions (alias, split, rollout abort, loop stop) for principals with a token."""

    def start() -> None:
        if bench is not None and not os.path.isdir(bench):
            raise RaypipeError(f"--bench {bench!r} is not a folder")
        if actions not in ACTIONS:
            raise RaypipeError(f"--actions {actions!r}: expected one of {', '.join(ACTIONS)}")
        asgi = create_app(UiSettings(db=db, address=address, bench=bench, actions=actions))
        err_console.print(f"raypipe ui on http://{host}:{port}/runs (Ctrl-C stops it)")
        run_server(asgi, host, port)

    guard(start)
