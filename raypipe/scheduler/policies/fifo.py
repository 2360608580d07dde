"""First-in, first-out with strict head-of-line blocking."""

from __future__ import annotations

from raypipe.scheduler.context import DecisionContext
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Decision, Snapshot


class FifoPolicy(Policy):
    """Start jobs in submit order; the first job that does not fit blocks everyone behind it.

    Two kinds of jobs are skipped instead of blocking the queue (they wait for
    something other than cluster capacity): jobs whose team is at its quota,
    and jobs that can never run (see ``placement.feasible_ever``).
    """

    name = "fifo"

    def decide(self, snapshot: Snapshot) -> Decision:
        """Start the longest prefix of the queue that fits."""
        ctx = DecisionContext(snapshot, index=self.index())
        queue = snapshot.queue
        idx = ctx.start_in_order(queue)
        if idx < len(queue):
            job = queue[idx]
            ctx.wait_many(queue[idx + 1 :], f"behind head-of-line job {job.job_id} (fifo)")
            ctx.wait(job, f"{ctx.explain(job)} (head of line, fifo)")
        return ctx.build()
