"""``DecisionContext``: the working state of ONE policy decision, the toolkit policies build on.

A policy creates a context inside ``decide``, asks it questions (does this job
fit, is its team at quota, can it ever run), records what it does (start,
preempt, wait with a reason) and returns :meth:`DecisionContext.build`.  The
context keeps the bookkeeping every policy shares (free capacity, team usage,
starts, preemptions, reasons), so a policy module holds only its ordering
rules.  Nothing is shared between decisions, so policies stay pure.

A policy that waits many jobs of the same class for the same reason keeps a
:class:`WaitMemo` (from :meth:`DecisionContext.memo`); the context invalidates
it whenever the reason could change.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from raypipe.scheduler import vec
from raypipe.scheduler.errors import PolicyConfigError
from raypipe.scheduler.index import DecisionIndex, VictimOrder, quota_vectors, victims_by_node
from raypipe.scheduler.memo import WaitMemo, _NoMemo
from raypipe.scheduler.placement import FreeLedger, never_block, quota_never_block
from raypipe.scheduler.preemption import PreemptionMixin
from raypipe.scheduler.types import Blocked, BlockKind, Decision, JobRequest, Placement, RunningJob, Snapshot
from raypipe.scheduler.vec import Vec

__all__ = [
    "DEFAULT_MAX_PREEMPTIONS",
    "DecisionContext",
    "StartedJob",
    "WaitMemo",
    "check_max_preemptions",
]

_JOB_ID = operator.attrgetter("job_id")

#: Default per-decision cap on preemptions of the preempting policies (las,
#: priority with ``preempt=True``, fair_share): bounded rounds, as in Tiresias.
DEFAULT_MAX_PREEMPTIONS = 32

#: A job holding resources: (request, placement, end estimate or ``None`` when unknown).
StartedJob = tuple[JobRequest, Placement, float | None]


def check_max_preemptions(policy: str, value: int | None) -> int | None:
    """Validate a ``max_preemptions`` policy argument (``None``: unlimited)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyConfigError(f"{policy}: max_preemptions must be an int >= 0 or None, got {value!r}")
    return value


class DecisionContext(PreemptionMixin):
    """Free capacity, team usage and the decision being built.

    Attributes policies read (never assign):

    * ``snapshot`` and ``now`` (``snapshot.now``): what the decision is about.
    * ``ledger``: a :class:`~raypipe.scheduler.placement.FreeLedger` of the
      free capacity left by this decision so far; ``ledger.place(job)`` finds
      a placement, :meth:`start` allocates it.
    * ``preempted``: job id -> :class:`RunningJob` preempted by this decision,
      in preemption order.
    * ``max_preemptions``: the cap of this decision (``None``: unlimited).

    ``borrowed_counts_to_quota``: whether running jobs marked ``borrowed``
    count against their team's quota.  Policies that never lend keep the
    default (``True``, the conservative reading); a policy that lends idle
    quota passes ``False`` because borrowed capacity is, by definition,
    outside the quota.

    Results go through methods: :meth:`start`, :meth:`preempt` (or
    :meth:`try_preempt_for`), :meth:`wait`; then :meth:`build`.
    """

    __slots__ = (
        "snapshot",
        "now",
        "ledger",
        "preempted",
        "max_preemptions",
        "_starts",
        "_borrowed",
        "_reasons",
        "_total_ledger",
        "_usage",
        "_never",
        "_explain",
        "_borrowed_counts",
        "_running",
        "_quotas",
        "_victim_index",
        "_victim_base",
        "_memos",
        "_index",
        "_keep",
    )

    #: Tests switch memos off to check they never change a decision.
    use_memos = True

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        borrowed_counts_to_quota: bool = True,
        max_preemptions: int | None = None,
        index: DecisionIndex | None = None,
    ) -> None:
        self.snapshot = snapshot
        self._index = index
        self._keep: VictimOrder | None = None
        self.now = snapshot.now
        self.ledger = FreeLedger.from_cluster(
            snapshot.cluster, placement=snapshot.placement, task_mix=snapshot.task_mix
        )
        self.max_preemptions = max_preemptions
        self.preempted: dict[str, RunningJob] = {}
        self._memos: list[WaitMemo] = []
        self._starts: list[tuple[str, Placement]] = []
        self._borrowed: list[str] = []
        self._reasons: dict[str, str] = {}
        self._total_ledger: FreeLedger | None = None
        self._usage: dict[str, Vec] | None = None
        self._never: dict[tuple[str, str], Blocked | None] = {}
        self._explain: dict[str, str] = {}
        self._borrowed_counts = borrowed_counts_to_quota
        self._running: list[StartedJob] = []
        self._quotas: dict[str, Vec] | None = None
        self._victim_index: tuple[list[RunningJob], dict[str, list[tuple[Any, RunningJob, Vec]]]] | None = None
        self._victim_base: Sequence[RunningJob] = ()

    # ------------------------------------------------------------------ quotas

    def _counts(self, borrowed: bool) -> bool:
        return self._borrowed_counts or not borrowed

    def usage(self, team: str) -> Vec:
        """What ``team`` holds against its quota now (running minus preempted plus started)."""
        if self._usage is None:
            limited = self._quota_table()
            if self._index is not None and limited:
                counts = self._borrowed_counts

                def team_of(r: RunningJob) -> str | None:
                    t = r.request.team
                    return t if t in limited and (counts or not r.borrowed) else None

                kept = self._index.team_sums(
                    "quota-usage", self.snapshot.running, (tuple(sorted(limited)), counts), team_of
                )
                if kept is not None:
                    self._usage = kept
                    return kept.get(team, vec.ZERO)
            acc: dict[str, list[float]] = {}
            custom: dict[str, dict[str, float]] = {}
            for r in self.snapshot.running:
                if r.request.team not in limited or not self._counts(r.borrowed):
                    continue
                d = r.request.demand_vec
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
            self._usage = {
                t: vec.make(a[0], a[1], a[2], tuple(sorted(custom.get(t, {}).items()))) for t, a in acc.items()
            }
        return self._usage.get(team, vec.ZERO)

    def _add_usage(self, team: str, d: Vec, sign: float) -> None:
        if self._usage is None:
            return  # computed lazily from snapshot + starts/preemptions below
        cur = self._usage.get(team, vec.ZERO)
        self._usage[team] = vec.add(cur, d) if sign > 0 else vec.sub(cur, d)

    def quota_block(self, job: JobRequest) -> Blocked | None:
        """Why ``job`` may not start within its team's quota now, else ``None``.

        The kind is ``EXCEEDS_QUOTA`` when its demand alone is above the quota
        (it never starts within it), ``AT_QUOTA`` when the team's usage leaves
        too little now.
        """
        q = self._quota_of(job.team)
        if q is None:
            return None
        used = self.usage(job.team)
        d = job.demand_vec
        if (
            (q[1] <= vec.EPS or used[1] + d[1] <= q[1] + vec.EPS)
            and (q[0] <= vec.EPS or used[0] + d[0] <= q[0] + vec.EPS)
            and (q[2] <= vec.EPS or used[2] + d[2] <= q[2] + vec.EPS)
            and not q[3]
        ):
            return None
        return self._quota_block(job, q, used)

    def _quota_of(self, team: str) -> Vec | None:
        quotas = self._quotas
        if quotas is None:
            quotas = self._quota_table()
        return quotas.get(team)

    def _quota_table(self) -> dict[str, Vec]:
        """Team -> quota vector, for the teams with a quota (kept in the index across decisions)."""
        if self._quotas is None:
            teams = self.snapshot.teams
            kept = self._index.quotas(teams) if self._index is not None else None
            self._quotas = kept if kept is not None else quota_vectors(teams)
        return self._quotas

    def _quota_block(self, job: JobRequest, q: Vec, used: Vec) -> Blocked | None:
        never = quota_never_block(job, self.snapshot.team(job.team).quota)
        if never is not None:
            return never
        d = job.demand_vec
        after = vec.add(used, d)
        for i in (vec.GPU, vec.CPU, vec.MEMORY):
            qi = vec.component(q, i)
            if qi > vec.EPS and vec.component(after, i) > qi + vec.EPS:
                name = vec.DIM_NAMES[i]
                text = f"team {job.team} at quota {vec.component(used, i):g}/{qi:g} {name} (needs {vec.component(d, i):g} more)"
                return Blocked(BlockKind.AT_QUOTA, text)
        qc, uc, ac = dict(q[3]), dict(used[3]), dict(after[3])
        for k, lim in qc.items():
            if lim > vec.EPS and ac.get(k, 0.0) > lim + vec.EPS:
                return Blocked(BlockKind.AT_QUOTA, f"team {job.team} at quota {uc.get(k, 0.0):g}/{lim:g} {k}")
        return None

    # ---------------------------------------------------------------- reasons

    def never_block(self, job: JobRequest, *, allow_borrowing: bool = False) -> Blocked | None:
        """Why ``job`` can never run (:func:`~raypipe.scheduler.placement.admission_block`), cached for this decision.

        ``allow_borrowing``: a demand above the team's quota does not count
        (the job could run on borrowed capacity).
        """
        key = (job.shape_key, job.team if not allow_borrowing else "")
        never = self._never
        if key not in never:
            snap = self.snapshot
            quota = snap.team(job.team).quota
            if self._total_ledger is None:
                self._total_ledger = FreeLedger.from_cluster(snap.cluster, use_total=True, placement=snap.placement)
            if self._index is not None:  # verdicts kept across decisions while node totals stay the same
                table = self._index.never_table(snap.cluster.ledger_template(True), snap.placement)
                lkey = (key, quota)
                if lkey in table:
                    never[key] = table[lkey]
                else:
                    never[key] = table[lkey] = never_block(
                        job, self._total_ledger, quota, allow_borrowing=allow_borrowing
                    )
            else:
                never[key] = never_block(job, self._total_ledger, quota, allow_borrowing=allow_borrowing)
        return never[key]

    def never_reason(self, job: JobRequest, *, allow_borrowing: bool = False) -> str | None:
        """The text of :meth:`never_block`."""
        blocked = self.never_block(job, allow_borrowing=allow_borrowing)
        return None if blocked is None else blocked.text

    def explain(self, job: JobRequest) -> str:
        """Why ``job`` does not fit the free capacity (cached per shape for this decision)."""
        key = job.shape_key
        hit = self._explain.get(key)
        if hit is None:
            hit = self._explain[key] = self.ledger.explain(job)
        return hit

    def wait(self, job: JobRequest, reason: str) -> None:
        """Record why ``job`` keeps waiting (the last reason recorded for a job wins)."""
        self._reasons[job.job_id] = reason

    def wait_many(self, jobs: Iterable[JobRequest], reason: str) -> None:
        """Record the same reason for many jobs.  It may replace the dict of reasons: not to be
        called while :meth:`unanswered` walks (which writes into the dict it started with)."""
        new = dict.fromkeys(map(_JOB_ID, jobs), reason)
        old = self._reasons
        if len(old) >= len(new):
            old.update(new)
        else:  # fewer reasons so far: copy them into the new dict (the new reason wins for a job in both)
            for jid, why in old.items():
                new.setdefault(jid, why)
            self._reasons = new

    def start_in_order(self, queue: Sequence[JobRequest]) -> int:
        """Start jobs in queue order until one blocks the line; return its index (``len(queue)``
        if none does).  Jobs over quota or never feasible get their reason and do not block."""
        for idx, job in enumerate(queue):
            blocked = self.quota_block(job)
            if blocked is not None:
                self.wait(job, blocked.text)
                continue
            placement = self.ledger.place(job)
            if placement is not None:
                self.start(job, placement)
                continue
            never = self.never_block(job)
            if never is not None:
                self.wait(job, never.text)
                continue
            return idx
        return len(queue)

    def recall(self, memo: WaitMemo, job: JobRequest) -> Blocked | None:
        """What an earlier job of ``job``'s team and shape got in ``memo``, recorded as ``job``'s reason too.

        ``None`` when ``memo`` knows nothing for them (or memos are off).
        """
        seen = memo._teams.get(job.team)  # inlined WaitMemo.recall: this runs once per waiting job
        if seen is None:
            return None
        hit = seen.get(job.shape_key)
        if hit is not None:
            self._reasons[job.job_id] = hit.text
        return hit

    def answer_run(
        self,
        memo: WaitMemo,
        team: str,
        jobs: Sequence[JobRequest],
        start: int,
        collect: BlockKind,
        into: list[tuple[JobRequest, str]],
        flag: BlockKind,
    ) -> tuple[int, bool]:
        """:meth:`recall` over ``jobs[start:]``, all of ``team``, up to the first job ``memo``
        knows nothing for: (its index, ``len(jobs)`` when none; whether an answered job's
        kind was ``flag``).  Answered jobs get their reason; those whose answer's kind is
        ``collect`` are also appended to ``into`` as ``(job, reason)``.  One tight loop with
        the team's answers looked up once (a policy walking a team's jobs in order calls it
        instead of :meth:`recall` job by job).
        """
        seen = memo._teams.get(team)
        if not seen:
            return start, False
        get, reasons, flagged = seen.get, self._reasons, False
        n = len(jobs)
        for i in range(start, n):
            job = jobs[i]
            hit = get(job.shape_key)
            if hit is None:
                return i, flagged
            kind, text = hit
            reasons[job.job_id] = text
            if kind is collect:
                into.append((job, text))
            elif kind is flag:
                flagged = True
        return n, flagged

    def unanswered(
        self, jobs: Iterable[JobRequest], memo: WaitMemo | Sequence[WaitMemo], which: Iterable[int] = ()
    ) -> Iterator[JobRequest]:
        """The jobs, in order, that their memo knows nothing for when reached; the others get its reason.

        The loop of :meth:`recall` over many jobs, in one tight loop (no call per skipped job).
        ``memo`` may be several memos, ``which`` then giving each job's (an index, job by job).
        """
        reasons = self._reasons
        if isinstance(memo, WaitMemo):
            seen_of = memo._teams.get
            for job in jobs:
                seen = seen_of(job.team)
                if seen is not None:
                    hit = seen.get(job.shape_key)
                    if hit is not None:
                        reasons[job.job_id] = hit.text
                        continue
                yield job
            return
        gets = [m._teams.get for m in memo]
        for job, w in zip(jobs, which, strict=True):
            seen = gets[w](job.team)
            if seen is not None:
                hit = seen.get(job.shape_key)
                if hit is not None:
                    reasons[job.job_id] = hit.text
                    continue
            yield job

    def memo(self, *, team_usage: bool = True) -> WaitMemo:
        """A new :class:`WaitMemo` this context invalidates on starts and preemptions.

        ``team_usage=False``: the policy's reasons depend on a team's usage only through
        its quota (no share in the text), so a start forgets a team without a quota only in
        memos that say they depend on usage (capacity only shrinks between preemptions).
        """
        m = WaitMemo(team_usage=team_usage) if self.use_memos else _NoMemo()
        self._memos.append(m)
        return m

    # ------------------------------------------------------------ preemption

    def preempt_room(self) -> int:
        """How many more jobs this decision may preempt (``max_preemptions`` minus done)."""
        if self.max_preemptions is None:
            return 1 << 62
        return max(0, self.max_preemptions - len(self.preempted))

    # ---------------------------------------------------------------- actions

    def start(self, job: JobRequest, placement: Placement, *, borrowed: bool = False) -> None:
        """Start ``job`` at ``placement`` (allocates it on the ledger); ``borrowed``: above its team's quota."""
        self.ledger.allocate(job, placement)
        self._starts.append((job.job_id, placement))
        end = None if job.duration_estimate_s is None else self.now + job.duration_estimate_s
        self._running.append((job, placement, end))
        if borrowed:
            self._borrowed.append(job.job_id)
        if self._counts(borrowed):
            self._add_usage(job.team, job.demand_vec, 1.0)
        if self._memos:  # a team's usage changed: forget reasons that depend on it
            limited = self._quota_of(job.team) is not None
            for m in self._memos:
                if limited or m.team_usage:
                    m.forget_team(job.team)

    def preempt(self, victim: RunningJob) -> None:
        """Stop ``victim``; its resources are free for starts in this decision."""
        self.ledger.release(victim.request, victim.placement)
        self._mark_preempted(victim)

    def _mark_preempted(self, victim: RunningJob) -> None:
        self.preempted[victim.job_id] = victim
        for m in self._memos:
            m.clear()
        if self._counts(victim.borrowed):
            self._add_usage(victim.request.team, victim.request.demand_vec, -1.0)

    def victim_order(self, victims: Sequence[RunningJob]) -> None:
        """Declare the policy's full victim order: later calls pass prefixes of it (an index is built once)."""
        self._victim_base = victims

    def keep_victim_index(self, kept: VictimOrder) -> None:
        """Use ``kept``'s per-node victim index (a :class:`~raypipe.scheduler.index.VictimOrder`
        kept across decisions) for prefixes of its order."""
        self._keep = kept

    def _victims_by_node(
        self, victims: Sequence[RunningJob]
    ) -> tuple[Mapping[str, list[tuple[Any, RunningJob, Vec]]], Any]:
        """Per node: (rank, victim, its bundles on that node), in rank order; and the rank of ``victims[-1]``.

        Cached for the base list a policy slices victims from: callers pass
        prefixes of one sorted list, so an index over the longest list seen
        serves every shorter prefix of it.  With a kept order
        (:meth:`keep_victim_index`) whose prefix ``victims`` is, its index
        (kept across decisions, ranks being sort keys) serves.
        """
        if not victims:
            return {}, -1
        n = len(victims)
        keep = self._keep
        if keep is not None:
            kv = keep.victims
            if len(kv) >= n and kv[0] is victims[0] and kv[n - 1] is victims[-1]:
                return keep.by_node, keep.keys[n - 1]
        cached = self._victim_index
        if cached is not None:
            base, index = cached
            if len(base) >= n and all(base[i] is victims[i] for i in (0, n - 1)):
                return index, n - 1
        full = self._victim_base
        if len(full) > n and full[0] is victims[0] and full[n - 1] is victims[-1]:
            victims = full  # a prefix of the policy's full victim order: index it all, once
        index = victims_by_node(victims)
        self._victim_index = (list(victims), index)
        return index, n - 1

    # ------------------------------------------------------------------ views

    def running_now(self) -> list[StartedJob]:
        """Jobs holding resources after this decision so far: (request, placement, end estimate).

        Snapshot jobs not preempted, plus jobs started in this decision.
        """
        out = [
            (r.request, r.placement, r.end_estimate) for r in self.snapshot.running if r.job_id not in self.preempted
        ]
        out.extend(self._running)
        return out

    def started_now(self) -> list[StartedJob]:
        """Jobs started in this decision so far: (request, placement, end estimate)."""
        return list(self._running)

    def build(self) -> Decision:
        """The immutable decision (a started job has no reason)."""
        reasons = self._reasons
        for jid, _ in self._starts:
            reasons.pop(jid, None)
        return Decision(
            starts=tuple(self._starts),
            preemptions=tuple(self.preempted),
            reasons=reasons,
            borrowed=tuple(self._borrowed),
        )
