"""A/B statistics: ``ab report``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import AddressOpt, AppArg, DbOpt, JsonOpt
from raypipe.cli.render import VERDICT_STYLE, emit_json, num, p_text, pct, wide

app = typer.Typer(
    name="ab",
    help="A/B statistics of a deployed app's variants.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command("report")
def ab_report_cmd(
    name: AppArg,
    since: Annotated[
        float | None,
        typer.Option("--since", metavar="SECONDS", help="Only the last SECONDS of traffic (default: all)."),
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(
            "--control", metavar="VARIANT", help="Variant A (default: the production variant, else the oldest)."
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", metavar="auto|conversion|mean_outcome", help="Outcome metric.")
    ] = "auto",
    min_samples: Annotated[
        int,
        typer.Option("--min-samples", metavar="N", help="Per variant, before any verdict (outcomes / requests)."),
    ] = 100,
    alpha: Annotated[float, typer.Option("--alpha", metavar="ALPHA", help="Significance level (two-sided).")] = 0.05,
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-variant counts, outcome (conversion or mean), error rate and latency; each variant
    against the control with a confidence interval and a verdict; the sample-ratio-mismatch check."""
    rep = guard(
        lambda: api.ab_report(
            name,
            since_s=since,
            control=control,
            metric=metric,
            min_samples=min_samples,
            alpha=alpha,
            db=db,
            address=address,
        )
    )
    if as_json:
        emit_json(rep, allow_nan=False)
        return
    out = wide()
    window = f"last {rep['window_s']:g} s" if rep.get("window_s") else "all traffic"
    out.print(
        f"app [bold]{escape(name)}[/] · model {escape(str(rep.get('model')))} · {window} · control {rep.get('control')}"
    )
    outcome_label = "conversion" if rep["metric"] == "conversion" else "mean outcome"
    table = Table(
        "variant", "weight", "requests", "errors", "error rate", "p50 ms", "p99 ms", "outcomes", outcome_label
    )
    for v in rep["variants"]:
        value = pct(v["conversion"]) if rep["metric"] == "conversion" else num(v["mean_outcome"])
        table.add_row(
            v["label"],
            f"{rep['weights'].get(v['label'], 0):g}%",
            f"{v['requests']:,}",
            f"{v['errors']:,}",
            pct(v["error_rate"]),
            num(v["p50_ms"]),
            num(v["p99_ms"]),
            f"{v['outcomes']:,}",
            value,
        )
    out.print(table)
    conf = f"{1 - rep['alpha']:.0%}"
    comp = Table("B vs A", "metric", "A", "B", "B - A", f"{conf} interval", "p", "verdict", title="comparisons")
    for c in rep["comparisons"]:
        for m in (c["outcome"], c["error_rate"]):
            as_pct = m["metric"] != "mean_outcome"
            show = pct if as_pct else num
            r = m["result"] or {}
            diff = pct(r.get("diff"), sign="+") if as_pct else num(r.get("diff"), "+.4g")
            verdict = m["verdict"]
            if verdict == "insufficient data":
                more = ", ".join(f"{k} +{n}" for k, n in m["needed"].items() if n)
                verdict = f"insufficient data (needs {more})"
            style = VERDICT_STYLE.get(m["verdict"], "dim")
            ci = f"[{show(r.get('ci_low'))}, {show(r.get('ci_high'))}]" if r else "-"
            comp.add_row(
                f"{c['b']} vs {c['a']}",
                m["metric"],
                show(m["value_a"]),
                show(m["value_b"]),
                diff if r else "-",
                ci,
                p_text(r.get("p_value")) if r else "-",
                f"[{style}]{escape(verdict)}[/]",
            )
    if rep["comparisons"]:
        out.print(comp)
    s = rep["srm"]
    if s["p_value"] is not None:
        flag = "[red]MISMATCH[/]" if s["flagged"] else "[green]ok[/]"
        out.print(
            f"sample ratio: chi-square {s['chi2']:.3g}, df {s['df']}, p {p_text(s['p_value'])} "
            f"(flagged below {s['threshold']:g}) {flag}"
        )
    for w in rep["warnings"]:
        out.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
