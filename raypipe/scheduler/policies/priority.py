"""Priority order with aging and optional preemption."""

from __future__ import annotations

import bisect
import math

from raypipe.scheduler.context import DEFAULT_MAX_PREEMPTIONS, DecisionContext, check_max_preemptions
from raypipe.scheduler.errors import PolicyConfigError
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Decision, JobRequest, RunningJob, Snapshot


class PriorityPolicy(Policy):
    """Highest effective priority first, with aging so nothing starves.

    ``effective = job.priority + team.priority + (now - submit_time) / aging_s``.
    Ties go to the older job, then the job id.

    Head-of-line blocking at effective priority: the highest job that does not
    fit blocks every job below it.  Skipping past it would let a stream of small
    jobs starve a big one forever; aging then guarantees every job eventually
    reaches the head.  Jobs at their team quota and jobs that can never run are
    skipped (they do not wait for capacity).

    With ``preempt=True``, a blocked head may preempt running ``preemptible``
    jobs whose BASE priority (job + team, no aging) is strictly lower than its
    own base priority: lowest priority first, then the most recently started
    (least work lost); only as many as needed, and only if that makes it fit.
    Comparing base priorities (not aged ones) keeps a long-waiting low-priority
    job from preempting a high-priority one, and a requeued victim from
    preempting back (no thrashing).  ``max_preemptions`` (default 32,
    ``None``: unlimited) caps the preemptions of one decision; a job that would
    need more victims than are left in the budget blocks as if none could help,
    and later decisions continue (bounded rounds instead of one storm).
    """

    name = "priority"

    def __init__(
        self,
        aging_s: float = 600.0,
        preempt: bool = False,
        max_preemptions: int | None = DEFAULT_MAX_PREEMPTIONS,
    ) -> None:
        if not aging_s > 0:
            raise PolicyConfigError(f"priority: aging_s must be > 0, got {aging_s}")
        self.aging_s = float(aging_s)
        self.preempt = bool(preempt)
        self.max_preemptions = check_max_preemptions("priority", max_preemptions)

    def __repr__(self) -> str:
        return (
            f"PriorityPolicy(aging_s={self.aging_s:g}, preempt={self.preempt}, max_preemptions={self.max_preemptions})"
        )

    def decide(self, snapshot: Snapshot) -> Decision:
        """Start jobs by effective priority until the first blocked one."""
        index = self.index()
        ctx = DecisionContext(snapshot, max_preemptions=self.max_preemptions, index=index)
        queue = snapshot.queue
        team_prio = {name: cfg.priority for name, cfg in snapshot.teams.items() if cfg.priority}
        aging = self.aging_s

        def key(j: JobRequest) -> tuple[float, float, str]:
            # effective priority desc == (submit_time - base * aging_s) asc: independent of `now`;
            # ties: the older job, then the job id
            return (j.submit_time - (j.priority + team_prio.get(j.team, 0)) * aging, j.submit_time, j.job_id)

        # kept sorted across decisions: only jobs that joined the queue since are keyed
        ranked = index.queue_order("priority", queue, (aging, tuple(sorted(team_prio.items()))), key).jobs
        victims: list[RunningJob] | None = None
        bases: list[int] = []
        for pos, job in enumerate(ranked):
            blocked = ctx.quota_block(job)
            if blocked is not None:
                ctx.wait(job, blocked.text)
                continue
            placement = ctx.ledger.place(job)
            if placement is None and self.preempt:
                if victims is None:  # lowest base priority first, then most recently started
                    order = index.running_order(
                        "priority",
                        snapshot.running,
                        snapshot.now,
                        tuple(sorted(team_prio.items())),
                        lambda r: (
                            (self._base(r.request, team_prio), -r.start_time, r.job_id, r)
                            if r.request.preemptible
                            else None
                        ),
                        lambda _: math.inf,  # a base priority never changes
                    )
                    victims = order.victims
                    bases = [k[0] for k in order.keys]
                    ctx.victim_order(victims)
                    ctx.keep_victim_index(order)
                cut = bisect.bisect_left(bases, self._base(job, team_prio))
                if cut and ctx.preempt_room() and ctx.never_block(job) is None:
                    placement = ctx.try_preempt_for(job, victims[:cut])
            if placement is not None:
                ctx.start(job, placement)
                continue
            never = ctx.never_block(job)
            if never is not None:
                ctx.wait(job, never.text)
                continue
            eff = self._base(job, team_prio) + (snapshot.now - job.submit_time) / aging
            ctx.wait(job, f"{ctx.explain(job)} (highest waiting priority {eff:.2f}, priority)")
            ctx.wait_many(ranked[pos + 1 :], f"behind higher-priority job {job.job_id} (priority)")
            break
        return ctx.build()

    @staticmethod
    def _base(job: JobRequest, team_prio: dict[str, int]) -> int:
        return job.priority + team_prio.get(job.team, 0)
