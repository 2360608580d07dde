"""raypipe: run ML pipelines inside a Ray cluster.

The CLI is thin: it parses arguments, validates configs before touching Ray, and prints
(through :mod:`raypipe.cli.render`).  User errors print one line each, no traceback, and
exit with code 2 (:mod:`raypipe.cli.guard`).

Each module of this package holds one command group on a typer app of its own (its
commands, and its sub-groups under their names, on a ``typer.Typer`` named ``app``); a new
group is a new module plus its name in ``GROUPS``.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from raypipe.runner.ray_session import use_token_auth

#: The modules of this package that hold a command group, in the order ``--help`` lists them.
GROUPS = (
    "runs",
    "history",
    "logs",
    "models",
    "queue",
    "bench",
    "ab",
    "rollout",
    "loop",
    "schedule",
    "monitor",
    "serve",
    "db",
    "admin",
    "audit",
    "ui",
)

app = typer.Typer(
    help=__doc__.split("\n\n")[0] if __doc__ else None,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
for _group in GROUPS:
    app.add_typer(importlib.import_module(f"{__name__}.{_group}").app)


def version_text() -> str:
    """``raypipe X (Ray Y)``: the installed versions."""
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return f"raypipe {of('raypipe')} (Ray {of('ray')})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", metavar="", callback=_print_version, is_eager=True, help="Print raypipe's and Ray's versions."
        ),
    ] = False,
) -> None:
    pass


def main() -> None:
    use_token_auth()  # before anything imports Ray: commands that join a `ray start` cluster need it
    app()


__all__ = ["GROUPS", "app", "main"]
