"""Builders for hand-made snapshots used by the scheduler unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raypipe.resources import Resources
from raypipe.scheduler.types import ClusterView, JobRequest, NodeView, Placement, RunningJob, Snapshot, TeamConfig


def gpu(n: float, cpu: float = 0.0) -> Resources:
    """A bundle of ``n`` GPUs (and optionally CPUs)."""
    return Resources.of(cpu=cpu, gpu=n)


def node(
    node_id: str,
    gpus: float = 8,
    free: float | None = None,
    labels: Mapping[str, str] | None = None,
    alive: bool = True,
) -> NodeView:
    """A GPU-only node with ``free`` GPUs free (default: all)."""
    return NodeView(node_id, gpu(gpus), gpu(gpus if free is None else free), labels or {}, alive)


def job(job_id: str, *gpus: float, t: float = 0.0, **kw: object) -> JobRequest:
    """A job with one bundle per GPU count, submitted at ``t``."""
    return JobRequest(job_id, tuple(gpu(g) for g in gpus or (1,)), submit_time=t, **kw)  # type: ignore[arg-type]


def running(
    req: JobRequest, *nodes: str, start: float = 0.0, end: float | None = None, borrowed: bool = False
) -> RunningJob:
    """``req`` running with bundle i on ``nodes[i]``."""
    return RunningJob(req, Placement(tuple(nodes)), start_time=start, expected_end=end, borrowed=borrowed)


def snapshot(
    nodes: Sequence[NodeView],
    queue: Sequence[JobRequest] = (),
    run: Sequence[RunningJob] = (),
    now: float = 0.0,
    teams: Mapping[str, TeamConfig] | None = None,
) -> Snapshot:
    """A snapshot whose node ``free`` already excludes ``run`` (``nodes`` give totals)."""
    cluster = ClusterView(tuple(NodeView(n.node_id, n.total, n.total, n.labels, n.alive) for n in nodes))
    base = ClusterView(tuple(nodes))
    for r in run:
        cluster = cluster.with_allocation(r.placement, r.request.bundles)
    # honour explicit free values given by the caller when smaller than totals
    merged = tuple(
        NodeView(c.node_id, c.total, c.free if b.free == b.total else b.free, c.labels, c.alive)
        for c, b in zip(cluster.nodes, base.nodes, strict=True)
    )
    return Snapshot(now=now, queue=tuple(queue), running=tuple(run), cluster=ClusterView(merged), teams=teams or {})
