"""A synthetic scheduling workload for decision-latency measurements.

A cluster of ``n_nodes`` nodes (8 GPU, 64 CPU, 512 GB each; a quarter H100,
the rest A100), about 85% of GPUs held by running jobs, and ``n_pending`` queued
jobs of mixed gang shapes across four teams.  Seeded, so every run times the
same snapshot.
"""

from __future__ import annotations

import random

from raypipe.resources import Resources
from raypipe.scheduler import ClusterView, JobRequest, NodeView, Placement, RunningJob

TEAMS = ("research", "prod", "infra", "default")
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
