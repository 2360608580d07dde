"""Placement: every consolidation and node choice on job traces, and fragmentation as in Weng et al. (ATC'23).

    python -m benchmarks.placement --out bench-out/placement

1. ``sweep``: ``raypipe bench scheduling`` (simulator) with each ``--consolidation``
   (strict, prefer, none) and ``--node-choice`` (first_fit, best_fit,
   least_fragmenting, fgd) on
   a. a Philly-style trace (raypipe's synthetic Philly-like generator: 1/2/4/8-GPU
      gangs, Poisson arrivals at ``--philly-load``) on ``--philly-gpus`` GPUs in
      4-GPU nodes, and
   b. Alibaba's GPU trace v2023 (``--alibaba DIR``) on ``--alibaba-fraction`` of its
      node list, arrivals rescaled to ``--alibaba-load``, durations capped at
      ``--alibaba-max-duration-s``;
   with a spread slowdown of ``--spread-slowdown`` (default ``per_extra_node=0.1``).
   Metrics per policy: avg/p99 JCT, makespan, utilization, fragmentation, the share
   of GPUs unallocated while jobs wait and the share of jobs that waited; one PNG
   per trace and policy.
2. ``fill``: the paper's experiment on Alibaba's FULL node list (1,213 nodes, 6,212
   GPUs): pods drawn at random (with replacement, seeded) from the trace, GPU and
   CPU-only ones, arrive one by one and never leave; each is placed at once with
   the shared placement code (``FreeLedger``, consolidation strict) or fails.
   Recorded as the arrived GPU requests grow to ``--fill-to`` x the cluster's GPUs:
   the share of GPUs left unallocated, the share of pods that failed and the
   fragmentation rate (expected unusable free GPUs for the trace's task mix over
   free GPUs).  With departures (the dynamic replay) the full node list never fills:
   the trace's GPU pods together ask for 5,485 of its 6,212 GPUs.

Both compare with ``best_fit`` (the scheduler's node choice before these settings).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO_ROOT, bar_chart, base_parser, print_table, ratio, write_results

DEFAULT_ALIBABA = REPO_ROOT.parent / "shared" / "data" / "traces" / "alibaba-gpu-v2023"
CONSOLIDATIONS = ("strict", "prefer", "none")
NODE_CHOICES = ("first_fit", "best_fit", "least_fragmenting", "fgd")
SHOWN = (
    "avg_jct_s",
    "p99_jct_s",
    "makespan_s",
    "utilization",
    "fragmentation_gpu_s",
    "unallocated_share_waiting",
    "jobs_waited_share",
    "preemptions_per_job",
    "decision_latency_p99_ms",
    "wall_s",
)


# ----------------------------------------------------------------------------- sweep


def sweep(name: str, config: dict[str, Any], out: Path, policies: list[str]) -> dict[str, Any]:
    """Every consolidation x node choice of one trace; {combo: {policy: metrics}}."""
    from raypipe.bench.scheduling import run_scheduling_benchmark

    rows: dict[str, Any] = {}
    for cons in CONSOLIDATIONS:
        for choice in NODE_CHOICES:
            combo = f"{cons}/{choice}"
            t0 = time.perf_counter()
            doc = run_scheduling_benchmark(
                {
                    **config,
                    "policies": policies,
                    "consolidation": cons,
                    "node_choice": choice,
                    "out": str(out / name / f"{cons}-{choice}"),
                }
            )
            rows[combo] = {p: {k: m[k] for k in SHOWN} for p, m in doc["policies"].items()}
            print(f"{name} {combo}: {time.perf_counter() - t0:.1f}s", flush=True)
    h = 1 / 3600
    for policy in policies:
        table = []
        for combo, pol in rows.items():
            m = pol[policy]
            table.append(
                [
                    combo,
                    _scaled(m["avg_jct_s"], h),
                    _scaled(m["p99_jct_s"], h),
                    _scaled(m["makespan_s"], h),
                    m["utilization"],
                    _scaled(m["fragmentation_gpu_s"], h),
                    m["unallocated_share_waiting"],
                    m["jobs_waited_share"],
                ]
            )
        print_table(
            f"{name}: {policy}",
            [
                "consolidation/node choice",
                "avg JCT h",
                "p99 JCT h",
                "makespan h",
                "util",
                "frag GPU-h",
                "idle|wait",
                "waited",
            ],
            table,
        )
        bar_chart(
            out / f"{name}_{policy}.png",
            [
                _panel(rows, policy, "avg_jct_s", "avg JCT (h)", h),
                _panel(rows, policy, "p99_jct_s", "p99 JCT (h)", h),
                _panel(rows, policy, "utilization", "GPU utilization", 1.0),
                _panel(rows, policy, "unallocated_share_waiting", "GPU share idle while jobs wait", 1.0),
            ],
            title=f"{name}, {policy}: consolidation x node choice",
        )
    return rows


def _scaled(v: float | None, k: float) -> float | None:
    return None if v is None else v * k


def _panel(rows: dict[str, Any], policy: str, key: str, label: str, k: float) -> dict[str, Any]:
    series: dict[str, list[float]] = {}
    for cons in CONSOLIDATIONS:
        series[cons] = [(rows[f"{cons}/{c}"][policy][key] or 0.0) * k for c in NODE_CHOICES]
    return {"title": label, "ylabel": label, "groups": list(NODE_CHOICES), "series": series}


# ----------------------------------------------------------------------------- fill


def fill(alibaba: Path, fill_to: float, seed: int, step: float) -> dict[str, Any]:
    """The paper's arrival-only experiment on the full node list, for each node choice (strict)."""
    from raypipe.bench.options import trace_task_mix
    from raypipe.scheduler import vec
    from raypipe.scheduler.cluster_spec import ClusterSpec
    from raypipe.scheduler.fragmentation import TaskMix, TaskMixTracker
    from raypipe.scheduler.placement import FreeLedger
    from raypipe.scheduler.placement_settings import PlacementSettings
    from raypipe.scheduler.simulator import job_request
    from raypipe.scheduler.traces.alibaba import load_alibaba

    cluster = ClusterSpec.from_alibaba_nodes(alibaba)
    nodes = cluster.nodes()
    ids = [n.node_id for n in nodes]
    total = cluster.total_gpus
    trace = load_alibaba(alibaba, include_cpu_only=True)
    pods = [job_request(j, duration_known=False) for j in trace.jobs]
    rng = random.Random(seed)
    order: list[int] = []
    arrived = 0.0
    while arrived < fill_to * total:
        i = rng.randrange(len(pods))
        order.append(i)
        arrived += pods[i].gpus
    given = trace_task_mix(trace)
    measure = TaskMix.from_entries(given)  # the fragmentation rate is measured with the trace's mix
    variants = [
        ("first_fit", "first_fit", None),
        ("best_fit", "best_fit", None),
        ("least_fragmenting", "least_fragmenting", None),
        ("fgd (observed mix)", "fgd", None),
        ("fgd (trace mix)", "fgd", given),
    ]
    marks = [round(step * k, 6) for k in range(1, int(fill_to / step + 1e-9) + 1)]
    curves: dict[str, Any] = {}
    for label, choice, mix in variants:
        settings = PlacementSettings(consolidation="strict", node_choice=choice, task_mix=mix)
        tracker = TaskMixTracker(settings)
        ledger = FreeLedger(nodes)
        t0 = time.perf_counter()
        arrived = 0.0
        failed = failed_gpu = 0
        pts: list[dict[str, float]] = []
        m = 0
        for n, i in enumerate(order, 1):
            req = pods[i]
            tracker.observe(req)
            ledger.configure(settings, tracker.mix)
            p = ledger.place(req)
            if p is None:
                failed += 1
                failed_gpu += req.gpus > vec.EPS
            else:
                ledger.allocate(req, p)
            arrived += req.gpus
            while m < len(marks) and arrived >= marks[m] * total - 1e-9:
                free = [ledger.free_vec(nid) for nid in ids]
                idle = sum(f[1] for f in free)
                frag = sum(
                    measure.node_fragmentation(f, ledger.total_vec(nid), ledger.labels_of(nid))
                    for f, nid in zip(free, ids, strict=True)
                )
                pts.append(
                    {
                        "arrived": marks[m],
                        "unallocated_share": idle / total,
                        "failed_share": failed / n,
                        "frag_rate": frag / idle if idle > vec.EPS else 0.0,
                    }
                )
                m += 1
        curves[label] = {"points": pts, "pods": len(order), "failed": failed, "wall_s": time.perf_counter() - t0}
        print(f"fill {label}: {curves[label]['wall_s']:.1f}s, {failed} of {len(order)} pods failed", flush=True)
    return {
        "nodes": cluster.num_nodes,
        "total_gpus": total,
        "pods_in_trace": len(pods),
        "pods_drawn": len(order),
        "seed": seed,
        "task_mix_kinds": len(given),
        "curves": curves,
    }


def _fill_table(result: dict[str, Any], at: tuple[float, ...]) -> tuple[list[str], list[list[Any]]]:
    curves = result["curves"]
    base = {p["arrived"]: p for p in curves["best_fit"]["points"]}
    cols = ["node choice"]
    for a in at:
        cols += [f"unalloc @{a:.0%}", f"vs best_fit @{a:.0%}"]
    cols += ["failed pods @100%"]
    rows = []
    for label, c in curves.items():
        pts = {p["arrived"]: p for p in c["points"]}
        row: list[Any] = [label]
        for a in at:
            p, b = pts.get(a), base.get(a)
            row += [p and p["unallocated_share"], p and b and ratio(p["unallocated_share"], b["unallocated_share"])]
        row.append(pts.get(1.0, {}).get("failed_share"))
        rows.append(row)
    return cols, rows


def _fill_plot(out: Path, result: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for label, c in result["curves"].items():
        xs = [p["arrived"] * 100 for p in c["points"]]
        axes[0].plot(xs, [p["unallocated_share"] * 100 for p in c["points"]], label=label)
        axes[1].plot(xs, [p["frag_rate"] * 100 for p in c["points"]], label=label)
        axes[2].plot(xs, [p["failed_share"] * 100 for p in c["points"]], label=label)
    for ax, t in zip(
        axes, ("unallocated GPUs (%)", "fragmentation rate (% of free GPUs)", "failed pods (%)"), strict=True
    ):
        ax.set_xlabel("arrived GPU requests (% of cluster GPUs)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Alibaba v2023, full node list ({result['total_gpus']:g} GPUs), pods never leave, consolidation strict"
    )
    fig.tight_layout()
    path = out / "fill_alibaba.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--policies", default="fifo,backfill,las", help="policies of the sweep (default fifo,backfill,las)")
    p.add_argument("--philly-jobs", type=int, default=2000)
    p.add_argument("--philly-gpus", type=int, default=64, help="GPUs of the Philly-style cluster (4 per node)")
    p.add_argument("--philly-load", type=float, default=0.9)
    p.add_argument("--alibaba", type=Path, default=DEFAULT_ALIBABA, help="Alibaba v2023 trace directory")
    p.add_argument("--alibaba-fraction", type=float, default=0.1)
    p.add_argument("--alibaba-load", type=float, default=0.85)
    p.add_argument("--alibaba-max-duration-s", type=float, default=86400.0)
    p.add_argument("--spread-slowdown", default="per_extra_node=0.1")
    p.add_argument("--fill-to", type=float, default=1.3, help="fill: arrived GPU requests, x cluster GPUs")
    p.add_argument("--fill-step", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-fill", action="store_true")
    args = p.parse_args(argv)
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    have_alibaba = (args.alibaba / "openb_pod_list_default.csv").exists()
    if not have_alibaba:
        print(f"alibaba: skipped, no trace at {args.alibaba} (pass --alibaba DIR)")
    sections: dict[str, Any] = {}
    if not args.skip_sweep:
        scenarios = {
            "philly": {
                "format": "synthetic",
                "jobs": args.philly_jobs,
                "gpus": args.philly_gpus,
                "gpus_per_node": 4,
                "load": args.philly_load,
                "seed": args.seed,
                "spread_slowdown": args.spread_slowdown,
            }
        }
        if have_alibaba:
            scenarios["alibaba"] = {
                "format": "alibaba",
                "trace": str(args.alibaba),
                "cluster_fraction": args.alibaba_fraction,
                "load": args.alibaba_load,
                "max_duration_s": args.alibaba_max_duration_s,
                "spread_slowdown": args.spread_slowdown,
            }
        sections["sweep"] = {
            "spread_slowdown": args.spread_slowdown,
            "scenarios": {name: sweep(name, cfg, args.out, policies) for name, cfg in scenarios.items()},
        }
    if not args.skip_fill and have_alibaba:
        result = fill(args.alibaba, args.fill_to, args.seed, args.fill_step)
        cols, rows = _fill_table(result, (1.0, 1.1, 1.2, 1.3))
        print_table("fill: Alibaba v2023, full node list, strict, pods never leave", cols, rows)
        best = {p_["arrived"]: p_["unallocated_share"] for p_ in result["curves"]["best_fit"]["points"]}
        result["vs_best_fit"] = {
            label: {
                f"{p_['arrived']:.2f}": ratio(p_["unallocated_share"], best.get(p_["arrived"], 0.0))
                for p_ in c["points"]
                if p_["arrived"] >= 1.0 - 1e-9
            }
            for label, c in result["curves"].items()
        }
        _fill_plot(args.out, result)
        sections["fill"] = result
    path = write_results(args.out, "placement", **sections)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
