"""Dominant Resource Fairness across teams, with quotas and marked borrowing."""

from __future__ import annotations

import heapq

from raypipe.scheduler import _vec
from raypipe.scheduler._context import DEFAULT_MAX_PREEMPTIONS, DecisionContext, check_max_preemptions
from raypipe.scheduler._vec import Vec
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import Decision, JobRequest, RunningJob, Snapshot


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

    def __init__(self, max_preemptions: int | None = DEFAULT_MAX_PREEMPTIONS) -> None:
        self.max_preemptions = check_max_preemptions("fair_share", max_preemptions)

    def __repr__(self) -> str:
        return f"FairSharePolicy(max_preemptions={self.max_preemptions})"

    def decide(self, snapshot: Snapshot) -> Decision:
        """Two DRF passes: owned capacity, then borrowing."""
        ctx = DecisionContext(snapshot, borrowed_counts_to_quota=False, max_preemptions=self.max_preemptions)
        by_team: dict[str, list[JobRequest]] = {}
        for job in snapshot.queue:
            lst = by_team.get(job.team)
            if lst is None:
                by_team[job.team] = [job]
            else:
                lst.append(job)
        if not by_team:
            return ctx.build()
        total = _vec.vec(snapshot.cluster.total())
        used = self._team_usage(snapshot)
        weights = {t: snapshot.team(t).weight for t in by_team}

        over_quota: dict[str, list[tuple[JobRequest, str]]] = {}
        owner_waiting = self._phase(ctx, by_team, used, total, weights, over_quota)

        if over_quota:
            if owner_waiting:
                for lst in over_quota.values():
                    for job, why in lst:
                        ctx.wait(job, f"{why}; cannot borrow while a team within quota waits (fair_share)")
            else:
                self._borrow(ctx, over_quota, used, total, weights)
        return ctx.build()

    # ------------------------------------------------------------------ phases

    @staticmethod
    def _share(u: Vec, total: Vec, weight: float) -> float:
        s = 0.0
        for i in range(3):
            if total[i] > _vec.EPS:
                s = max(s, u[i] / total[i])
        if u[3]:
            tc = dict(total[3])
            for k, x in u[3]:
                if tc.get(k, 0.0) > _vec.EPS:
                    s = max(s, x / tc[k])
        return s / weight

    @staticmethod
    def _team_usage(snapshot: Snapshot) -> dict[str, Vec]:
        used: dict[str, Vec] = {}
        for r in snapshot.running:
            t = r.request.team
            used[t] = _vec.add(used.get(t, _vec.ZERO), r.request._dvec)
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
        heap = [(self._share(used.get(t, _vec.ZERO), total, weights[t]), t) for t in by_team]
        heapq.heapify(heap)
        owner_waiting = False
        victims: list[RunningJob] | None = None
        preempt_failed: set[str] = set()
        reasons = ctx.reasons
        # team -> shape -> (kind, reason) of a job that did not start: 0 never, 1 waits for capacity, 2 over quota
        memo = ctx.memo()
        while heap:
            _, team = heapq.heappop(heap)
            jobs = by_team[team]
            i = pos[team]
            started = False
            while i < len(jobs):
                job = jobs[i]
                i += 1
                seen = memo.get(team)
                if seen is not None:
                    hit = seen.get(job._shape)
                    if hit is not None:
                        kind, why = hit  # type: ignore[misc]
                        if kind == 2:
                            over_quota.setdefault(team, []).append((job, why))
                        else:
                            reasons[job.job_id] = why
                            owner_waiting = owner_waiting or kind == 1
                        continue
                blocked = ctx.quota_block(job)
                if blocked is not None:
                    if blocked.startswith("never"):
                        ctx.wait(job, blocked)
                        memo.setdefault(team, {})[job._shape] = (0, blocked)
                    else:
                        over_quota.setdefault(team, []).append((job, blocked))
                        memo.setdefault(team, {})[job._shape] = (2, blocked)
                    continue
                placement = ctx.ledger.place(job)
                if placement is None and job.shape_key not in preempt_failed:
                    if victims is None:
                        victims = sorted(
                            (r for r in ctx.snapshot.running if r.borrowed and r.request.preemptible),
                            key=lambda r: (-r.start_time, r.job_id),
                        )
                    if victims and ctx.preempt_room() and ctx.never_reason(job) is None:
                        before = len(ctx.preempted)
                        placement = ctx.try_preempt_for(job, victims)
                        if placement is None:
                            preempt_failed.add(job.shape_key)
                        for v in list(ctx.preempted.values())[before:]:
                            vt = v.request.team
                            used[vt] = _vec.sub(used.get(vt, _vec.ZERO), v.request._dvec)
                if placement is not None:
                    ctx.start(job, placement)
                    used[team] = _vec.add(used.get(team, _vec.ZERO), job._dvec)
                    started = True
                    break
                never = ctx.never_reason(job)
                if never is not None:
                    ctx.wait(job, never)
                    memo.setdefault(team, {})[job._shape] = (0, never)
                    continue
                owner_waiting = True
                share = self._share(used.get(team, _vec.ZERO), total, weights[team])
                why = f"{ctx.explain(job)} (team {team} share {share:.3f}, fair_share)"
                ctx.wait(job, why)
                memo.setdefault(team, {})[job._shape] = (1, why)
            pos[team] = i
            if started and i < len(jobs):
                heapq.heappush(heap, (self._share(used[team], total, weights[team]), team))
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
        heap = [(self._share(used.get(t, _vec.ZERO), total, weights[t]), t) for t in over_quota]
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
                    used[team] = _vec.add(used.get(team, _vec.ZERO), job._dvec)
                    started = True
                    break
                never = ctx.never_reason(job, allow_borrowing=True)
                ctx.wait(
                    job, never if never is not None else f"{why}; nothing to borrow: {ctx.explain(job)} (fair_share)"
                )
            pos[team] = i
            if started and i < len(jobs):
                heapq.heappush(heap, (self._share(used[team], total, weights[team]), team))
