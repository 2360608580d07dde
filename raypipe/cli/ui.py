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

app = typer.Typer()


@app.command("ui")
def ui_cmd(
    db: DbOpt = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            metavar="ADDRESS",
            help="Ray cluster whose scheduler queue /scheduler shows (read-only); without it the page says so.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Interface to listen on (other machines: 0.0.0.0).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="TCP port.")] = 8600,
    bench: Annotated[
        str | None,
        typer.Option("--bench", metavar="DIR", help="Folder of benchmark results (results.json and plots) for /bench."),
    ] = None,
) -> None:
    """Serve read-only web pages on the metadata store: runs, stage logs and artifacts, models and lineage."""

    def start() -> None:
        if bench is not None and not os.path.isdir(bench):
            raise RaypipeError(f"--bench {bench!r} is not a folder")
        asgi = create_app(UiSettings(db=db, address=address, bench=bench))
        err_console.print(f"raypipe ui on http://{host}:{port}/runs (Ctrl-C stops it)")
        run_server(asgi, host, port)

    guard(start)
