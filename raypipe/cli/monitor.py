"""Drift monitoring: ``monitor status``."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import AddressOpt, AppArg, DbOpt, JsonOpt
from raypipe.cli.render import console, drift_test_text, drifted_text, emit_json, num, ts

app = typer.Typer(
    name="monitor",
    help="Drift monitoring of deployed apps: live traffic against the training data's profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command("status")
def monitor_status_cmd(name: AppArg, db: DbOpt = None, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """Per variant and feature: method, statistic, p-value or PSI against its threshold, whether
    it drifted in the last window and how often over the kept windows; then the drift events."""
    st = guard(lambda: api.monitor_status(name, db=db, address=address))
    if as_json:
        emit_json(st, allow_nan=False)
        return
    spec = st["spec"]
    window = " or ".join(
        w
        for w in (
            f"{spec['window_rows']} rows" if spec.get("window_rows") else "",
            f"{spec['window_seconds']:g} s" if spec.get("window_seconds") else "",
        )
        if w
    )
    correction = " / features tested (Bonferroni)" if spec.get("correction") == "bonferroni" else ""
    console.print(
        f"app [bold]{escape(name)}[/] · {len(st['reference']['features'])} features · windows of {window} · "
        f"sampling {spec['sample_rate']:.0%}"
    )
    console.print(
        f"  drift: p < {spec['alpha']:g}{correction} or psi > {spec['psi_threshold']:g} (unless set per feature); "
        f"dataset drift at >= {spec['drift_share']:.0%} of features; an event after {spec['consecutive']} "
        "drifted windows in a row",
        soft_wrap=True,
    )
    if not st["variants"]:
        console.print("  no traffic logged yet")
    for vname, v in st["variants"].items():
        print_variant(vname, v)
    print_events(st["events"])
    inflight = (st.get("debounce") or {}).get("in_flight")
    if inflight:
        console.print(f"retraining in flight for event {inflight.get('event_id')} since {ts(inflight.get('since'))}")
    if st.get("last_error"):
        console.print(f"[yellow]last error:[/] {escape(st['last_error'])}", soft_wrap=True)


def print_variant(vname: str, v: dict[str, Any]) -> None:
    """One variant: its last window's verdict, a row per feature (and the prediction), its performance."""
    last = v.get("last_window")
    verdict = "-"
    if last:
        share = last.get("drift_share")
        verdict = (
            f"last window {last['window_id']}: {last['drifted_features']}/{last['tested']} features drifted"
            + (f" ({share:.0%})" if share is not None else "")
            + (" · [red]dataset drifted[/]" if last["dataset_drifted"] else " · [green]dataset ok[/]")
        )
    console.print(
        f"\nvariant [bold]{escape(vname)}[/]: {v['rows_logged']:,} rows logged, {v['rows_sampled']:,} sampled · "
        f"{v['windows']} windows · open window {v['open_window']['rows']:,} rows · {verdict}",
        soft_wrap=True,
    )
    recent = v["recent_windows"]
    table = Table("feature", "method", "statistic", "test", "psi", "last window", f"drifted (last {recent})")
    for fname, f in v["features"].items():
        table.add_row(
            escape(fname),
            f["method"],
            num(f.get("statistic"), ".3g"),
            drift_test_text(f),
            num(f.get("psi"), ".3g"),
            drifted_text(f.get("drifted")),
            f"{f['drift_count']}/{recent}",
        )
    p = v.get("prediction") or {}
    if p.get("method"):
        table.add_row(
            "[italic](prediction)[/]",
            p["method"],
            num(p.get("statistic"), ".3g"),
            drift_test_text(p),
            num(p.get("psi"), ".3g"),
            drifted_text(p.get("drifted")),
            f"{p.get('drift_count', 0)}/{recent}",
        )
    console.print(table)
    perf = v.get("performance") or {}
    lp = perf.get("last")
    if perf.get("metric") and (lp or perf.get("labels_in_window")):
        text = f"performance ({perf['metric']}, reference {num(perf.get('reference'))}): "
        if lp:
            text += f"last labelled window {num(lp.get('value'))} on {lp['n']} labels, "
            text += "[red]drifted[/]" if lp.get("drifted") else ("[green]ok[/]" if lp.get("drifted") is False else "-")
        text += f" · {perf['labels_in_window']} labels in the open window"
        console.print(text, soft_wrap=True)


def print_events(events: list[dict[str, Any]]) -> None:
    """The drift events, or that there are none."""
    if not events:
        console.print("no drift events")
        return
    table = Table("id", "time", "variant", "kind", "windows", "trigger", "detail", title="drift events")
    for e in events:
        if e["kind"] == "performance_drift":
            pr = e.get("performance") or {}
            detail = f"{pr.get('metric')} {num(pr.get('value'))} vs {num(pr.get('reference'))}"
        else:
            detail = ", ".join(e.get("drifted_features") or []) or ", ".join(e.get("signals") or [])
        table.add_row(
            str(e["event_id"]),
            ts(e["at"]),
            escape(e["variant"]),
            e["kind"],
            ",".join(str(w) for w in e["windows"]),
            "[red]yes[/]" if e["trigger"] else "no",
            escape(detail if e["trigger"] else f"{detail} ({e['note']})"),
        )
    console.print(table)
