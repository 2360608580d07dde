"""Benchmarks: ``bench scheduling``."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.table import Table

from raypipe import api
from raypipe._json import json_safe
from raypipe.cli.guard import guard
from raypipe.cli.options import JsonOpt
from raypipe.cli.render import console, emit_json, err_console, progress_bar, wide
from raypipe.scheduler.policies import policy_names

app = typer.Typer(
    name="bench",
    help="Benchmarks: replay job traces through raypipe's scheduling policies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: The policies ``bench scheduling`` compares unless ``--policies`` says otherwise: all registered.
DEFAULT_POLICIES = ",".join(policy_names())


@app.command("scheduling")
def bench_scheduling_cmd(
    fmt: Annotated[
        str,
        typer.Option("--format", metavar="philly|alibaba|synthetic", help="Trace format."),
    ],
    trace: Annotated[
        str | None,
        typer.Option(
            "--trace",
            metavar="PATH",
            help="Trace file (philly CSV; alibaba pod CSV or its directory). Not for synthetic.",
        ),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", metavar="N", help="Cluster GPUs (with --gpus-per-node).")
    ] = None,
    gpus_per_node: Annotated[int | None, typer.Option("--gpus-per-node", metavar="N", help="GPUs per node.")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster", metavar="FILE", help="Cluster YAML: node_groups of count, gpus, cpus, memory_mb, gpu_type."
        ),
    ] = None,
    cluster_fraction: Annotated[
        float,
        typer.Option(
            "--cluster-fraction", metavar="FRACTION", help="Keep this fraction of each node group (0-1], e.g. 0.1."
        ),
    ] = 1.0,
    policies: Annotated[
        str, typer.Option("--policies", metavar="POLICY,...", help="Comma-separated policies to compare.")
    ] = DEFAULT_POLICIES,
    mode: Annotated[
        str, typer.Option("--mode", metavar="sim|ray|both", help="sim (simulator), ray (live replay) or both.")
    ] = "sim",
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", metavar="N", help="Jobs to replay (synthetic: to generate; default 1000)."),
    ] = None,
    window_h: Annotated[
        float | None, typer.Option("--window-h", metavar="HOURS", help="Keep arrivals within HOURS of the first.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", metavar="N", help="Seed of the synthetic trace and of --sample random.")
    ] = 0,
    sample: Annotated[
        str, typer.Option("--sample", metavar="first|random", help="Which --jobs of a real trace.")
    ] = "first",
    time_scale: Annotated[
        float, typer.Option("--time-scale", metavar="FACTOR", help="Live replay: trace seconds per wall second.")
    ] = 3600.0,
    load: Annotated[
        float | None,
        typer.Option(
            "--load",
            metavar="LOAD",
            help="Synthetic: offered load (default 0.85). Real traces: rescale arrivals to it.",
        ),
    ] = None,
    round_s: Annotated[
        float, typer.Option("--round-s", metavar="SECONDS", help="Scheduling round (0: decide on every event).")
    ] = 0.0,
    restart_cost_s: Annotated[
        float,
        typer.Option("--restart-cost-s", metavar="SECONDS", help="Seconds a preempted job loses when it restarts."),
    ] = 0.0,
    spread_slowdown: Annotated[
        str | None,
        typer.Option(
            "--spread-slowdown",
            metavar="FACTOR|KEY=VALUE,...",
            help="Slowdown of a gang spanning several nodes: a factor (>= 1), or per_extra_node=F, "
            "NODES=FACTOR rows (2=1.1,4=1.3), cross_rack=F, rack_label=L. Default: the cluster YAML's, else 1.",
        ),
    ] = None,
    consolidation: Annotated[
        str | None,
        typer.Option(
            "--consolidation",
            metavar="strict|prefer|none",
            help="Gangs: strict (one node when it fits one, else whole nodes), prefer (strict, else spread), "
            "none (spread over free GPUs). Default: the cluster YAML's, else strict.",
        ),
    ] = None,
    node_choice: Annotated[
        str | None,
        typer.Option(
            "--node-choice",
            metavar="first_fit|best_fit|least_fragmenting|fgd",
            help="Which node among those that fit. Default: the cluster YAML's, else first_fit "
            "(best_fit when the trace has fractional GPUs).",
        ),
    ] = None,
    task_mix: Annotated[
        str,
        typer.Option(
            "--task-mix",
            metavar="observed|trace",
            help="fgd's task mix: observed from arrivals so far, or the whole trace's (known in advance).",
        ),
    ] = "observed",
    policy_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--policy-arg",
            metavar="POLICY.NAME=VALUE",
            help="A policy argument, typed by the policy (repeatable): las.thresholds=3250,7200, "
            "priority.preempt=true, las.max_preemptions=none.",
        ),
    ] = None,
    max_duration_s: Annotated[
        float | None, typer.Option("--max-duration-s", metavar="SECONDS", help="Cap job durations.")
    ] = None,
    durations_known: Annotated[
        bool,
        typer.Option(
            "--durations-known/--durations-unknown", metavar="", help="Tell the policies each job's duration."
        ),
    ] = False,
    skip_bad_rows: Annotated[
        bool,
        typer.Option("--skip-bad-rows", metavar="", help="Skip bad trace rows (counted) instead of failing."),
    ] = False,
    out: Annotated[
        str | None,
        typer.Option("--out", metavar="DIR", help="Directory for results.json, summary.md and PNG plots."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare scheduling policies on a job trace: JCT, makespan, utilization, fairness, lower bounds."""
    config = {
        "trace": trace,
        "format": fmt,
        "gpus": gpus,
        "gpus_per_node": gpus_per_node,
        "cluster": cluster,
        "cluster_fraction": cluster_fraction,
        "policies": [p.strip() for p in policies.split(",") if p.strip()],
        "mode": mode,
        "jobs": jobs,
        "window_h": window_h,
        "seed": seed,
        "sample": sample,
        "time_scale": time_scale,
        "load": load,
        "round_s": round_s,
        "restart_cost_s": restart_cost_s,
        "spread_slowdown": spread_slowdown,
        "consolidation": consolidation,
        "node_choice": node_choice,
        "task_mix": task_mix,
        "policy_args": list(policy_arg or []),
        "max_duration_s": max_duration_s,
        "durations_known": durations_known,
        "skip_bad_rows": skip_bad_rows,
        "out": out,
    }
    progress = progress_bar(err_console, disable=as_json)
    tasks: dict[str, Any] = {}

    def on_progress(policy: str, done: int, total: int) -> None:
        if not tasks:
            progress.start()
        if policy not in tasks:
            tasks[policy] = progress.add_task(policy, total=total)
        progress.update(tasks[policy], completed=done, total=total)

    def on_start(tr: Any, cl: Any) -> None:
        if not as_json:
            load_ = tr.offered_load(cl.total_gpus)
            err_console.print(
                f"trace {tr.meta.source} · {len(tr):,} jobs"
                + (f" · offered load {load_:.2f}" if load_ is not None else "")
                + f" · cluster {cl.num_nodes} nodes, {cl.total_gpus:g} GPUs"
            )

    def go() -> dict[str, Any]:
        try:
            return api.bench_scheduling(config, on_progress=on_progress, on_start=on_start)
        finally:
            progress.stop()

    doc = guard(go)
    if as_json:
        emit_json(json_safe(doc), allow_nan=False)
        return
    print_bench_table(doc)
    if out:
        console.print(f"results: {os.path.join(out, 'results.json')}, summary.md and plots in {out}")


def print_bench_table(doc: dict[str, Any]) -> None:
    from raypipe.bench.scheduling import fmt_value, summary_rows

    out = wide()
    table = Table(
        "policy",
        "mode",
        "avg JCT h",
        "p99 JCT h",
        "avg queue h",
        "makespan h",
        "util",
        "JCT/LB",
        "vs fifo",
        "preempt/job",
        "decide p99 ms",
        "wall s",
        title="scheduling benchmark",
    )
    h = 1 / 3600
    for name, mode, m, vs in summary_rows(doc):
        table.add_row(
            name,
            mode,
            fmt_value(m.get("avg_jct_s"), h),
            fmt_value(m.get("p99_jct_s"), h),
            fmt_value(m.get("avg_queue_s"), h),
            fmt_value(m.get("makespan_s"), h),
            fmt_value(m.get("utilization")),
            fmt_value(m.get("avg_jct_ratio_to_bound")),
            fmt_value(vs),
            fmt_value(m.get("preemptions_per_job")),
            fmt_value(m.get("decision_latency_p99_ms")),
            fmt_value(m.get("wall_s")),
        )
    out.print(table)
    pl = doc.get("options", {}).get("placement")
    if pl:
        out.print(f"placement: consolidation {pl['consolidation']}, node choice {pl['node_choice']}")
    rejected = {n: m.get("rejected") for n, m in doc["policies"].items() if m.get("rejected")}
    if rejected:
        out.print(f"[yellow]jobs rejected (can never fit the cluster):[/] {max(rejected.values())}")
    stuck = {n: m.get("unfinished") for n, m in doc["policies"].items() if m.get("unfinished")}
    if stuck:
        out.print(f"[yellow]jobs that never finished:[/] {stuck}")
