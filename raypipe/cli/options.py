"""Arguments and options several commands share, with readable metavars.

A flag's ``metavar=""`` keeps typer from showing ``<bool>`` beside it in ``--help``.
"""

from __future__ import annotations

from typing import Annotated

import typer

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="DB",
        help="Metadata store (path, sqlite:/// or postgresql:// URL); default $RAYPIPE_DB, else the project's "
        "(.raypipe/raypipe.db here or in a folder above, or under $RAYPIPE_HOME).",
    ),
]
PipelineDbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="DB",
        help="Metadata store (path, sqlite:/// or postgresql:// URL); default $RAYPIPE_DB, then the "
        "pipeline's `metadata:`, then <storage>/raypipe.db for an absolute storage path, else the project's.",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", metavar="", help="Print one JSON document on stdout for scripts (messages go to stderr)."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="ADDRESS",
        help="Ray address to connect to (default: the pipeline's, $RAY_ADDRESS, the cluster `ray start` left on "
        "this machine, else a new local Ray).",
    ),
]
LocalOpt = Annotated[
    bool,
    typer.Option(
        "--local",
        metavar="",
        help="Start a new local Ray for this run, even where `ray start` left a cluster on this machine "
        "(which a run joins by default, as Ray's own commands do).",
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        metavar="",
        help="Also show Ray's output live: what the stages and their Ray workers print, Ray Data's plans, Ray "
        "Train's reports, Ray's warnings (otherwise in the stage logs: raypipe logs RUN).",
    ),
]
PipelineArg = Annotated[str, typer.Argument(metavar="FILE", help="Pipeline YAML file.")]
RunIdArg = Annotated[str, typer.Argument(metavar="RUN_ID", help="Run id (or a unique prefix).")]
AppArg = Annotated[str, typer.Argument(metavar="APP", help="Name of the served app.")]


def local_or(address: str | None, local: bool) -> str | None:
    """The Ray address ``--address`` and ``--local`` name together."""
    if local and address and address != "local":
        raise typer.BadParameter("give --address or --local, not both")
    return "local" if local else address
