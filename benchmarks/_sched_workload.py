"""A synthetic scheduling workload for decision-latency measurements.

A cluster of ``n_nodes`` nodes (8 GPU, 64 CPU, 512 GB each; a quarter H100,
the rest A100), about 85% of GPUs held by running jobs, and ``n_pending`` queued
jobs of mixed gang shapes across four teams.  Seeded, so every run times the
same snapshot.
"""

from __future__ import annotations

import bisect
import gc
import operator
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from raypipe.resources import Resources
from raypipe.scheduler import ClusterView, JobRequest, NodeView, Placement, Policy, RunningJob, Snapshot, TeamConfig
from raypipe.scheduler.lifecycle import requeued_request
from raypipe.scheduler.types import per_node

_SUBMIT = operator.attrgetter("submit_time")

TEAMS = ("research", "prod", "infra", "default")


def team_configs() -> dict[str, TeamConfig]:
    """The teams' configs the latency benchmarks decide with: a GPU quota for one team, a weight
    and a priority for another (so quota checks, fair shares and team priorities all run)."""
    return {"research": TeamConfig(quota=Resources.of(gpu=3000)), "prod": TeamConfig(weight=2.0, priority=1)}
SHAPES = ((1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8), (2, 4))  # (bundles, GPUs per bundle)


def build_view(n_nodes: int, n_pending: int, seed: int = 0) -> tuple[ClusterView, tuple[RunningJob, ...], tuple[JobRequest, ...]]:
    rng = random.Random(seed)
    total = Resources.of(cpu=64, gpu=8, memory_mb=512_000)
    free = {f"node-{i:04d}": [64.0, 8.0, 512_000.0] for i in range(n_nodes)}
    labels = {f"node-{i:04d}": {"gpu_type": "A100" if i % 4 else "H100"} for i in range(n_nodes)}
    running: list[RunningJob] = []
    k = 0
    for nid, f in free.items():
        while f[1] >= 1 and rng.random() < 0.85:
            g = min(f[1], float(rng.choice((1, 2, 4, 8))))
            req = JobRequest(
                f"r{k}",
                (Resources.of(cpu=4 * g, gpu=g, memory_mb=32_000 * g),),
                submit_time=-1000.0,
                team=rng.choice(TEAMS),
                duration_estimate_s=rng.choice((None, 600.0, 3600.0)),
                attained_service=rng.random() * 20_000,
                priority=rng.randint(0, 3),
            )
            running.append(RunningJob(req, Placement((nid,)), start_time=-rng.random() * 5000))
            f[0] -= 4 * g
            f[1] -= g
            f[2] -= 32_000 * g
            k += 1
    nodes = tuple(NodeView(nid, total, Resources.of(cpu=f[0], gpu=f[1], memory_mb=f[2]), labels[nid]) for nid, f in free.items())
    queue = []
    for j in range(n_pending):
        nb, g = rng.choice(SHAPES)
        queue.append(
            JobRequest(
                f"q{j}",
                (Resources.of(cpu=4 * g, gpu=g, memory_mb=32_000 * g),) * nb,
                submit_time=float(j),
                team=rng.choice(TEAMS),
                priority=rng.randint(0, 3),
                duration_estimate_s=rng.choice((None, 300.0, 3600.0)),
                label_selector={"gpu_type": "H100"} if rng.random() < 0.1 else {},
                strategy=rng.choice(("PACK", "PACK", "SPREAD", "STRICT_PACK")) if nb > 1 else "PACK",
            )
        )
    return ClusterView(nodes), tuple(running), tuple(queue)


def _new_job(rng: random.Random, job_id: str, now: float) -> JobRequest:
    nb, g = rng.choice(SHAPES)
    return JobRequest(
        job_id,
        (Resources.of(cpu=4 * g, gpu=g, memory_mb=32_000 * g),) * nb,
        submit_time=now,
        team=rng.choice(TEAMS),
        priority=rng.randint(0, 3),
        duration_estimate_s=rng.choice((None, 300.0, 3600.0)),
        label_selector={"gpu_type": "H100"} if rng.random() < 0.1 else {},
        strategy=rng.choice(("PACK", "PACK", "SPREAD", "STRICT_PACK")) if nb > 1 else "PACK",
    )


def steady_latencies(
    n_nodes: int, n_pending: int, policy: Policy, teams: Mapping[str, TeamConfig],
    decisions: int, churn: int = 1, seed: int = 0, clock: Callable[[], float] = time.perf_counter,
    gc_freeze: bool = True,
) -> tuple[list[float], list[tuple[int, int]]]:
    """Decision latencies (ms) of ``policy`` in a controller's decision loop, and (starts, preemptions) of each decision.

    From ``build_view``, each decision is applied (starts take capacity and leave the
    queue, preempted jobs go back to it), then ``churn`` running jobs finish and
    ``churn`` new jobs arrive, one second later, and the next decision is timed.  The
    view is updated as the simulator's is (only changed nodes replaced,
    ``ClusterView.replace_nodes``) and unchanged jobs keep their objects, so the
    indexes a policy keeps across decisions see what they would live.  The first
    decisions fill the cluster's free capacity (hundreds of starts each); after that
    each decision starts about what the churn freed.  ``gc_freeze``: the starting view is
    frozen out of the cyclic GC (as in ``decision_latency``) and the GC runs between
    decisions (untimed, every 20) instead of inside them: a gen-2 pause lands on whichever
    decision it hits and measures the process's heap, not the policy.
    """
    rng = random.Random(seed + 1)
    cluster, running0, queue0 = build_view(n_nodes, n_pending, seed)
    nodes = {n.node_id: n for n in cluster.nodes}
    running = {r.request.job_id: r for r in running0}
    queue = list(queue0)
    now, k = 10_000.0, 0
    times: list[float] = []
    acts: list[tuple[int, int]] = []
    if gc_freeze:
        gc.collect()
        gc.freeze()
        gc.disable()

    def give(nid: str, amount: Resources, sign: int) -> None:
        n = nodes[nid]
        nodes[nid] = replace(n, free=n.free + amount if sign > 0 else n.free - amount)
        changed.add(nid)

    try:
        for i in range(decisions):
            if gc_freeze and i % 20 == 19:
                gc.collect()
            changed: set[str] = set()
            snap = Snapshot(now, tuple(queue), tuple(running.values()), cluster, teams)
            t0 = clock()
            decision = policy.decide(snap)
            times.append((clock() - t0) * 1e3)
            acts.append((len(decision.starts), len(decision.preemptions)))
            for jid in decision.preemptions:
                r = running.pop(jid)
                for nid, part in per_node(r.request.bundles, r.placement).items():
                    give(nid, part, +1)
                req = requeued_request(r.request, now, r.start_time)
                bisect.insort(queue, req, key=_SUBMIT)
            if decision.starts:
                by_id = {q.job_id: q for q in queue}
                for jid, placement in decision.starts:
                    req = by_id[jid]
                    for nid, part in per_node(req.bundles, placement).items():
                        give(nid, part, -1)
                    running[jid] = RunningJob(req, placement, now)
                started = set(decision.started_ids)
                queue = [q for q in queue if q.job_id not in started]
            now += 1.0
            for jid in rng.sample(sorted(running), min(churn, len(running))):
                r = running.pop(jid)
                for nid, part in per_node(r.request.bundles, r.placement).items():
                    give(nid, part, +1)
            for _ in range(churn):
                queue.append(_new_job(rng, f"n{k}", now))
                k += 1
            cluster = cluster.replace_nodes([nodes[nid] for nid in changed], handoff=True)
    finally:
        if gc_freeze:
            gc.enable()
            gc.unfreeze()
    return times, acts


class MemoryBackend:
    """A ``Backend`` in memory (no Ray): fixed nodes, placement groups by name, state kept in dicts.
    For timing ``ControllerCore`` itself."""

    def __init__(self, nodes: list[Any]) -> None:
        self._nodes = nodes
        self.pgs: dict[str, tuple[str, tuple[Resources, ...], tuple[str, ...]]] = {}
        self.saved: dict[str, bytes] = {}
        self.settings: bytes | None = None

    def nodes(self) -> list[Any]:
        return list(self._nodes)

    def create_pg(self, name: str, bundles: Any, node_ids: Any) -> str:
        pid = f"pg{len(self.pgs):06d}"
        self.pgs[pid] = (name, tuple(bundles), tuple(node_ids))
        return pid

    def remove_pg(self, name: str) -> None:
        self.pgs.pop(name, None)

    def live_pgs(self) -> set[str]:
        return set(self.pgs)

    def dead_drivers(self) -> set[str]:
        return set()

    def load_state(self) -> tuple[bytes | None, dict[str, bytes]]:
        return self.settings, dict(self.saved)

    def save_settings(self, blob: bytes) -> None:
        self.settings = blob

    def save_jobs(self, jobs: Mapping[str, bytes | None]) -> None:
        for k, v in jobs.items():
            if v is None:
                self.saved.pop(k, None)
            else:
                self.saved[k] = v

    def request_resources(self, bundles: Any, label_selectors: Any) -> None:
        return None


def controller_steps(n_nodes: int, n_pending: int, policy: str, steps: int = 5) -> dict[str, float]:
    """``ControllerCore`` on an in-memory backend: ``n_nodes`` 8-GPU nodes two-thirds held by
    4-GPU jobs, then ``n_pending`` submissions (timed one by one) and ``steps`` scheduling steps
    (each after one running job ends and the clock moves 1 s).  Returns the mean submission and
    the median step in ms, with the median policy decision inside a step (``core.decision_s``)."""
    import statistics

    from raypipe.scheduler.backend import NodeInfo
    from raypipe.scheduler.controller import ControllerCore, SchedulerSettings

    clock = [1000.0]
    core = ControllerCore(
        MemoryBackend([NodeInfo(f"node-{i:04d}", Resources.of(cpu=64, gpu=8)) for i in range(n_nodes)]),
        SchedulerSettings(policy=policy),
        lambda: clock[0],
    )
    core.refresh_nodes()
    rng = random.Random(0)
    for i in range(n_nodes * 4 // 3):
        core.submit({"job_id": f"r{i}", "bundles": [{"gpu": 4, "cpu": 8}]}, "bench@1")
    core.schedule()
    t0 = time.perf_counter()
    for i in range(n_pending):
        g = rng.choice((1, 2, 4, 8))
        core.submit({"job_id": f"q{i}", "bundles": [{"gpu": g, "cpu": g}] * rng.choice((1, 1, 2)), "team": rng.choice(TEAMS)}, "bench@1")
    submit_ms = (time.perf_counter() - t0) / max(1, n_pending) * 1e3
    times = []
    for k in range(steps):
        clock[0] += 1.0
        core.release(f"r{k}")
        t0 = time.perf_counter()
        core.schedule()
        times.append((time.perf_counter() - t0) * 1e3)
    decisions = [s * 1e3 for s in core.decision_s[-steps:]]
    return {"submit_ms": submit_ms, "step_ms": statistics.median(times), "decision_ms": statistics.median(decisions)}
