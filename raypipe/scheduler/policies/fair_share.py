"""Dominant Resource Fairness across teams, with quotas and marked borrowing."""

from __future__ import annotations

import heapq

from raypipe.scheduler import vec
from raypipe.scheduler.context import DEFAULT_MAX_PREEMPTIONS, DecisionContext, check_max_preemptions
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Blocked, BlockKind, Decision, JobRequest, RunningJob, Snapshot
from raypipe.scheduler.vec import Vec


class FairSharePolicy(Policy):
    """Weighted DRF with quotas and borrowing.

    A team's dominant share is ``max_k(used_k / cluster_total_k) / weight``
    over CPU, GPU, memory and custom kinds, counting every job it runs
    (borrowed ones included).  Repeatedly, the team with the lowest share starts
    its oldest job that fits (ties: team name); its share is then updated.

    Quotas (``TeamConfig.quota``; borrowed jobs do not count against it):

    * Phase 1 starts only jobs within their team's quota.  When such a job does
      not fit and running jobs are marked ``borrowed``, the newest borrowed
      (preemptible) jobs are preempted until it fits (the owner takes its
      capacity back); if even all of them would not make room, none is.
    * Phase 2 lends idle capacity: a job above its team's quota may start as
      *borrowed* (listed in ``Decision.borrowed``) only when no job within
      quota is left waiting for capacity (conservative: any such job, on any
      node), and only if it is preemptible, so it can be given back.

    ``max_preemptions`` (default 32, ``None``: unlimited) caps how many
    borrowed jobs one decision takes back; an owner's job that would need more
    victims than are left in the budget waits for the next decision.
    """

    name = "fair_share"
    borrows_idle_quota = True

    def __init__(self, max_preemptions: int | None = DEFAULT_MAX_PREEMPTIONS) -> None:
        self.max_preemptions = check_max_preemptions("fair_share", max_preemptions)

    def __repr__(self) -> str:
        return f"FairSharePolicy(max_preemptions={self.max_preemptions})"

    def decide(self, snapshot: Snapshot) -> Decision:
        """Two DRF passes: owned capacity, then borrowing."""
        ctx = DecisionContext(
            snapshot,
            borrowed_counts_to_quota=not self.borrows_idle_quota,
            max_preemptions=self.max_preemptions,
            index=self.index(),
        )
        by_team: dict[str, list[JobRequest]] = {}
        for job in snapshot.queue:
            lst = by_team.get(job.team)
            if lst is None:
                by_team[job.team] = [job]
            else:
                lst.append(job)
        if not by_team:
            return ctx.build()
        total = vec.of(snapshot.cluster.total())
        used = self._team_usage(snapshot)
        weights = {t: snapshot.team(t).weight for t in by_team}

        over_quota: dict[str, list[tuple[JobRequest, str]]] = {}
        owner_waiting = self._phase(ctx, by_team, used, total, weights, over_quota)

        if over_quota:
            if owner_waiting:
                for waiting in over_quota.values():
                    for job, why in waiting:
                        ctx.wait(job, f"{why}; cannot borrow while a team within quota waits (fair_share)")
            else:
                self._borrow(ctx, over_quota, used, total, weights)
        return ctx.build()

    # ------------------------------------------------------------------ phases

    @staticmethod
    def _share(u: Vec, total: Vec, weight: float) -> float:
        s = 0.0
        if total[vec.CPU] > vec.EPS:
            s = max(s, u[vec.CPU] / total[vec.CPU])
        if total[vec.GPU] > vec.EPS:
            s = max(s, u[vec.GPU] / total[vec.GPU])
        if total[vec.MEMORY] > vec.EPS:
            s = max(s, u[vec.MEMORY] / total[vec.MEMORY])
        if u[vec.CUSTOM]:
            tc = dict(total[vec.CUSTOM])
            for k, x in u[vec.CUSTOM]:
                if tc.get(k, 0.0) > vec.EPS:
                    s = max(s, x / tc[k])
        return s / weight

    def _team_usage(self, snapshot: Snapshot) -> dict[str, Vec]:
        """What each team runs (borrowed jobs included), kept across decisions in the index."""
        kept = self.index().team_sums("fair_share-used", snapshot.running, None, _team)
        if kept is not None:
            return kept
        used: dict[str, Vec] = {}
        for r in snapshot.running:
            t = r.request.team
            used[t] = vec.add(used.get(t, vec.ZERO), r.request.demand_vec)
        return used

    def _phase(
        self,
        ctx: DecisionContext,
        by_team: dict[str, list[JobRequest]],
        used: dict[str, Vec],
        total: Vec,
        weights: dict[str, float],
        over_quota: dict[str, list[tuple[JobRequest, str]]],
    ) -> bool:
        """Phase 1; returns True when a within-quota job is left waiting for capacity."""
        pos = dict.fromkeys(by_team, 0)
        heap = [(self._share(used.get(t, vec.ZERO), total, weights[t]), t) for t in by_team]
        heapq.heapify(heap)
        owner_waiting = False
        victims: list[RunningJob] | None = None
        preempt_failed: set[str] = set()
        memo = ctx.memo()  # why a job of a team and shape did not start
        at_quota, no_capacity = BlockKind.AT_QUOTA, BlockKind.NO_CAPACITY  # locals: enum lookups are slow
        answer_run = ctx.answer_run
        while heap:
            _, team = heapq.heappop(heap)
            jobs = by_team[team]
            i = pos[team]
            started = False
            waiting_over = over_quota.setdefault(team, [])
            while i < len(jobs):
                # jobs the memo answers: their reason; over quota ones are kept for borrowing
                # (their reason gets replaced when it is decided), one short of capacity flags
                i, short = answer_run(memo, team, jobs, i, at_quota, waiting_over, no_capacity)
                owner_waiting = owner_waiting or short
                if i == len(jobs):
                    break
                job = jobs[i]
                i += 1
                blocked = ctx.quota_block(job)
                if blocked is not None:
                    if blocked.never:
                        ctx.wait(job, blocked.text)
                    else:
                        waiting_over.append((job, blocked.text))
                    memo.remember(job, blocked)
                    continue
                placement = ctx.ledger.place(job)
                if placement is None and job.shape_key not in preempt_failed:
                    if victims is None:
                        victims = sorted(
                            (r for r in ctx.snapshot.running if r.borrowed and r.request.preemptible),
                            key=lambda r: (-r.start_time, r.job_id),
                        )
                    if victims and ctx.preempt_room() and ctx.never_block(job) is None:
                        before = len(ctx.preempted)
                        placement = ctx.try_preempt_for(job, victims)
                        if placement is None:
                            preempt_failed.add(job.shape_key)
                        for v in list(ctx.preempted.values())[before:]:
                            vt = v.request.team
                            used[vt] = vec.sub(used.get(vt, vec.ZERO), v.request.demand_vec)
                if placement is not None:
                    ctx.start(job, placement)
                    used[team] = vec.add(used.get(team, vec.ZERO), job.demand_vec)
                    started = True
                    break
                never = ctx.never_block(job)
                if never is not None:
                    ctx.wait(job, never.text)
                    memo.remember(job, never)
                    continue
                owner_waiting = True
                share = self._share(used.get(team, vec.ZERO), total, weights[team])
                why = Blocked(BlockKind.NO_CAPACITY, f"{ctx.explain(job)} (team {team} share {share:.3f}, fair_share)")
                ctx.wait(job, why.text)
                memo.remember(job, why)
            pos[team] = i
            if started and i < len(jobs):
                heapq.heappush(heap, (self._share(used[team], total, weights[team]), team))
        for team in [t for t, waiting in over_quota.items() if not waiting]:
            del over_quota[team]
        return owner_waiting

    def _borrow(
        self,
        ctx: DecisionContext,
        over_quota: dict[str, list[tuple[JobRequest, str]]],
        used: dict[str, Vec],
        total: Vec,
        weights: dict[str, float],
    ) -> None:
        """Phase 2: lend idle capacity to over-quota jobs, lowest share first."""
        pos = dict.fromkeys(over_quota, 0)
        heap = [(self._share(used.get(t, vec.ZERO), total, weights[t]), t) for t in over_quota]
        heapq.heapify(heap)
        while heap:
            _, team = heapq.heappop(heap)
            jobs = over_quota[team]
            i = pos[team]
            started = False
            while i < len(jobs):
                job, why = jobs[i]
                i += 1
                if not job.preemptible:
                    ctx.wait(job, f"{why}; non-preemptible jobs cannot borrow (fair_share)")
                    continue
                placement = ctx.ledger.place(job)
                if placement is not None:
                    ctx.start(job, placement, borrowed=True)
                    used[team] = vec.add(used.get(team, vec.ZERO), job.demand_vec)
                    started = True
                    break
                never = ctx.never_reason(job, allow_borrowing=True)
                ctx.wait(
                    job, never if never is not None else f"{why}; nothing to borrow: {ctx.explain(job)} (fair_share)"
                )
            pos[team] = i
            if started and i < len(jobs):
                heapq.heappush(heap, (self._share(used[team], total, weights[team]), team))


def _team(r: RunningJob) -> str:
    return r.request.team
