"""The scheduler's queue: ``queue`` (the jobs), ``queue release|requeue|cancel JOB``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import AddressOpt, DbOpt, JsonOpt
from raypipe.cli.render import console, emit_json, status

app = typer.Typer()
queue_app = typer.Typer(
    name="queue",
    help="The scheduler's queue: list the jobs (no command) or release, requeue or cancel one (its owner or an admin).",
    invoke_without_command=True,
    pretty_exceptions_enable=False,
)
app.add_typer(queue_app)

JobArg = Annotated[str, typer.Argument(metavar="JOB", help="The job's id, as `raypipe queue` lists it.")]


@queue_app.callback()
def queue_cmd(ctx: typer.Context, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """List the scheduler's queued and running jobs, and why each waiting job waits."""
    if ctx.invoked_subcommand is not None:
        return
    data = guard(lambda: api.scheduler_queue(address))
    if as_json:
        emit_json(data)
        return
    st = data["stats"]
    platform = f" · platform config v{st['platform_version']}" if st.get("platform_version") else ""
    console.print(
        f"policy {st['policy']}{platform} · {st['nodes']} nodes · "
        + ", ".join(f"{n} {s}" for s, n in st["jobs"].items() if n)
    )
    table = Table("job", "state", "by", "team", "prio", "demand", "nodes", "preempted", "why")
    for j in data["jobs"]:
        if j["state"] == "done":
            continue
        nodes = ",".join(n[:8] for n in j["nodes"])
        table.add_row(
            j["job_id"],
            status(j["state"]),
            escape(str(j.get("principal") or "-")),
            j["team"],
            str(j["priority"]),
            j["demand"],
            nodes,
            str(j["preemptions"]),
            j["reason"],
        )
    console.print(table)


def _act(action: str, job: str, db: str | None, address: str | None, as_json: bool) -> None:
    view = guard(lambda: api.queue_action(action, job, db=db, address=address))
    if as_json:
        emit_json(view)
        return
    console.print(f"{escape(job)}: {status(view['state'])} ({escape(view['reason'])})", soft_wrap=True)


@queue_app.command("release")
def release_cmd(job: JobArg, db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """End a job and give back its grant (its owner's driver sees it end); its owner or an admin."""
    _act("release", job, db, address, as_json)


@queue_app.command("requeue")
def requeue_cmd(job: JobArg, db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """Put a running, preempting or lost job back in the queue; its owner or an admin."""
    _act("requeue", job, db, address, as_json)


@queue_app.command("cancel")
def cancel_cmd(job: JobArg, db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """Take a queued job out of the queue; its owner or an admin."""
    _act("cancel", job, db, address, as_json)
