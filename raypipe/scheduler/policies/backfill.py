"""EASY backfilling: FIFO with a reservation for the head and safe jumps ahead of it."""

from __future__ import annotations

import math

from raypipe.scheduler.context import DecisionContext
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Blocked, BlockKind, Decision, JobRequest, Placement, Snapshot


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
        ctx = DecisionContext(snapshot, index=self.index())
        queue = snapshot.queue
        now = snapshot.now
        head_idx = ctx.start_in_order(queue)
        if head_idx == len(queue):
            return ctx.build()
        head = queue[head_idx]

        shadow_time, shadow = self._reservation(ctx, head)
        when = f"t={shadow_time:g}" if math.isfinite(shadow_time) else "an unknown time"
        ctx.wait(head, f"{ctx.explain(head)}; next in line, reserved from {when} (backfill)")
        reserved = Blocked(BlockKind.NO_CAPACITY, f"reserved for {head.job_id} until {when} (backfill)")
        b_failed: set[str] = set()
        finite = math.isfinite(shadow_time)
        # why a job of a team and shape did not start, one memo per value of `ends_before`
        memos = (ctx.memo(), ctx.memo())
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
    def _reservation(ctx: DecisionContext, head: JobRequest) -> tuple[float, FreeLedger | None]:
        """(shadow time, capacity left at that time after the head's reservation).

        The ledger is ``None`` when the head cannot be placed even once every
        running job has finished (then nothing may use capacity past now
        except via rule (a), which needs a finite shadow time).
        """
        future = ctx.ledger.copy()
        now = ctx.now
        inf = math.inf
        events: list[tuple[float, str, JobRequest, Placement]] = []
        append = events.append
        preempted = ctx.preempted
        for r in ctx.snapshot.running:
            if preempted and r.job_id in preempted:
                continue
            end = r.expected_end
            if end is None:
                req = r.request
                dur = req.duration_estimate_s
                append((inf if dur is None else max(now, r.start_time + dur), r.job_id, req, r.placement))
            else:
                append((max(now, end), r.job_id, r.request, r.placement))
        for req, pl, end in ctx.started_now():  # started earlier in this decision
            append((inf if end is None else max(now, end), req.job_id, req, pl))
        events.sort()  # by (time, job id); ids are unique, so requests are never compared
        one_node = future.one_node(head)
        idx = 0
        n_events = len(events)
        placement: Placement | None = None
        shadow_time = math.inf
        while idx < n_events:
            t = events[idx][0]
            stop = idx
            while stop < n_events and events[stop][0] == t:
                stop += 1
            touched = future.release_many((e[2], e[3]) for e in events[idx:stop])
            idx = stop
            if one_node and not any(future.fits_on(head, n) for n in touched):
                continue  # only released nodes can newly hold a one-node gang
            placement = future.place(head)
            if placement is not None:
                shadow_time = t
                break
        if placement is None:
            return math.inf, None
        future.allocate(head, placement)
        return shadow_time, future
