"""Scheduling: raypipe's policies on job traces in the simulator, against FIFO and lower bounds.

    python -m benchmarks.scheduling --out bench-out/scheduling

1. Synthetic Philly-like traces (Poisson arrivals at load 0.85, Gavel's Philly-derived
   durations and 1/2/4/8-GPU gangs), ``--synthetic-jobs`` jobs on clusters of each of
   ``--synthetic-gpus`` GPUs (8 per node), every policy.
2. Alibaba's GPU cluster trace v2023 (``--alibaba DIR``, default
   ``../shared/data/traces/alibaba-gpu-v2023``; skipped with a message when absent) on
   ``--alibaba-fraction`` of its heterogeneous node list, arrivals rescaled to
   ``--alibaba-load`` and durations capped at ``--alibaba-max-duration-s``, every policy.
3. Simulator speed: ``--big-jobs`` synthetic jobs on ``--big-gpus`` GPUs under ``fifo``.

The baseline of 1 and 2 is strict FIFO in the same simulator on the same trace; every
policy is also compared with the lower bound on average JCT (see
``raypipe/scheduler/metrics.py``).  Each scenario's own ``raypipe bench scheduling``
output (results.json, summary.md, plots) goes to ``DIR/<scenario>/``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO_ROOT, base_parser, goal, print_table, ratio, write_results
from raypipe.scheduler.policies import policy_names

SHOWN = (
    "avg_jct_s",
    "p50_jct_s",
    "p99_jct_s",
    "avg_queue_s",
    "makespan_s",
    "utilization",
    "fragmentation_gpu_s",
    "preemptions_per_job",
    "ftf_worst",
    "jct_lower_bound_s",
    "avg_jct_ratio_to_bound",
    "makespan_ratio_to_bound",
    "decision_latency_p50_ms",
    "decision_latency_p99_ms",
    "wall_s",
    "rejected",
    "unfinished",
)
DEFAULT_ALIBABA = REPO_ROOT.parent / "shared" / "data" / "traces" / "alibaba-gpu-v2023"


def run_scenario(name: str, config: dict[str, Any], out: Path) -> dict[str, Any]:
    from rich.progress import Progress

    from raypipe.bench.scheduling import run_scheduling_benchmark

    tasks: dict[str, Any] = {}
    with Progress(transient=True) as progress:

        def on_progress(policy: str, done: int, total: int) -> None:
            if policy not in tasks:
                tasks[policy] = progress.add_task(f"{name}: {policy}", total=total)
            progress.update(tasks[policy], completed=done)

        doc = run_scheduling_benchmark({**config, "out": str(out / name)}, on_progress=on_progress)
    pol = doc["policies"]
    h = 1 / 3600
    rows = []
    fifo = pol.get("fifo", {}).get("avg_jct_s")
    for p, m in pol.items():
        rows.append(
            [
                p,
                m["avg_jct_s"] * h if m["avg_jct_s"] is not None else None,
                m["p99_jct_s"] * h if m["p99_jct_s"] is not None else None,
                m["avg_queue_s"] * h if m["avg_queue_s"] is not None else None,
                m["utilization"],
                m["avg_jct_ratio_to_bound"],
                ratio(m["avg_jct_s"], fifo) if m["avg_jct_s"] is not None and fifo else None,
                m["preemptions_per_job"],
                m["decision_latency_p99_ms"],
                m["wall_s"],
            ]
        )
    tr, cl = doc["trace"], doc["cluster"]
    lb = next((m["jct_lower_bound_s"] for m in pol.values() if m["jct_lower_bound_s"] is not None), None)
    print_table(
        f"{name}: {tr['jobs']:,} jobs, offered load {tr['offered_load']:.2f}, {cl['nodes']} nodes / {cl['total_gpus']:g} GPUs",
        ["policy", "avg JCT h", "p99 JCT h", "avg queue h", "util", "JCT / LB", "vs fifo", "preempt/job", "decide p99 ms", "wall s"],
        rows,
        caption=f"LB: lower bound on avg JCT = {lb * h:.3g} h; baseline: fifo" if lb is not None else None,
    )
    return doc


def big_fifo(jobs: int, gpus: int, seed: int) -> dict[str, Any]:
    from raypipe.scheduler.cluster_spec import ClusterSpec
    from raypipe.scheduler.metrics import summarize
    from raypipe.scheduler.simulator import simulate
    from raypipe.scheduler.traces import synthetic_philly

    t0 = time.perf_counter()
    trace = synthetic_philly(jobs=jobs, total_gpus=gpus, load=0.85, seed=seed)
    gen_s = time.perf_counter() - t0
    cluster = ClusterSpec.from_flags(gpus, 8)
    t0 = time.perf_counter()
    result = simulate(trace, cluster, "fifo", timer=time.perf_counter)
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = summarize(result)
    metrics_s = time.perf_counter() - t0
    return {
        "jobs": jobs,
        "gpus": gpus,
        "nodes": cluster.num_nodes,
        "sim_wall_s": sim_s,
        "trace_generation_s": gen_s,
        "metrics_s": metrics_s,
        "decisions": result.decisions,
        "decisions_per_s": result.decisions / sim_s if sim_s else None,
        "decision_latency_p50_ms": m["decision_latency_p50_ms"],
        "decision_latency_p99_ms": m["decision_latency_p99_ms"],
        "avg_jct_s": m["avg_jct_s"],
        "avg_jct_ratio_to_bound": m["avg_jct_ratio_to_bound"],
        "utilization": m["utilization"],
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--policies", default=",".join(policy_names()), help="comma-separated policies")
    p.add_argument("--synthetic-jobs", type=int, default=3000, help="jobs of each synthetic trace (default 3000)")
    p.add_argument("--synthetic-gpus", default="16,32,64", help="cluster sizes for the synthetic trace (8 GPUs/node)")
    p.add_argument("--load", type=float, default=0.85, help="offered load of the synthetic traces (default 0.85)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic traces")
    p.add_argument("--alibaba", type=Path, default=DEFAULT_ALIBABA, help="Alibaba v2023 trace directory")
    p.add_argument("--alibaba-fraction", type=float, default=0.1, help="fraction of Alibaba's nodes (default 0.1)")
    p.add_argument("--alibaba-load", type=float, default=0.85, help="rescale Alibaba arrivals to this load")
    p.add_argument("--alibaba-max-duration-s", type=float, default=86400.0, help="cap Alibaba pod durations")
    p.add_argument("--alibaba-jobs", type=int, default=None, help="first N Alibaba pods (default: all)")
    p.add_argument("--big-jobs", type=int, default=100_000, help="jobs of the simulator-speed run")
    p.add_argument("--big-gpus", type=int, default=1000, help="GPUs of the simulator-speed run")
    p.add_argument("--skip-alibaba", action="store_true")
    p.add_argument("--skip-big", action="store_true")
    args = p.parse_args(argv)
    if args.big_gpus % 8:
        p.error(f"--big-gpus must be a multiple of 8 (GPUs per node), got {args.big_gpus}")
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]

    scenarios: dict[str, dict[str, Any]] = {}
    for gpus in [int(x) for x in args.synthetic_gpus.split(",") if x.strip()]:
        scenarios[f"synthetic_{gpus}gpu"] = {
            "format": "synthetic",
            "gpus": gpus,
            "gpus_per_node": 8,
            "jobs": args.synthetic_jobs,
            "load": args.load,
            "seed": args.seed,
            "policies": policies,
        }
    if args.skip_alibaba:
        print("alibaba: skipped (--skip-alibaba)")
    elif not (args.alibaba / "openb_pod_list_default.csv").exists():
        print(f"alibaba: skipped, no trace at {args.alibaba} (pass --alibaba DIR)")
    else:
        scenarios["alibaba"] = {
            "format": "alibaba",
            "trace": str(args.alibaba),
            "cluster_fraction": args.alibaba_fraction,
            "load": args.alibaba_load,
            "max_duration_s": args.alibaba_max_duration_s,
            "jobs": args.alibaba_jobs,
            "policies": policies,
        }

    results: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    docs: dict[str, Any] = {}
    for name, cfg in scenarios.items():
        doc = run_scenario(name, cfg, args.out)
        docs[name] = doc
        pol = doc["policies"]
        results[name] = {
            "trace": {k: doc["trace"][k] for k in ("jobs", "offered_load", "mean_duration_s", "span_s")},
            "cluster": {k: doc["cluster"][k] for k in ("nodes", "total_gpus")},
            "policies": {p_: {k: m[k] for k in SHOWN} for p_, m in pol.items()},
            "best_policy": doc["best_policy"],
        }
        if "fifo" in pol:
            baseline[name] = {k: pol["fifo"][k] for k in SHOWN}
            fifo_jct = pol["fifo"]["avg_jct_s"]
            ratios[name] = {
                p_: {"avg_jct": ratio(m["avg_jct_s"], fifo_jct), "makespan": ratio(m["makespan_s"], pol["fifo"]["makespan_s"])}
                for p_, m in pol.items()
                if m["avg_jct_s"] is not None and fifo_jct is not None
            }
            best = doc["best_policy"]
            if best is not None and doc.get("best_vs_fifo_avg_jct") is not None:
                goals[f"{name}_best_vs_fifo_avg_jct"] = goal(doc["best_vs_fifo_avg_jct"], 0.5, "x")
                goals[f"{name}_best_vs_lower_bound_avg_jct"] = goal(pol[best]["avg_jct_ratio_to_bound"], 2.0, "x")

    if not args.skip_big:
        from rich.console import Console

        with Console(stderr=True).status(f"simulator speed: {args.big_jobs:,} jobs on {args.big_gpus:,} GPUs, fifo"):
            big = big_fifo(args.big_jobs, args.big_gpus, args.seed)
        results["sim_speed_fifo"] = big
        goals["sim_speed_fifo_wall_s"] = goal(big["sim_wall_s"], 60.0, "s")
        print_table(
            "simulator speed (fifo)",
            ["jobs", "GPUs", "sim wall s", "decisions/s", "decide p50 ms", "decide p99 ms", "trace gen s", "metrics s"],
            [
                [
                    big["jobs"],
                    big["gpus"],
                    big["sim_wall_s"],
                    big["decisions_per_s"],
                    big["decision_latency_p50_ms"],
                    big["decision_latency_p99_ms"],
                    big["trace_generation_s"],
                    big["metrics_s"],
                ]
            ],
        )

    for name, g in goals.items():
        print(f"goal {name}: {g['value']:.3g} {g['unit']} (limit {g['limit']:g}) -> {'met' if g['met'] else 'NOT met'}")
    path = write_results(
        args.out,
        "scheduling",
        params=vars(args) | {"out": str(args.out), "alibaba": str(args.alibaba)},
        results=results,
        baseline=baseline,
        ratios=ratios,
        goals=goals,
        scenarios=docs,
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
