"""The closed loop: ``loop status``, ``loop stop``, ``loop demo``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from raypipe import api
from raypipe.cli.guard import cwd_importable, guard
from raypipe.cli.options import AddressOpt, AppArg, DbOpt, JsonOpt
from raypipe.cli.render import Reporter, console, emit_json
from raypipe.examples.closed_loop import print_timeline
from raypipe.examples.loop_demo import run_demo
from raypipe.exceptions import RaypipeError

app = typer.Typer(
    name="loop",
    help="The closed loop: drift -> retraining through the scheduler -> gate -> canary -> promote or roll back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command("status")
def loop_status_cmd(name: AppArg, db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """The loop's state and the timeline of its cycles: drift events (features and statistics),
    retraining runs, gates, canary steps, promotions and rollbacks."""

    st = guard(lambda: api.loop_status(name, db=db, address=address))
    if as_json:
        emit_json(st, default=str)
        return
    live = st.get("live")
    state = live["state"] if live else "not running"
    console.print(
        f"app [bold]{escape(name)}[/] · loop {state}" + (f" · {escape(st['note'])}" if st.get("note") else "")
    )
    if live and live.get("cycle"):
        c = live["cycle"]
        console.print(f"  cycle {c['cycle_id']}: {c['phase']} (run {c.get('run_id')}, rollout {c.get('rollout_id')})")
    if live and live.get("last_error"):
        console.print(f"  [red]last error:[/] {escape(live['last_error'])}")
    t0 = st["timeline"][0]["at"] if st["timeline"] else 0.0
    print_timeline(st["timeline"], t0, console)


@app.command("stop")
def loop_stop_cmd(name: AppArg, db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """Disarm the loop and stop a retraining run in flight (recorded `stopped`); serving and
    monitoring go on."""
    guard(lambda: api.loop_stop(name, db=db, address=address))
    if as_json:
        emit_json({"app": name, "stopped": True})
        return
    console.print(f"the closed loop of app {escape(name)} is stopped")


@app.command("demo")
def loop_demo_cmd(
    config: Annotated[str, typer.Option("--config", metavar="FILE", help="The pipeline.")] = "configs/closed_loop.yaml",
    out: Annotated[
        str, typer.Option("--out", metavar="DIR", help="Where timeline.json and timeline.png go.")
    ] = "bench-out/closed_loop",
    num_cpus: Annotated[int, typer.Option("--num-cpus", metavar="N", help="Logical CPUs of the local Ray.")] = 4,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="Seconds to wait for the cycle.")
    ] = 900.0,
    shift: Annotated[
        float, typer.Option("--shift", metavar="SIGMAS", help="The calibration fault, in standard deviations.")
    ] = 0.5,
) -> None:
    """The whole loop on this machine: a local Ray, the pipeline (v1 served with a monitor and the
    loop armed), clean then shifted traffic, drift -> retrain -> canary -> promote, the timeline."""

    def run_pipeline(overrides: Sequence[str]) -> None:
        rep = Reporter()
        with rep.running():
            res = api.run(config, overrides=overrides, on_event=rep.on_event, on_start=rep.on_start)
        if not res.ok:
            raise RaypipeError(f"the pipeline failed: {res.errors}")

    cwd_importable()
    guard(lambda: api.validate([config]))  # a broken pipeline fails here, before Ray starts
    code = guard(
        lambda: run_demo(
            config, Path(out), run_pipeline, num_cpus=num_cpus, timeout=timeout, shift=shift, console=console
        )
    )
    raise typer.Exit(code)
