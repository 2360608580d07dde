"""Tiresias-style discretized two-dimensional least-attained-service (2D-LAS)."""

from __future__ import annotations

import bisect
import functools
import math
import operator
from collections.abc import Sequence

from raypipe.scheduler.context import DEFAULT_MAX_PREEMPTIONS, DecisionContext, check_max_preemptions
from raypipe.scheduler.errors import PolicyConfigError
from raypipe.scheduler.index import DecisionIndex, VictimOrder
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Blocked, BlockKind, Decision, JobRequest, RunningJob, Snapshot

_ATTAINED = operator.attrgetter("attained_service")


class LasPolicy(Policy):
    """Discretized 2D-LAS (Tiresias): less attained GPU-service, higher priority.

    Attained service is GPU-seconds: ``attained_service`` of a waiting job, plus
    ``gpus * (now - start_time)`` for a running one.  ``thresholds`` (strictly
    increasing GPU-seconds) split jobs into ``len(thresholds) + 1`` queues;
    queue 0 (least service) is served first, FIFO (submit time) within a queue.
    A running job is demoted as its service crosses a threshold.

    The policy is work-conserving: a job that does not fit is skipped and later
    jobs may start.  With ``preempt=True`` (default) a waiting job that does not
    fit preempts running preemptible jobs from strictly lower-priority queues:
    the lowest queue first, then the most recently started; only as many as
    needed, and only if that makes it fit.

    Starvation guard (``starve_factor``, off by default as in Tiresias's
    default configuration): a waiting job whose wait since it last entered the
    queue (``now - wait_start``) exceeds ``starve_factor`` times its last run
    time (``last_run_s``, or ``attained_service / gpus`` when unknown) goes back
    to queue 0.

    ``max_preemptions`` (default 32, ``None``: unlimited) caps how many jobs
    one decision preempts: a job whose room would need more victims than are
    left in the budget waits, and the next decision (the controller runs one
    on every event and tick) continues, so preemption proceeds in bounded
    rounds, as in Tiresias, instead of one storm that stops half the cluster.
    """

    name = "las"

    def __init__(
        self,
        thresholds: Sequence[float] = (3600.0,),
        preempt: bool = True,
        starve_factor: float | None = None,
        max_preemptions: int | None = DEFAULT_MAX_PREEMPTIONS,
    ) -> None:
        ts = tuple(float(t) for t in thresholds)
        if any(t <= 0 for t in ts) or any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
            raise PolicyConfigError(f"las: thresholds must be positive and strictly increasing, got {list(ts)}")
        if starve_factor is not None and not starve_factor > 0:
            raise PolicyConfigError(f"las: starve_factor must be > 0 or None, got {starve_factor}")
        self.thresholds = ts
        self.preempt = bool(preempt)
        self.starve_factor = starve_factor
        self.max_preemptions = check_max_preemptions("las", max_preemptions)

    def __repr__(self) -> str:
        return (
            f"LasPolicy(thresholds={list(self.thresholds)}, preempt={self.preempt}, starve_factor={self.starve_factor}, "
            f"max_preemptions={self.max_preemptions})"
        )

    def queue_of(self, attained: float) -> int:
        """The queue index for an attained service (0 = highest priority)."""
        return bisect.bisect_right(self.thresholds, attained)

    def _waiting_queue(self, job: JobRequest, now: float) -> int:
        ts = self.thresholds
        q = 0 if not ts or job.attained_service < ts[0] else self.queue_of(job.attained_service)
        if q and self.starve_factor is not None:
            ran = job.last_run_s if job.last_run_s > 0 else (job.attained_service / job.gpus if job.gpus > 0 else 0.0)
            if ran > 0 and now - job.wait_start > self.starve_factor * ran:
                return 0
        return q

    def _buckets(self, queue: Sequence[JobRequest], now: float) -> dict[int, Sequence[JobRequest]]:
        """Waiting jobs by queue index, each in submit order."""
        if self.starve_factor is None:  # the queue depends on attained service only: C-level passes
            qs = list(map(functools.partial(bisect.bisect_right, self.thresholds), map(_ATTAINED, queue)))
        else:
            qs = [self._waiting_queue(job, now) for job in queue]
        levels = set(qs)
        if len(levels) == 1:
            return {levels.pop(): queue}
        lists: dict[int, list[JobRequest]] = {q: [] for q in sorted(levels)}
        for job, q in zip(queue, qs, strict=True):  # one pass (a pass per queue costs more)
            lists[q].append(job)
        buckets: dict[int, Sequence[JobRequest]] = {}
        buckets.update(lists)
        return buckets

    def _victims(
        self, running: Sequence[RunningJob], now: float, index: DecisionIndex
    ) -> tuple[VictimOrder, list[int]]:
        """Preemptible running jobs, lowest queue first, then most recently started; and -queue of each.

        Kept in ``index`` across decisions (see :class:`~raypipe.scheduler.index.DecisionIndex`).
        """
        queue_of = self.queue_of

        def key(r: RunningJob) -> tuple[int, float, str, RunningJob] | None:
            req = r.request
            if not req.preemptible:
                return None
            start = r.start_time
            attained = req.attained_service + req.demand_vec[1] * (now - start if now > start else 0.0)
            return (-queue_of(attained), -start, r.job_id, r)

        ts = self.thresholds
        n = len(ts)

        def changes_at(r: RunningJob) -> float:  # when its attained service may reach the next threshold
            req = r.request
            g = req.demand_vec[1]
            if g <= 0:
                return math.inf
            start = r.start_time
            a = req.attained_service + g * (now - start if now > start else 0.0)
            q = bisect.bisect_right(ts, a)
            if q >= n:
                return math.inf
            t = max(now, start) + (ts[q] - a) / g
            return t - 1e-6 * max(1.0, abs(t))  # early, never late: float error cannot skip a crossing

        order = index.running_order("las", running, now, ts, key, changes_at)
        return order, [k[0] for k in order.keys]

    def decide(self, snapshot: Snapshot) -> Decision:
        """Serve queues in order; preempt lower queues for a job that does not fit."""
        index = self.index()
        ctx = DecisionContext(snapshot, max_preemptions=self.max_preemptions, index=index)
        now = snapshot.now
        buckets = self._buckets(snapshot.queue, now)
        victims: list[RunningJob] | None = None
        victims_all: list[RunningJob] = []
        neg_q: list[int] = []
        preempt_failed: set[tuple[str, int]] = set()
        for q in sorted(buckets):
            memo = ctx.memo(team_usage=False)  # why a job of this queue, of a team and shape, did not start
            for job in ctx.unanswered(buckets[q], memo):  # submit order within a queue (the snapshot's order)
                blocked = ctx.quota_block(job)
                if blocked is not None:
                    ctx.wait(job, blocked.text)
                    memo.remember(job, blocked)
                    continue
                placement = ctx.ledger.place(job)
                if placement is None and self.preempt and (job.shape_key, q) not in preempt_failed:
                    if victims is None:
                        order, neg_q = self._victims(snapshot.running, now, index)
                        victims = victims_all = order.victims
                        ctx.victim_order(victims_all)
                        ctx.keep_victim_index(order)
                    cut = bisect.bisect_left(neg_q, -q)  # victims in queues strictly below q
                    if cut and ctx.preempt_room() and ctx.never_block(job) is None:
                        placement = ctx.try_preempt_for(job, victims_all[:cut])
                    if placement is None:
                        preempt_failed.add((job.shape_key, q))
                if placement is not None:
                    ctx.start(job, placement)
                    continue
                why = ctx.never_block(job) or Blocked(BlockKind.NO_CAPACITY, f"{ctx.explain(job)} (las queue {q})")
                ctx.wait(job, why.text)
                memo.remember(job, why)
        return ctx.build()
