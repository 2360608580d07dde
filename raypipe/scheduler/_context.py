"""``DecisionContext``: the private working state of ONE policy decision.

Policies share the bookkeeping here (free capacity, team usage, starts,
preemptions, reasons) so each policy module only holds its ordering rules.
A context is created inside ``decide`` and dropped when it returns; nothing is
shared between decisions, so policies stay pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from raypipe.scheduler import _vec
from raypipe.scheduler._vec import Vec
from raypipe.scheduler.placement import FreeLedger, exceeds_quota, never_reason
from raypipe.scheduler.types import Decision, JobRequest, Placement, RunningJob, Snapshot


class DecisionContext:
    """Free capacity, team usage and the decision being built.

    ``borrowed_counts_to_quota``: whether running jobs marked ``borrowed`` count
    against their team's quota.  Policies that never lend keep the default
    (``True``, the conservative reading); fair share passes ``False`` because
    borrowed capacity is, by definition, outside the quota.
    """

    __slots__ = (
        "snapshot",
        "now",
        "ledger",
        "starts",
        "borrowed",
        "preempted",
        "reasons",
        "_total_ledger",
        "_usage",
        "_never",
        "_explain",
        "_borrowed_counts",
        "_running",
        "_quotas",
        "_victim_index",
    )

    def __init__(self, snapshot: Snapshot, *, borrowed_counts_to_quota: bool = True) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.ledger = FreeLedger.from_cluster(snapshot.cluster)
        self.starts: list[tuple[str, Placement]] = []
        self.borrowed: list[str] = []
        self.preempted: dict[str, RunningJob] = {}
        self.reasons: dict[str, str] = {}
        self._total_ledger: FreeLedger | None = None
        self._usage: dict[str, Vec] | None = None
        self._never: dict[tuple[str, str], str | None] = {}
        self._explain: dict[str, str] = {}
        self._borrowed_counts = borrowed_counts_to_quota
        self._running: list[tuple[JobRequest, Placement, float | None]] = []
        self._quotas: dict[str, Vec] | None = None
        self._victim_index: tuple[list[RunningJob], dict[str, list[tuple[int, RunningJob, Vec]]]] | None = None

    # ------------------------------------------------------------------ quotas

    def _counts(self, borrowed: bool) -> bool:
        return self._borrowed_counts or not borrowed

    def usage(self, team: str) -> Vec:
        """What ``team`` holds against its quota now (running minus preempted plus started)."""
        if self._usage is None:
            acc: dict[str, list[float]] = {}
            custom: dict[str, dict[str, float]] = {}
            limited = {name for name, cfg in self.snapshot.teams.items() if cfg.quota is not None}
            for r in self.snapshot.running:
                if r.request.team not in limited or not self._counts(r.borrowed):
                    continue
                d = r.request._dvec
                a = acc.get(r.request.team)
                if a is None:
                    a = acc[r.request.team] = [0.0, 0.0, 0.0]
                a[0] += d[0]
                a[1] += d[1]
                a[2] += d[2]
                if d[3]:
                    c = custom.setdefault(r.request.team, {})
                    for k, x in d[3]:
                        c[k] = c.get(k, 0.0) + x
            self._usage = {t: (a[0], a[1], a[2], tuple(sorted(custom.get(t, {}).items()))) for t, a in acc.items()}
        return self._usage.get(team, _vec.ZERO)

    def _add_usage(self, team: str, d: Vec, sign: float) -> None:
        if self._usage is None:
            return  # computed lazily from snapshot + starts/preemptions below
        cur = self._usage.get(team, _vec.ZERO)
        self._usage[team] = _vec.add(cur, d) if sign > 0 else _vec.sub(cur, d)

    def quota_block(self, job: JobRequest) -> str | None:
        """Why ``job`` may not start within its team's quota now, else ``None``."""
        quotas = self._quotas
        if quotas is None:
            quotas = self._quotas = {
                name: _vec.vec(cfg.quota) for name, cfg in self.snapshot.teams.items() if cfg.quota is not None
            }
        q = quotas.get(job.team)
        if q is None:
            return None
        used = self.usage(job.team)
        d = job._dvec
        if (
            (q[1] <= _vec.EPS or used[1] + d[1] <= q[1] + _vec.EPS)
            and (q[0] <= _vec.EPS or used[0] + d[0] <= q[0] + _vec.EPS)
            and (q[2] <= _vec.EPS or used[2] + d[2] <= q[2] + _vec.EPS)
            and not q[3]
        ):
            return None
        return self._quota_reason(job, q, used)

    @staticmethod
    def _quota_reason(job: JobRequest, q: Vec, used: Vec) -> str | None:
        over = exceeds_quota(job.demand, _vec.to_resources(q))
        if over is not None:
            return f"never schedulable: demand exceeds team {job.team}'s quota ({over})"
        after = _vec.add(used, job._dvec)
        for i in (1, 0, 2):
            if q[i] > _vec.EPS and after[i] > q[i] + _vec.EPS:
                name = _vec.DIM_NAMES[i]
                return f"team {job.team} at quota {used[i]:g}/{q[i]:g} {name} (needs {job._dvec[i]:g} more)"
        qc, uc, ac = dict(q[3]), dict(used[3]), dict(after[3])
        for k, lim in qc.items():
            if lim > _vec.EPS and ac.get(k, 0.0) > lim + _vec.EPS:
                return f"team {job.team} at quota {uc.get(k, 0.0):g}/{lim:g} {k}"
        return None

    # ---------------------------------------------------------------- reasons

    def never_reason(self, job: JobRequest, *, allow_borrowing: bool = False) -> str | None:
        """Cached :func:`~raypipe.scheduler.placement.feasible_ever` for this decision."""
        key = (job.shape_key, job.team if not allow_borrowing else "")
        if key not in self._never:
            if self._total_ledger is None:
                self._total_ledger = FreeLedger.from_cluster(self.snapshot.cluster, use_total=True)
            quota = self.snapshot.team(job.team).quota
            self._never[key] = never_reason(job, self._total_ledger, quota, allow_borrowing=allow_borrowing)
        return self._never[key]

    def explain(self, job: JobRequest) -> str:
        """Why ``job`` does not fit the free capacity (cached per shape for this decision)."""
        key = job.shape_key
        hit = self._explain.get(key)
        if hit is None:
            hit = self._explain[key] = self.ledger.explain(job)
        return hit

    def wait(self, job: JobRequest, reason: str) -> None:
        """Record why ``job`` keeps waiting."""
        self.reasons[job.job_id] = reason

    def wait_many(self, jobs: Iterable[JobRequest], reason: str) -> None:
        """Record the same reason for many jobs."""
        self.reasons.update(dict.fromkeys([j.job_id for j in jobs], reason))

    # ---------------------------------------------------------------- actions

    def start(self, job: JobRequest, placement: Placement, *, borrowed: bool = False) -> None:
        """Start ``job`` at ``placement`` (allocates it on the ledger)."""
        self.ledger.allocate(job, placement)
        self.starts.append((job.job_id, placement))
        end = None if job.duration_estimate_s is None else self.now + job.duration_estimate_s
        self._running.append((job, placement, end))
        if borrowed:
            self.borrowed.append(job.job_id)
        if self._counts(borrowed):
            self._add_usage(job.team, job._dvec, 1.0)

    def preempt(self, victim: RunningJob) -> None:
        """Stop ``victim``; its resources are free for starts in this decision."""
        self.ledger.release(victim.request, victim.placement)
        self._mark_preempted(victim)

    def _mark_preempted(self, victim: RunningJob) -> None:
        self.preempted[victim.job_id] = victim
        if self._counts(victim.borrowed):
            self._add_usage(victim.request.team, victim.request._dvec, -1.0)

    def try_preempt_for(self, job: JobRequest, victims: Sequence[RunningJob]) -> Placement | None:
        """Preempt a minimal prefix-pruned subset of ``victims`` (in order) so ``job`` fits.

        Releases victims one by one until ``job`` can be placed; then gives back
        every victim that turns out not to be needed.  When even all victims do
        not make room, nothing is preempted and ``None`` is returned.
        """
        if len(job.bundles) == 1 or job.strategy == "STRICT_PACK":
            return self._preempt_one_node(job, victims)
        ledger = self.ledger
        live = [v for v in victims if v.job_id not in self.preempted]
        released: list[RunningJob] = []
        placement: Placement | None = None
        step = 1
        while len(released) < len(live):  # release in doubling chunks: O(log n) placement attempts
            for v in live[len(released) : len(released) + step]:
                ledger.release(v.request, v.placement)
                released.append(v)
            placement = ledger.place(job)
            if placement is not None:
                break
            step *= 2
        if placement is None:
            for v in reversed(released):
                ledger.allocate(v.request, v.placement)
            return None
        # Victims on nodes the placement does not use are not needed: give them back.
        used = placement.nodes
        needed: list[RunningJob] = []
        for v in released:
            if used.isdisjoint(v.placement.bundle_nodes) and ledger.can_allocate(v.request, v.placement):
                ledger.allocate(v.request, v.placement)
            else:
                needed.append(v)
        # Then try to keep each remaining victim, lowest-ranked (last released) first.
        kept: set[str] = set()
        for v in reversed(needed):
            if ledger.can_allocate(v.request, v.placement):
                ledger.allocate(v.request, v.placement)
                again = ledger.place(job)
                if again is not None:
                    placement = again
                    kept.add(v.job_id)
                    continue
                ledger.release(v.request, v.placement)
        for v in needed:
            if v.job_id not in kept:
                self._mark_preempted(v)  # the ledger already released it
        return placement

    def _preempt_one_node(self, job: JobRequest, victims: Sequence[RunningJob]) -> Placement | None:
        """One-node gangs: pick the node whose needed victims come earliest in ``victims``.

        The key is (rank of the last victim needed, number of victims, node id),
        so the caller's victim order (lowest priority first) is honoured.
        """
        ledger = self.ledger
        per_node = self._victims_by_node(victims)
        limit = len(victims)
        need = job._dvec
        best: tuple[int, int, str] | None = None
        chosen: list[RunningJob] = []
        for nid, lst in per_node.items():
            if not ledger.has_node(nid) or not ledger.matches(nid, job.label_selector):
                continue
            free = ledger.free_vec(nid)
            picked: list[RunningJob] = []
            for rank, v, part in lst:
                if rank >= limit or (best is not None and rank > best[0]):
                    break
                if v.job_id in self.preempted:
                    continue
                picked.append(v)
                free = _vec.add(free, part)
                if _vec.fits(need, free):
                    key = (rank, len(picked), nid)
                    if best is None or key < best:
                        best, chosen = key, picked
                    break
        if best is None:
            return None
        for v in chosen:
            self.preempt(v)
        return ledger.place(job)

    def _victims_by_node(self, victims: Sequence[RunningJob]) -> dict[str, list[tuple[int, RunningJob, Vec]]]:
        """Per node: (rank, victim, its bundles on that node), in rank order.

        Cached for the base list a policy slices victims from: callers pass
        prefixes of one sorted list, so an index over the longest list seen
        serves every shorter prefix of it.
        """
        if not victims:
            return {}
        cached = self._victim_index
        if cached is not None:
            base, index = cached
            if len(base) >= len(victims) and all(base[i] is victims[i] for i in (0, len(victims) - 1)):
                return index
        index: dict[str, list[tuple[int, RunningJob, Vec]]] = {}
        for rank, v in enumerate(victims):
            portions: dict[str, Vec] = {}
            for b, nid in zip(v.request._bvecs, v.placement.bundle_nodes, strict=True):
                portions[nid] = _vec.add(portions[nid], b) if nid in portions else b
            for nid, part in portions.items():
                index.setdefault(nid, []).append((rank, v, part))
        self._victim_index = (list(victims), index)
        return index

    # ------------------------------------------------------------------ views

    def running_now(self) -> list[tuple[JobRequest, Placement, float | None]]:
        """Jobs holding resources after this decision so far: (request, placement, end estimate).

        Snapshot jobs not preempted, plus jobs started in this decision.
        """
        out = [
            (r.request, r.placement, r.end_estimate) for r in self.snapshot.running if r.job_id not in self.preempted
        ]
        out.extend(self._running)
        return out

    def build(self) -> Decision:
        """The immutable decision."""
        started = {j for j, _ in self.starts}
        reasons = {k: v for k, v in self.reasons.items() if k not in started} if started else self.reasons
        return Decision(
            starts=tuple(self.starts),
            preemptions=tuple(self.preempted),
            reasons=reasons,
            borrowed=tuple(self.borrowed),
        )
