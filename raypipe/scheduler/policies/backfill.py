"""EASY backfilling: FIFO with a reservation for the head and safe jumps ahead of it."""

from __future__ import annotations

import bisect
import math
from typing import Any

from raypipe.scheduler.context import DecisionContext
from raypipe.scheduler.index import DecisionIndex
from raypipe.scheduler.placement import FreeLedger, bundle_sums
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Blocked, BlockKind, Decision, JobRequest, Placement, RunningJob, Snapshot


class BackfillPolicy(Policy):
    """EASY backfill.

    1. Start jobs in submit order while they fit (quota-blocked and
       never-runnable jobs are skipped, as in FIFO).
    2. The first job that does not fit is the head.  Its reservation (shadow
       time) is found by releasing running jobs in order of their end
       estimate (``expected_end``, else ``start_time + duration_estimate_s``;
       overdue jobs count as ending now) until the head can be placed.  Jobs
       with an unknown end count as ending at infinity.
    3. A later job may start now only if it fits now AND either

       a. it has a duration estimate and ``now + estimate <= shadow time``
          (it is gone before the head starts), or
       b. its placement also fits what will be left at the shadow time after
          the head's reserved placement (it uses only capacity the head will
          not need).

       When the shadow time is infinite only (b) applies, against the cluster
       with every running job finished: no backfill delays the head.
    """

    name = "backfill"

    def decide(self, snapshot: Snapshot) -> Decision:
        """FIFO starts, then backfill behind the head's reservation."""
        index = self.index()
        ctx = DecisionContext(snapshot, index=index)
        queue = snapshot.queue
        now = snapshot.now
        head_idx = ctx.start_in_order(queue)
        if head_idx == len(queue):
            return ctx.build()
        head = queue[head_idx]

        shadow_time, shadow = self._reservation(ctx, head, index)
        when = f"t={shadow_time:g}" if math.isfinite(shadow_time) else "an unknown time"
        ctx.wait(head, f"{ctx.explain(head)}; next in line, reserved from {when} (backfill)")
        reserved = Blocked(BlockKind.NO_CAPACITY, f"reserved for {head.job_id} until {when} (backfill)")
        b_failed: set[str] = set()
        finite = math.isfinite(shadow_time)
        # why a job of a team and shape did not start, one memo per value of `ends_before`
        memos = (ctx.memo(team_usage=False), ctx.memo(team_usage=False))  # no team shares in the reasons
        rest = queue[head_idx + 1 :]
        if finite:  # which memo: 1 when the job ends before the shadow time (rule a)
            which = [1 if (d := j.duration_estimate_s) is not None and now + d <= shadow_time else 0 for j in rest]
        else:
            which = [0] * len(rest)
        for job in ctx.unanswered(rest, memos, which):  # jobs their memo answers get its reason
            dur = job.duration_estimate_s
            ends_before = finite and dur is not None and now + dur <= shadow_time
            memo = memos[ends_before]
            blocked = ctx.quota_block(job)
            if blocked is not None:
                ctx.wait(job, blocked.text)
                memo.remember(job, blocked)
                continue
            if not ends_before and job.shape_key in b_failed:
                ctx.wait(job, reserved.text)
                memo.remember(job, reserved)
                continue
            placement = ctx.ledger.place(job)
            if placement is None:
                why = ctx.never_block(job) or Blocked(BlockKind.NO_CAPACITY, ctx.explain(job))
                ctx.wait(job, why.text)
                memo.remember(job, why)
                continue
            if ends_before:
                ctx.start(job, placement)
                continue
            if shadow is not None and shadow.can_allocate(job, placement):
                shadow.allocate(job, placement)
                ctx.start(job, placement)
                continue
            b_failed.add(job.shape_key)
            ctx.wait(job, reserved.text)
            memo.remember(job, reserved)
        return ctx.build()

    @staticmethod
    def _reservation(
        ctx: DecisionContext, head: JobRequest, index: DecisionIndex | None = None
    ) -> tuple[float, FreeLedger | None]:
        """(shadow time, capacity left at that time after the head's reservation).

        Running jobs are released in order of their end estimate (kept sorted
        across decisions in ``index``; overdue jobs end now, unknown ends at
        infinity), together with the jobs started earlier in this decision,
        all jobs ending at the same time at once, until the head can be placed
        (``index=None``: the order is sorted from scratch).
        The ledger is ``None`` when the head cannot be placed even once every
        running job has finished (then nothing may use capacity past now
        except via rule (a), which needs a finite shadow time).
        """
        future = ctx.ledger.copy()
        now = ctx.now
        inf = math.inf
        order = (index or DecisionIndex()).running_order(
            "backfill-ends", ctx.snapshot.running, now, None, _end_key, _never_changes, per_node=False
        )
        keys = order.keys
        preempted = ctx.preempted
        started = sorted(  # (time, job id, request, placement); ids are unique, requests never compared
            (inf if end is None else max(now, end), req.job_id, req, pl) for req, pl, end in ctx.started_now()
        )
        one_node = future.one_node(head)
        pos, n = 0, len(keys)
        spos, ns = 0, len(started)
        placement: Placement | None = None
        shadow_time = inf
        while pos < n or spos < ns:
            t = min(max(now, keys[pos][0]) if pos < n else inf, started[spos][0] if spos < ns else inf)
            stop = bisect.bisect_right(keys, t, lo=pos, key=_first)  # every job ending by t (overdue: now)
            batch = [(k[-1].request, k[-1].placement) for k in keys[pos:stop]] if pos or preempted else None
            if batch is None:  # a prefix of the kept order: its sums per node are kept with it
                gains = order.derived.get(("sums", stop))
                if gains is None:
                    gains = order.derived["sums", stop] = bundle_sums((k[-1].request, k[-1].placement) for k in keys[:stop])
                batch = []
            else:
                gains = {}
                if preempted:
                    batch = [(req, pl) for req, pl in batch if req.job_id not in preempted]
            pos = stop
            while spos < ns and started[spos][0] == t:
                batch.append((started[spos][2], started[spos][3]))
                spos += 1
            touched = future.release_sums(gains) if gains else set()
            if batch:
                touched |= future.release_many(batch)
            if one_node and not any(future.fits_on(head, nid) for nid in touched):
                continue  # only released nodes can newly hold a one-node gang
            placement = future.place(head)
            if placement is not None:
                shadow_time = t
                break
        if placement is None:
            return inf, None
        future.allocate(head, placement)
        return shadow_time, future


def _end_key(r: RunningJob) -> tuple[float, str, RunningJob]:
    """A running job's place in the end order: (end estimate, ``inf`` when unknown; job id; the job)."""
    end = r.end_estimate
    return (math.inf if end is None else end, r.job_id, r)


def _never_changes(_: RunningJob) -> float:
    return math.inf


def _first(entry: tuple[Any, ...]) -> Any:
    return entry[0]
