"""EASY backfilling: FIFO with a reservation for the head and safe jumps ahead of it."""

from __future__ import annotations

import math

from raypipe.scheduler._context import DecisionContext
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Decision, JobRequest, Placement, Snapshot


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
        ctx = DecisionContext(snapshot)
        queue = snapshot.queue
        now = snapshot.now
        head: JobRequest | None = None
        head_idx = len(queue)
        for idx, job in enumerate(queue):
            blocked = ctx.quota_block(job)
            if blocked is not None:
                ctx.wait(job, blocked)
                continue
            placement = ctx.ledger.place(job)
            if placement is not None:
                ctx.start(job, placement)
                continue
            never = ctx.never_reason(job)
            if never is not None:
                ctx.wait(job, never)
                continue
            head, head_idx = job, idx
            break
        if head is None:
            return ctx.build()

        shadow_time, shadow = self._reservation(ctx, head)
        when = f"t={shadow_time:g}" if math.isfinite(shadow_time) else "an unknown time"
        ctx.wait(head, f"{ctx.explain(head)}; next in line, reserved from {when} (backfill)")
        reserved = f"reserved for {head.job_id} until {when} (backfill)"
        b_failed: set[str] = set()
        finite = math.isfinite(shadow_time)
        for job in queue[head_idx + 1 :]:
            blocked = ctx.quota_block(job)
            if blocked is not None:
                ctx.wait(job, blocked)
                continue
            dur = job.duration_estimate_s
            ends_before = finite and dur is not None and now + dur <= shadow_time
            if not ends_before and job.shape_key in b_failed:
                ctx.wait(job, reserved)
                continue
            placement = ctx.ledger.place(job)
            if placement is None:
                never = ctx.never_reason(job)
                ctx.wait(job, never if never is not None else ctx.explain(job))
                continue
            if ends_before:
                ctx.start(job, placement)
                continue
            if shadow is not None and shadow.can_allocate(job, placement):
                shadow.allocate(job, placement)
                ctx.start(job, placement)
                continue
            b_failed.add(job.shape_key)
            ctx.wait(job, reserved)
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
        events = sorted(
            (
                (now if end is not None and end < now else (end if end is not None else math.inf), req.job_id, req, pl)
                for req, pl, end in ctx.running_now()
            ),
            key=lambda e: (e[0], e[1]),
        )
        one_node = len(head.bundles) == 1 or head.strategy == "STRICT_PACK"
        idx = 0
        placement: Placement | None = None
        shadow_time = math.inf
        while idx < len(events):
            t = events[idx][0]
            touched: set[str] = set()
            while idx < len(events) and events[idx][0] == t:
                _, _, req, pl = events[idx]
                future.release(req, pl)
                touched.update(pl.bundle_nodes)
                idx += 1
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
