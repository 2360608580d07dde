"""The scheduler's queue: ``queue``."""

from __future__ import annotations

import typer
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import AddressOpt, JsonOpt
from raypipe.cli.render import console, emit_json, status

app = typer.Typer()


@app.command("queue")
def queue_cmd(address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """List the scheduler's queued and running jobs, and why each waiting job waits."""
    data = guard(lambda: api.scheduler_queue(address))
    if as_json:
        emit_json(data)
        return
    st = data["stats"]
    console.print(
        f"policy {st['policy']} · {st['nodes']} nodes · " + ", ".join(f"{n} {s}" for s, n in st["jobs"].items() if n)
    )
    table = Table("job", "state", "team", "prio", "demand", "nodes", "preempted", "why")
    for j in data["jobs"]:
        if j["state"] == "done":
            continue
        nodes = ",".join(n[:8] for n in j["nodes"])
        table.add_row(
            j["job_id"],
            status(j["state"]),
            j["team"],
            str(j["priority"]),
            j["demand"],
            nodes,
            str(j["preemptions"]),
            j["reason"],
        )
    console.print(table)
