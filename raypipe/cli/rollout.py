"""Canary rollouts: ``rollout start``, ``rollout status``, ``rollout abort``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import AddressOpt, AppArg, DbOpt, JsonOpt
from raypipe.cli.render import EVENT_STYLE, console, emit_json, event_text, steps_text, ts, weights_text, wide
from raypipe.serving.rollout.decisions import PROMOTE, ROLLBACK
from raypipe.serving.rollout.run import ACTIVE, progress_text, status_from_events
from raypipe.serving.rollout.settings import parse_steps

app = typer.Typer(
    name="rollout",
    help="Canary rollouts: move traffic to a candidate step by step behind guardrails.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command("start")
def rollout_start_cmd(
    name: AppArg,
    candidate: Annotated[
        str | None,
        typer.Option(
            "--candidate",
            metavar="VARIANT",
            help="The variant to roll out: v4, 4, MODEL:4 or MODEL@ALIAS (deployed at 0%).",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline", metavar="VARIANT", help="Compare against this variant (default: the production one)."
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps", metavar="PERCENT,...", help="Candidate percentages, ending at 100 (default 5,25,50,100)."
        ),
    ] = None,
    interval: Annotated[
        float | None, typer.Option("--interval", metavar="SECONDS", help="Seconds per step (default 60).")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", metavar="FILE", help="A rollout YAML (`rollout:` spec); flags override its fields."),
    ] = None,
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a canary rollout; it runs in a detached actor (the command returns at once)."""

    def go() -> dict[str, Any]:
        spec = api.rollout_spec(
            name,
            candidate=candidate,
            baseline=baseline,
            steps=parse_steps(steps) if steps else None,
            interval_s=interval,
            config=config,
        )
        return api.rollout_start(spec, db=db, address=address)

    st = guard(go)
    if as_json:
        emit_json(st, default=str)
        return
    console.print(
        f"started rollout [bold]{st['rollout_id']}[/] of app {escape(name)}: {st['baseline']} -> {st['candidate']}, "
        f"steps {steps_text(st['steps'])}, {st['interval_s']:g} s each; now {st['candidate']} at {st['percent']:g}%"
    )
    console.print(f"follow it with: raypipe rollout status {escape(name)}")


@app.command("status")
def rollout_status_cmd(name: AppArg, db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """The app's latest rollout: state, step, weights, last decision and its event timeline."""
    st = guard(lambda: api.rollout_status(name, db=db, address=address))
    if as_json:
        emit_json(st, default=str)
        return

    live = st["live"]
    # no controller to ask (the cluster restarted, or the driver aborted it): what the events say
    view = live or status_from_events(st["events"])
    out = wide()
    state = view["state"] if view else st["state"]
    if view and view.get("stopping"):
        state = f"{state}, {'aborting' if view['stopping'] == 'aborted' else 'rolling back'}"
    style = EVENT_STYLE.get(st["state"], "cyan")
    out.print(f"rollout [bold]{st['rollout_id']}[/] of app {escape(name)} · [{style}]{escape(state)}[/]")
    if view:
        out.print(f"  {escape(progress_text(view))}", soft_wrap=True)
        out.print(f"  weights: {escape(weights_text(view.get('weights')) or '-')}")
        d = view.get("last_decision")
        # a decision made before the rollout ended ("step 1 in progress") no longer holds
        if d and (view["state"] in ACTIVE or d.get("action") in (ROLLBACK, PROMOTE)):
            out.print(f"  last decision: {d['action']} · {escape(d['reason'])}", soft_wrap=True)
        elif view["state"] not in ACTIVE and view.get("end_reason"):
            out.print(f"  {view['state'].replace('_', ' ')}: {escape(view['end_reason'])}", soft_wrap=True)
        if view.get("last_error"):
            out.print(f"  [red]last error:[/] {escape(view['last_error'])}", soft_wrap=True)
    if st.get("note"):
        out.print(f"  [yellow]note:[/] {escape(st['note'])}", soft_wrap=True)
    table = Table("time", "event", "detail", title="events")
    for e in st["events"]:
        style = EVENT_STYLE.get(e["event"], "")
        table.add_row(ts(e["at"]), f"[{style}]{e['event']}[/]" if style else e["event"], escape(event_text(e)))
    out.print(table)


@app.command("abort")
def rollout_abort_cmd(
    name: AppArg,
    reason: Annotated[str, typer.Option("--reason", metavar="REASON", help="Why; kept in the event.")] = "",
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Abort the app's rollout: the candidate's weight goes to 0; the event is recorded."""
    st = guard(lambda: api.rollout_abort(name, reason=reason, db=db, address=address))
    if as_json:
        emit_json(st, default=str)
        return
    console.print(
        f"aborted rollout {st['rollout_id']} of app {escape(name)}; weights: {weights_text(st.get('weights'))}"
    )
