"""The runner's Prometheus metrics: stage attempts and runs, by pipeline, kind and outcome.

Drivers come and go (a run lasts minutes), and Ray exports a process's metrics every few
seconds, so a driver's own series would miss the end of its run and multiply with every
run.  Drivers therefore send what happened to one long-lived actor per cluster,
``raypipe-metrics`` (detached, no CPU, on the head node), which records it in its
:class:`~raypipe._ray.metrics.Registry` and exports it.  A run made only of cache hits never
connects to Ray: its metrics are not sent.  Nor are those of a run on the local Ray it
started itself (it ends with the run: nobody could scrape it), unless ``$RAYPIPE_METRICS=1``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from raypipe._ray.actors import get_or_create
from raypipe._ray.metrics import SECONDS_BUCKETS, MetricSpec, Registry
from raypipe.runner.events import RunResult, StageEvent
from raypipe.runner.plan import Plan
from raypipe.runner.ray_session import embedded_ray
from raypipe.runner.states import RunStatus, StageEventKind

METRICS_ACTOR = "raypipe-metrics"
_BUCKETS = (0.1, 0.5, *SECONDS_BUCKETS)

RUN_METRICS = (
    MetricSpec(
        "raypipe_stage_runs_total",
        "counter",
        "Stage attempts that ended, by outcome (succeeded, failed, retrying, cached, reused, skipped, requeued).",
        ("pipeline", "kind", "outcome"),
    ),
    MetricSpec(
        "raypipe_stage_duration_seconds",
        "histogram",
        "Seconds a stage attempt ran, from its start to its end (succeeded or failed).",
        ("pipeline", "kind", "outcome"),
        _BUCKETS,
    ),
    MetricSpec("raypipe_runs_total", "counter", "Runs that ended, by status.", ("pipeline", "status")),
    MetricSpec(
        "raypipe_run_duration_seconds", "histogram", "Seconds a run took, by status.", ("pipeline", "status"), _BUCKETS
    ),
)
#: Stage events that end an attempt (or stand for one: a cache hit), counted by outcome.
OUTCOMES = frozenset(
    {
        StageEventKind.SUCCEEDED,
        StageEventKind.FAILED,
        StageEventKind.RETRYING,
        StageEventKind.CACHED,
        StageEventKind.REUSED,
        StageEventKind.SKIPPED,
        StageEventKind.REQUEUED,
    }
)

_log = logging.getLogger(__name__)
#: An operation on the registry: (method, metric, value, tags).
Op = tuple[str, str, float, dict[str, str]]


class RunMetricsActor:
    """The actor ``raypipe-metrics``: records the drivers' operations and exports them."""

    def __init__(self) -> None:
        self.registry = Registry(RUN_METRICS)

    def record(self, ops: list[Op]) -> int:
        for method, name, value, tags in ops:
            getattr(self.registry, method)(name, value, **tags)
        return len(ops)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return self.registry.snapshot()


def metrics_actor() -> Any:
    """The cluster's ``raypipe-metrics`` actor (started if absent)."""
    return get_or_create(METRICS_ACTOR, RunMetricsActor, head=True)


class RunMetrics:
    """On the driver: a run's stage events and its end, sent to :class:`RunMetricsActor` once
    Ray is connected (never connecting Ray for it)."""

    def __init__(self, plan: Plan) -> None:
        self.pipeline = plan.config.name
        self.kinds = {name: ps.spec.kind for name, ps in plan.stages.items()}
        self.ops: list[Op] = []
        self._actor: Any = None
        self._failed = False

    def on_event(self, e: StageEvent) -> None:
        if e.status not in OUTCOMES:
            return
        tags = {"pipeline": self.pipeline, "kind": self.kinds.get(e.stage, "?"), "outcome": str(e.status)}
        self.ops.append(("inc", "raypipe_stage_runs_total", 1.0, tags))
        if e.duration_s is not None:
            self.ops.append(("observe", "raypipe_stage_duration_seconds", float(e.duration_s), tags))
        self.flush(wait=False)

    def run(self, execute: Callable[[], RunResult]) -> RunResult:
        """``execute()``, its outcome recorded (a stop or an interruption too)."""
        try:
            result = execute()
        except BaseException as e:
            stopped = isinstance(e, KeyboardInterrupt) or type(e).__name__ == "RunStopped"
            self._ended(RunStatus.STOPPED if stopped else RunStatus.INTERRUPTED, None)
            raise
        self._ended(result.status, result.wall_s)
        return result

    def _ended(self, status: str, wall_s: float | None) -> None:
        tags = {"pipeline": self.pipeline, "status": str(status)}
        self.ops.append(("inc", "raypipe_runs_total", 1.0, tags))
        if wall_s is not None:
            self.ops.append(("observe", "raypipe_run_duration_seconds", float(wall_s), tags))
        self.flush(wait=True)

    def flush(self, wait: bool) -> None:
        """Send what is buffered when Ray is connected (``wait``: until the actor has it, a few
        seconds at most); metrics never fail a run."""
        ray = sys.modules.get("ray")
        if not self.ops or self._failed or ray is None or not ray.is_initialized():
            return
        if embedded_ray() and os.environ.get("RAYPIPE_METRICS", "") != "1":
            self.ops = []
            return
        ops, self.ops = self.ops, []
        try:
            if self._actor is None:
                self._actor = metrics_actor()
            ref = self._actor.record.remote(ops)
            if wait:
                ray.get(ref, timeout=15)
        except Exception as e:  # noqa: BLE001 - the run's result stands without its metrics
            self._failed = True
            _log.debug("raypipe: run metrics not sent: %s: %s", type(e).__name__, e)
