"""Scheduler overhead: policy decision latency, live admissions per second, submit-to-running.

    python -m benchmarks.scheduler_overhead --out bench-out/scheduler

1. Decision latency (pure policies, no Ray): p50/p99 of ``Policy.decide`` with
   10, 1,000 and 10,000 pending jobs on a 1,000-node view, per policy, two ways:
   *burst*, the same snapshot decided again and again (about 15% of the GPUs free:
   every decision places and starts 100-350 jobs), and *steady*, a controller's
   decision loop (``_sched_workload.steady_latencies``: each decision applied, then
   one job finishes and one arrives; after the first decisions fill the cluster, a
   decision starts about what one finish freed, and LAS and fair_share preempt).
2. Admissions per second on a live local Ray: N jobs submitted to the controller
   actor in one call until every one holds its placement group (PG created and
   ready), against plain Ray creating the same N placement groups and waiting for
   them.
3. Submit-to-running latency: one job at a time, from submit to a task running
   inside the grant, against plain Ray (create PG, ``pg.ready()``, task in it).
4. Simulator throughput (``--sim-jobs N``, no Ray): a synthetic Philly-style
   trace of N jobs replayed on ``--sim-gpus`` GPUs (8 per node) per policy, in
   jobs replayed per second of wall time.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import bar_chart, base_parser, goal, print_table, ratio, write_results
from benchmarks._sched_workload import build_view, controller_steps, steady_latencies, team_configs


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def decision_latency(
    pending: list[int], nodes: int, samples: int, gc_freeze: bool = True, warmup: int = 1
) -> dict[str, dict[str, dict[str, float]]]:
    from rich.progress import Progress

    from raypipe.scheduler import Snapshot, available_policies, get_policy

    teams = team_configs()
    out: dict[str, dict[str, dict[str, float]]] = {}
    policies = list(available_policies())
    with Progress(transient=True) as progress:
        task = progress.add_task("decision latency", total=len(pending) * len(policies))
        for n in pending:
            cluster, running, queue = build_view(nodes, n)
            if gc_freeze:  # the view is long-lived state: keep full collections from walking it
                gc.collect()
                gc.freeze()
            for name in policies:
                policy = get_policy(name)  # one object, as a controller keeps it: its indexes persist
                for i in range(warmup):  # untimed: the first decision builds the indexes a running controller has
                    policy.decide(Snapshot(float(10_000 - warmup + i), queue, running, cluster, teams))
                times = []
                for i in range(samples):
                    snap = Snapshot(float(10_000 + i), queue, running, cluster, teams)
                    t0 = time.perf_counter()
                    policy.decide(snap)
                    times.append((time.perf_counter() - t0) * 1e3)
                out.setdefault(name, {})[str(n)] = {"p50_ms": statistics.median(times), "p99_ms": pct(times, 0.99)}
                progress.advance(task)
            gc.unfreeze()
    return out


def steady_latency(
    pending: list[int], nodes: int, decisions: int, warmup: int, gc_freeze: bool = True
) -> dict[str, dict[str, dict[str, float]]]:
    """Per policy and queue length: p50/p99 of the decisions of a controller's loop after
    ``warmup`` decisions (those fill the cluster's free capacity), and starts and
    preemptions per timed decision."""
    from rich.progress import Progress

    from raypipe.scheduler import available_policies, get_policy

    teams = team_configs()
    out: dict[str, dict[str, dict[str, float]]] = {}
    policies = list(available_policies())
    with Progress(transient=True) as progress:
        task = progress.add_task("steady decision loop", total=len(pending) * len(policies))
        for n in pending:
            for name in policies:
                times, counted = steady_latencies(
                    nodes, n, get_policy(name), teams, warmup + decisions, gc_freeze=gc_freeze
                )
                timed, acts = times[warmup:], counted[warmup:]
                out.setdefault(name, {})[str(n)] = {
                    "p50_ms": statistics.median(timed),
                    "p99_ms": pct(timed, 0.99),
                    "max_ms": max(timed),
                    "starts_per_decision": sum(a for a, _ in acts) / len(acts),
                    "preemptions_per_decision": sum(b for _, b in acts) / len(acts),
                }
                progress.advance(task)
    return out


def sim_throughput(jobs: int, gpus: int, policies: list[str]) -> dict[str, dict[str, float]]:
    """Jobs/s of the simulator replaying a synthetic ``jobs``-job trace on ``gpus`` GPUs, per policy."""
    from raypipe.scheduler.cluster_spec import ClusterSpec
    from raypipe.scheduler.simulator import simulate
    from raypipe.scheduler.traces import synthetic_philly

    trace = synthetic_philly(jobs=jobs, total_gpus=gpus, load=0.9, seed=0)
    cluster = ClusterSpec.from_flags(gpus, 8)
    out: dict[str, dict[str, float]] = {}
    for name in policies:
        t0 = time.perf_counter()
        res = simulate(trace, cluster, name)
        wall = time.perf_counter() - t0
        out[name] = {"jobs": float(jobs), "wall_s": wall, "jobs_per_s": jobs / wall, "decisions": float(res.decisions)}
    return out


def _wait_all_running(handle: Any, ids: list[str], timeout_s: float = 120.0) -> None:
    import ray

    deadline = time.time() + timeout_s
    versions = {j: -1 for j in ids}
    while time.time() < deadline:
        views = ray.get(handle.watch.remote(versions, 2.0))
        if all(v["state"] == "running" for v in views.values()):
            return
        versions = {j: v["version"] for j, v in views.items()}
    raise TimeoutError("jobs not admitted in time")


def admissions(n: int) -> dict[str, float]:
    """raypipe: submit n tiny jobs in one call -> all granted and their groups ready."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from raypipe.scheduler.client import SchedulerClient, get_controller
    from raypipe.scheduler.ray_backend import pg_from_id

    client = SchedulerClient(get_controller({"policy": "fifo"}), owner="bench")
    ids = [f"adm-{i}" for i in range(n)]
    reqs = [
        {"job_id": j, "bundles": [{"cpu": 0.001, "gpu": 0.0, "memory_mb": 0, "custom": {}}], "priority": 0, "team": "default"}
        for j in ids
    ]
    t0 = time.perf_counter()
    ray.get(client.handle.submit.remote(reqs, client.owner))
    _wait_all_running(client.handle, ids)
    views = ray.get(client.handle.poll.remote(ids))
    ray.get([pg_from_id(v["pg_id"]).ready() for v in views.values()])
    raypipe_s = time.perf_counter() - t0
    ray.get(client.release(ids))

    t0 = time.perf_counter()
    pgs = [placement_group([{"CPU": 0.001}]) for _ in range(n)]
    ray.get([pg.ready() for pg in pgs])
    plain_s = time.perf_counter() - t0
    for pg in pgs:
        remove_placement_group(pg)
    return {"jobs": n, "raypipe_s": raypipe_s, "plain_s": plain_s, "raypipe_per_s": n / raypipe_s, "plain_per_s": n / plain_s}


def submit_to_running(n: int) -> dict[str, Any]:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raypipe.resources import Resources
    from raypipe.scheduler.client import SchedulerClient, get_controller, scheduling_strategy

    @ray.remote(num_cpus=0.5)
    def started() -> float:
        return time.time()

    client = SchedulerClient(get_controller({"policy": "fifo"}), owner="bench-latency")
    ray.get(started.remote())  # warm a worker
    rp, plain = [], []
    for i in range(n):
        jid = f"lat-{i}"
        t0 = time.time()
        view = client.submit(jid, [Resources.of(cpu=0.5)])
        while view["state"] != "running":
            view = ray.get(client.watch({jid: view["version"]}, 5.0))[jid]
        t_run = ray.get(started.options(scheduling_strategy=scheduling_strategy(view["pg_id"])).remote())
        rp.append(t_run - t0)
        ray.get(client.release([jid]))

        t0 = time.time()
        pg = placement_group([{"CPU": 0.5}])
        ray.get(pg.ready())
        t_run = ray.get(started.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote())
        plain.append(t_run - t0)
        remove_placement_group(pg)
    return {
        "raypipe_p50_ms": statistics.median(rp) * 1e3,
        "raypipe_p99_ms": pct(rp, 0.99) * 1e3,
        "plain_p50_ms": statistics.median(plain) * 1e3,
        "plain_p99_ms": pct(plain, 0.99) * 1e3,
        "samples_raypipe_ms": [x * 1e3 for x in rp],
        "samples_plain_ms": [x * 1e3 for x in plain],
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000, help="nodes of the view for decision latency (default 1000)")
    p.add_argument("--pending", default="10,1000,10000", help="queue lengths (default 10,1000,10000)")
    p.add_argument("--samples", type=int, default=200, help="decisions timed per policy and queue length")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed decisions per policy and queue length first (they build the indexes a running controller keeps)",
    )
    p.add_argument("--steady-decisions", type=int, default=200, help="decisions timed per policy in the steady loop")
    p.add_argument(
        "--steady-warmup",
        type=int,
        default=150,
        help=(
            "untimed decisions first in the steady loop: they fill the free capacity, build the indexes and let "
            "LAS preempt the queue-1 jobs of the synthetic start (~100 decisions of 32 preemptions each)"
        ),
    )
    p.add_argument("--skip-steady", action="store_true", help="skip the steady decision loop")
    p.add_argument("--admissions", type=int, default=1000, help="jobs in the admissions-per-second test")
    p.add_argument("--latency-samples", type=int, default=30, help="sequential jobs in the latency test")
    p.add_argument("--skip-live", action="store_true", help="only the pure decision latency (no Ray)")
    p.add_argument("--sim-jobs", type=int, default=0, help="simulator throughput on a synthetic trace of N jobs (0: skip)")
    p.add_argument("--sim-gpus", type=int, default=1000, help="GPUs of the simulated cluster (default 1000)")
    p.add_argument("--sim-policies", default="fifo,las", help="policies the simulator part replays (default fifo,las)")
    p.add_argument("--skip-latency", action="store_true", help="skip the decision latency part")
    p.add_argument(
        "--controller", default="1000,10000",
        help="NODES,PENDING of the controller-step part (ControllerCore on an in-memory backend; '' skips it)",
    )  # fmt: skip
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the view to the cyclic GC (by default it is frozen: gen-2 pauses hit p99, not the policy)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="results.json of an earlier run (e.g. before a change): its decision latency becomes the baseline",
    )
    args = p.parse_args(argv)

    pending = [int(x) for x in args.pending.split(",")]
    lat = {} if args.skip_latency else decision_latency(
        pending, args.nodes, args.samples, gc_freeze=not args.no_gc_freeze, warmup=args.warmup
    )
    rows = [[f"{pol} @ {n} pending", v["p50_ms"], v["p99_ms"]] for pol, per in lat.items() for n, v in per.items()]
    print_table(f"burst: policy decision latency on a {args.nodes}-node view (ms)", ["policy", "p50", "p99"], rows)
    steady = {} if args.skip_latency or args.skip_steady else steady_latency(
        pending, args.nodes, args.steady_decisions, args.steady_warmup, gc_freeze=not args.no_gc_freeze
    )
    if steady:
        print_table(
            f"steady: a controller's decision loop on {args.nodes} nodes (ms)",
            ["policy", "p50", "p99", "max", "starts/decision", "preemptions/decision"],
            [
                [f"{pol} @ {n} pending", v["p50_ms"], v["p99_ms"], v["max_ms"], v["starts_per_decision"], v["preemptions_per_decision"]]
                for pol, per in steady.items()
                for n, v in per.items()
            ],
        )

    results: dict[str, Any] = {"decision_latency_ms": lat, "steady_decision_latency_ms": steady}
    baseline: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    if args.sim_jobs:
        sim = sim_throughput(args.sim_jobs, args.sim_gpus, args.sim_policies.split(","))
        results["sim_jobs_per_s"] = sim
        print_table(
            f"simulator: {args.sim_jobs} jobs on {args.sim_gpus} GPUs",
            ["policy", "jobs/s", "wall s", "decisions"],
            [[pol, v["jobs_per_s"], v["wall_s"], v["decisions"]] for pol, v in sim.items()],
        )
        sim_goals = {"fifo": 20_000.0, "las": 5_000.0}
    if args.controller:
        c_nodes, c_pending = (int(x) for x in args.controller.split(","))
        from raypipe.scheduler import available_policies

        ctl = {pol: controller_steps(c_nodes, c_pending, pol) for pol in available_policies()}
        results["controller_step_ms"] = ctl
        baseline["controller_decision_ms"] = {pol: v["decision_ms"] for pol, v in ctl.items()}
        ratios["controller_step_over_decision"] = {pol: ratio(v["step_ms"], v["decision_ms"]) for pol, v in ctl.items()}
        print_table(
            f"controller: ControllerCore with {c_pending} pending on {c_nodes} nodes (ms)",
            ["policy", "submit (each)", "step", "its decision", "step / decision"],
            [
                [pol, v["submit_ms"], v["step_ms"], v["decision_ms"], ratios["controller_step_over_decision"][pol]]
                for pol, v in ctl.items()
            ],
        )
    if args.baseline is not None and lat:
        before = json.loads(args.baseline.read_text())["results"]["decision_latency_ms"]
        baseline["decision_latency_ms"] = before
        ratios["decision_latency_ms"] = {
            pol: {
                n: {k: ratio(v[k], before[pol][n][k]) for k in ("p50_ms", "p99_ms")}
                for n, v in per.items()
                if n in before.get(pol, {})
            }
            for pol, per in lat.items()
            if pol in before
        }
        rows = [
            [f"{pol} @ {n}", before[pol][n]["p50_ms"], v["p50_ms"], before[pol][n]["p99_ms"], v["p99_ms"]]
            for pol, per in lat.items()
            for n, v in per.items()
            if n in before.get(pol, {})
        ]
        print_table(
            "decision latency against the baseline (ms)",
            ["policy @ pending", "p50 before", "p50 now", "p99 before", "p99 now"],
            rows,
            caption=str(args.baseline),
        )
    goals = {}
    if lat:
        worst_p99 = max(v[str(max(pending))]["p99_ms"] for v in lat.values())
        goals["decision_p99_ms_at_max_pending"] = goal(worst_p99, 5.0, "ms")
    if steady:
        worst_steady = max(v[str(max(pending))]["p99_ms"] for v in steady.values())
        goals["steady_decision_p99_ms_at_max_pending"] = goal(worst_steady, 5.0, "ms")
    if args.sim_jobs:
        for pol, limit in sim_goals.items():
            if pol in sim:
                goals[f"sim_jobs_per_s_{pol}"] = goal(sim[pol]["jobs_per_s"], limit, "1/s", lower_is_better=False)

    if not args.skip_live:
        import ray

        from raypipe.scheduler.client import CONTROLLER_NAME, NAMESPACE

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            adm = admissions(args.admissions)
            s2r = submit_to_running(args.latency_samples)
        finally:
            try:
                ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=True)
            except ValueError:
                pass
            ray.shutdown()
        results["admissions_per_s"] = adm["raypipe_per_s"]
        results["admissions_wall_s"] = adm["raypipe_s"]
        baseline["admissions_per_s"] = adm["plain_per_s"]
        baseline["admissions_wall_s"] = adm["plain_s"]
        results["submit_to_running_p50_ms"] = s2r["raypipe_p50_ms"]
        results["submit_to_running_p99_ms"] = s2r["raypipe_p99_ms"]
        baseline["submit_to_running_p50_ms"] = s2r["plain_p50_ms"]
        baseline["submit_to_running_p99_ms"] = s2r["plain_p99_ms"]
        ratios["admissions_per_s"] = ratio(adm["raypipe_per_s"], adm["plain_per_s"])
        ratios["submit_to_running_p50_ms"] = ratio(s2r["raypipe_p50_ms"], s2r["plain_p50_ms"])
        goals["admissions_per_s"] = goal(adm["raypipe_per_s"], 500.0, "1/s", lower_is_better=False)
        goals["submit_to_running_ratio"] = goal(ratios["submit_to_running_p50_ms"] or 0.0, 1.5, "x")
        print_table(
            "live scheduler on a local Ray (2 CPUs)",
            ["measure", "raypipe", "plain Ray", "ratio"],
            [
                [f"admissions/s ({args.admissions} jobs)", adm["raypipe_per_s"], adm["plain_per_s"], ratios["admissions_per_s"]],
                ["submit-to-running p50, ms", s2r["raypipe_p50_ms"], s2r["plain_p50_ms"], ratios["submit_to_running_p50_ms"]],
                ["submit-to-running p99, ms", s2r["raypipe_p99_ms"], s2r["plain_p99_ms"], ratio(s2r["raypipe_p99_ms"], s2r["plain_p99_ms"])],
            ],
            caption="plain Ray: the same placement groups created directly",
        )
        results["samples"] = {"raypipe_ms": s2r["samples_raypipe_ms"], "plain_ms": s2r["samples_plain_ms"]}

    for name, g in goals.items():
        print(f"goal {name}: {g['value']:.3g} {g['unit']} (limit {g['limit']:g}) -> {'met' if g['met'] else 'NOT met'}")
    path = write_results(
        args.out,
        "scheduler_overhead",
        params=vars(args) | {"out": str(args.out)},
        results=results,
        baseline=baseline,
        ratios=ratios,
        goals=goals,
    )
    if lat:
        bar_chart(
            args.out / "decision_latency.png",
            [
                {
                    "title": f"burst: decision p99 on {args.nodes} nodes",
                    "ylabel": "ms",
                    "groups": [str(n) for n in pending],
                    "series": {pol: [lat[pol][str(n)]["p99_ms"] for n in pending] for pol in lat},
                    "hline": (5.0, "goal 5 ms"),
                }
            ]
            + (
                [
                    {
                        "title": f"steady loop: decision p99 on {args.nodes} nodes",
                        "ylabel": "ms",
                        "groups": [str(n) for n in pending],
                        "series": {pol: [steady[pol][str(n)]["p99_ms"] for n in pending] for pol in steady},
                        "hline": (5.0, "goal 5 ms"),
                    }
                ]
                if steady
                else []
            ),
            title="raypipe scheduler: policy decision latency by queue length",
        )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
