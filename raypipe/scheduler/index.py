"""``DecisionIndex``: what a policy keeps across decisions, so a decision does not redo it.

A policy object lives as long as the controller or the simulator that owns
it; it keeps one :class:`DecisionIndex` (``Policy.index()``) and passes it to
every :class:`~raypipe.scheduler.context.DecisionContext` it builds.  Each
entry is a pure function of inputs it checks on every use, so a decision made
with the index equals the one made from scratch (a fresh policy object):

* **never-schedulable verdicts** per (job shape, team, quota), kept while
  the cluster's node totals (the ``use_total`` ledger template the view
  carries, shared by every view ``ClusterView.replace_nodes`` derives) and the
  placement settings stay the same object;
* **victim orders** (LAS: by queue of attained service, then start; priority:
  by base priority, then start) with their per-node index, kept while the
  running jobs are the same objects.  The running set is diffed by identity
  (``id`` of each ``RunningJob``; the index holds the objects, so an id is
  never reused while it is compared): started, finished and preempted jobs
  are inserted into or removed from the sorted order instead of sorting all
  running jobs again.  A controller that builds new ``RunningJob`` objects for
  unchanged jobs only loses the speed-up, never correctness.  A key that changes with
  time (LAS: the queue of a job's attained service) comes with the time it
  may change, conservatively early; the job is re-keyed when a decision
  reaches it;
* **queue orders** (:meth:`DecisionIndex.queue_order`; priority: by effective
  priority, which does not depend on the time, then submit time and job id): the
  queue sorted by a key of each job alone, kept while the key's tag is the same; a
  new queue is diffed against the last one by identity (:func:`identity_diff`: aligned
  runs compared in C, a few jobs removed or inserted found without a set of every
  job), so only jobs that joined are keyed and inserted;
* **quota vectors** of the teams with a quota, kept while the snapshot's ``teams`` is the
  same mapping object;
* **team sums** (:class:`TeamSums`): what running jobs demand per team (a quota's usage,
  fair_share's dominant shares), the running jobs diffed by identity, the sums added to
  and subtracted from while that is exact;
* **backfill's order of end estimates** (:meth:`DecisionIndex.running_order`,
  without the per-node index): the reservation walks running jobs in end
  order from it instead of collecting and sorting them each decision.

``DecisionIndex.enabled = False`` (tests) makes every lookup miss.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import operator
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from raypipe.scheduler import vec
from raypipe.scheduler.types import Blocked, JobRequest, RunningJob
from raypipe.scheduler.vec import Vec

__all__ = ["DecisionIndex", "QueueOrder", "TeamSums", "VictimOrder", "victims_by_node"]

#: A victim's sort key: a tuple whose last element is the RunningJob (earlier elements are unique).
SortKey = tuple[Any, ...]


class VictimOrder:
    """Preemptible running jobs in a policy's victim order, kept sorted across decisions.

    ``key(r)`` gives the sort key of one running job at the current time (its
    last element the job itself, an earlier one unique); ``None`` leaves the
    job out (not a victim).  ``changes_at(r)`` is the first time (conservatively
    early) at which that key may change (``inf``: never); such jobs are
    re-keyed when a decision reaches that time.  ``by_node`` maps each node to
    ``(key, victim, its bundles there)`` in key order, kept in step.
    """

    __slots__ = ("keys", "victims", "by_node", "_ids", "_due", "_seq", "valid_from", "tag", "per_node", "derived")

    def __init__(self, *, per_node: bool = True) -> None:
        #: Keep ``by_node`` (victim searches need it; an order of end times does not).
        self.per_node = per_node
        #: Values a policy derives from the order (e.g. sums over a prefix), dropped whenever it changes.
        self.derived: dict[Hashable, Any] = {}
        self.keys: list[SortKey] = []
        self.victims: list[RunningJob] = []
        self.by_node: dict[str, list[tuple[SortKey, RunningJob, Vec]]] = {}
        self._ids: dict[int, tuple[RunningJob, SortKey | None]] = {}
        self._due: list[tuple[float, int, int]] = []
        self._seq = 0
        self.valid_from = 0.0
        self.tag: Hashable = None

    def _build(self, running: Sequence[RunningJob], key: KeyFn, changes_at: TimeFn) -> None:
        ids, by_node, due = self._ids, self.by_node, self._due
        keys = []
        for r in running:
            k = key(r)
            ids[id(r)] = (r, k)
            if k is None:
                continue
            keys.append(k)
            t = changes_at(r)
            if t != math.inf:
                self._seq += 1
                due.append((t, self._seq, id(r)))
        keys.sort()
        heapq.heapify(due)
        self.keys = keys
        self.victims = [k[-1] for k in keys]
        if not self.per_node:
            return
        for k in keys:
            r = k[-1]
            for nid, part in _portions(r).items():
                lst = by_node.get(nid)
                if lst is None:
                    by_node[nid] = [(k, r, part)]
                else:
                    lst.append((k, r, part))

    def _add(self, r: RunningJob, key: KeyFn, changes_at: TimeFn) -> None:
        k = key(r)
        self._ids[id(r)] = (r, k)
        if k is None:
            return
        at = bisect.bisect_right(self.keys, k)
        self.keys.insert(at, k)
        self.victims.insert(at, r)  # kept in step with ``keys`` (not rebuilt per change)
        for nid, part in _portions(r).items() if self.per_node else ():
            lst = self.by_node.get(nid)
            if lst is None:
                self.by_node[nid] = [(k, r, part)]
            else:
                bisect.insort(lst, (k, r, part), key=_first)
        t = changes_at(r)
        if t != math.inf:
            self._seq += 1
            heapq.heappush(self._due, (t, self._seq, id(r)))

    def _remove(self, i: int) -> None:
        r, k = self._ids.pop(i)
        if k is None:
            return
        prefix = k[:-1]  # unique: finds the entry without comparing jobs
        at = bisect.bisect_left(self.keys, prefix)
        del self.keys[at], self.victims[at]
        for nid in _portions(r) if self.per_node else ():
            lst = self.by_node[nid]
            del lst[bisect.bisect_left(lst, prefix, key=_first)]
            if not lst:
                del self.by_node[nid]

    def sync(self, running: Sequence[RunningJob], now: float, key: KeyFn, changes_at: TimeFn) -> None:
        """Bring the order to ``running`` at ``now``: identity diff, then re-key jobs whose key is due."""
        ids = self._ids
        changed = False
        if not ids:  # first build: one sort instead of inserting job by job
            self._build(running, key, changes_at)
            changed = True
        elif len(running) != len(ids) or ids.keys() != set(map(id, running)):
            now_ids = dict(zip(map(id, running), running, strict=True))
            for i in [i for i in ids if i not in now_ids]:
                self._remove(i)
            for i, r in now_ids.items():
                if i not in ids:
                    self._add(r, key, changes_at)
            changed = True
        due = self._due
        popped = []
        while due and due[0][0] <= now:
            popped.append(heapq.heappop(due)[2])
        for i in popped:  # re-keyed once per call: a key due again at once waits for the next call
            entry = ids.get(i)
            if entry is None:
                continue  # gone (its id may be reused by a job added since: re-keying it is harmless)
            self._remove(i)
            self._add(entry[0], key, changes_at)
            changed = True
        if changed:
            self.derived = {}


KeyFn = Callable[[RunningJob], "SortKey | None"]
TimeFn = Callable[[RunningJob], float]


def _first(entry: tuple[Any, ...]) -> Any:
    return entry[0]


def victims_by_node(victims: Sequence[RunningJob]) -> dict[str, list[tuple[Any, RunningJob, Vec]]]:
    """Per node: (rank, victim, its bundles on that node), ranks being positions in ``victims``."""
    index: dict[str, list[tuple[Any, RunningJob, Vec]]] = {}
    for rank, v in enumerate(victims):
        for nid, part in _portions(v).items():
            index.setdefault(nid, []).append((rank, v, part))
    return index


def _portions(r: RunningJob) -> dict[str, Vec]:
    """``r``'s bundles summed per node."""
    out: dict[str, Vec] = {}
    for b, nid in zip(r.request.bundle_vecs, r.placement.bundle_nodes, strict=True):
        out[nid] = vec.add(out[nid], b) if nid in out else b
    return out


class QueueOrder:
    """Queued jobs sorted by a key of the job alone, kept across decisions.

    ``key(job)`` must be a tuple unique per job (e.g. ending with the job id) that
    depends on nothing but the job and the order's ``tag``.  :meth:`sync` diffs the
    queue by identity: jobs that left it are deleted and new ones inserted by
    bisection, so a decision does not compute and sort every queued job's key again.
    ``jobs`` lists the queued jobs in key order (``keys`` beside it).
    """

    __slots__ = ("keys", "jobs", "_ids", "_queue", "tag")

    def __init__(self) -> None:
        self.keys: list[SortKey] = []
        self.jobs: list[JobRequest] = []
        self._ids: dict[int, tuple[JobRequest, SortKey]] = {}
        self._queue: Sequence[JobRequest] | None = None
        self.tag: Hashable = None

    def sync(self, queue: Sequence[JobRequest], key: Callable[[JobRequest], SortKey]) -> None:
        """Bring the order to ``queue`` (see the class docstring)."""
        if queue is self._queue:
            return
        ids = self._ids
        if not ids:
            entries = sorted(zip(map(key, queue), queue, strict=True), key=_first)  # keys are unique
            self.keys = [k for k, _ in entries]
            self.jobs = [j for _, j in entries]
            self._ids = {id(j): (j, k) for k, j in entries}
        else:
            diff = identity_diff(self._queue or (), queue)
            if diff is None:  # many changes: diff by sets of identities
                now = set(map(id, queue))
                removed = [ids[i][0] for i in ids.keys() - now]
                added = [j for j in queue if id(j) not in ids]
            else:
                removed, added = diff
            for job in removed:  # first: a job both removed and added (moved) ends up added
                _, k = ids.pop(id(job))
                at = bisect.bisect_left(self.keys, k)
                del self.keys[at], self.jobs[at]
            for job in added:
                k = key(job)
                ids[id(job)] = (job, k)
                at = bisect.bisect_right(self.keys, k)
                self.keys.insert(at, k)
                self.jobs.insert(at, job)
        self._queue = queue  # held: the identities compared stay unique


def quota_vectors(teams: Mapping[str, Any]) -> dict[str, Vec]:
    """Team -> its quota as a vector, for the teams (name -> ``TeamConfig``) that have one."""
    return {name: vec.of(cfg.quota) for name, cfg in teams.items() if cfg.quota is not None}


#: How far :func:`identity_diff` looks ahead for a job, and how many changes it reports at most.
_LOOKAHEAD = 16
_MAX_CHANGES = 256


def identity_diff(old: Sequence[Any], new: Sequence[Any]) -> tuple[list[Any], list[Any]] | None:
    """``(removed, added)``: the objects of ``old`` not in ``new`` and those of ``new`` not in
    ``old``, by identity, when ``new`` is ``old`` with a few objects removed and a few
    inserted (anywhere), the others in the same order; ``None`` when it finds more than a
    few hundred changes (then diff by sets).  Aligned runs are compared in C (``is not``
    over both sequences from the current positions); at a mismatch, ``old``'s object is
    looked for a few places ahead in ``new``: found, the objects before it were inserted;
    not found, it was removed.  An object that moved shows up in both lists.  Assumes no
    object occurs twice in either sequence.
    """
    removed: list[Any] = []
    added: list[Any] = []
    i = j = 0
    n_old, n_new = len(old), len(new)
    while i < n_old and j < n_new:
        a, b = iter(old), iter(new)
        if i:
            a.__setstate__(i)  # type: ignore[attr-defined]  # sequence iterators take a position
        if j:
            b.__setstate__(j)  # type: ignore[attr-defined]
        k = next(itertools.compress(itertools.count(), map(operator.is_not, a, b)), None)
        if k is None:  # one sequence ran out with everything aligned
            step = min(n_old - i, n_new - j)
            i, j = i + step, j + step
            break
        i, j = i + k, j + k
        x = old[i]
        for d in range(1, min(_LOOKAHEAD, n_new - j)):
            if new[j + d] is x:
                added.extend(new[j : j + d])
                j += d
                break
        else:
            removed.append(x)
            i += 1
        if len(removed) + len(added) > _MAX_CHANGES:
            return None
    removed.extend(old[i:])
    added.extend(new[j:])
    if len(removed) + len(added) > _MAX_CHANGES:
        return None
    return removed, added


#: :class:`TeamSums` adds and subtracts demands incrementally only while that is exact:
#: every component a multiple of ``1 / _DYADIC`` and every sum below ``_EXACT_MAX`` (then
#: each partial sum is a float exactly, and any order of additions gives the same sums).
_DYADIC = 65536.0
_EXACT_MAX = 2.0**36
#: After an inexact sum, :class:`TeamSums` leaves the sums to the caller for this many decisions.
_RETRY_INEXACT = 64


def _dyadic(v: Vec) -> bool:
    """True when ``v`` has no custom kinds and each component is a multiple of ``1 / _DYADIC``."""
    return (
        not v[3] and (v[0] * _DYADIC).is_integer() and (v[1] * _DYADIC).is_integer() and (v[2] * _DYADIC).is_integer()
    )


class TeamSums:
    """What the running jobs demand, summed per team, kept across decisions.

    ``team_of(r)`` names the team a running job counts for (``None``: it counts for
    none).  The running jobs are diffed by identity (:func:`identity_diff`): jobs that
    left are subtracted, new ones added, instead of summing every running job again.
    Incremental sums equal sums from scratch only when the additions are exact (see
    ``_DYADIC``): while any counted demand has a custom kind or a component that is not
    a small dyadic number, :meth:`sync` answers ``None`` and the caller sums from scratch.
    """

    __slots__ = ("_sums", "_running", "_retry", "tag")

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}
        self._running: Sequence[RunningJob] | None = None  # ``None``: sum from scratch next
        self._retry = 0  # decisions left before trying again after an inexact sum
        self.tag: Hashable = None

    def sync(
        self,
        running: Sequence[RunningJob],
        team_of: Callable[[RunningJob], str | None],
        differ: Callable[[Sequence[Any], Sequence[Any]], tuple[list[Any], list[Any]] | None] = identity_diff,
    ) -> dict[str, Vec] | None:
        """Team -> summed demand of ``running``'s jobs that count for it; ``None`` when not exact.
        ``differ``: :func:`identity_diff`, or one that remembers its last answer (several sums
        kept over the same running jobs diff them once)."""
        if running is not self._running:
            if self._retry > 0:  # the last sum was inexact: the caller sums, until the retry
                self._retry -= 1
                return None
            diff = None if self._running is None else differ(self._running, running)
            if diff is None:
                self._sums = {}
                exact = self._apply(running, team_of, 1.0)
            else:
                removed, added = diff
                exact = self._apply(removed, team_of, -1.0) and self._apply(added, team_of, 1.0)
            if not exact:
                self._running, self._retry = None, _RETRY_INEXACT
                return None
            self._running = running  # held: the identities compared stay unique
        return {t: (a[0], a[1], a[2], ()) for t, a in self._sums.items()}

    def _apply(self, jobs: Sequence[RunningJob], team_of: Callable[[RunningJob], str | None], sign: float) -> bool:
        """Add (``sign`` 1) or subtract (-1) the jobs' demands; ``False`` (stopping) once not exact."""
        sums = self._sums
        for r in jobs:
            t = team_of(r)
            if t is None:
                continue
            d = r.request.demand_vec
            if not _dyadic(d):
                return False
            a = sums.get(t)
            if a is None:
                a = sums[t] = [0.0, 0.0, 0.0]
            a[0] += sign * d[0]
            a[1] += sign * d[1]
            a[2] += sign * d[2]
            if max(abs(a[0]), abs(a[1]), abs(a[2])) >= _EXACT_MAX:
                return False
        return True


class DecisionIndex:
    """The long-lived indexes of one policy object (see the module docstring)."""

    #: Tests switch the index off to compare indexed and from-scratch decisions.
    enabled = True

    __slots__ = ("_never_owner", "_never", "_orders", "_queue_orders", "_quotas", "_sums", "_diff")

    def __init__(self) -> None:
        self._never_owner: tuple[Any, Any] | None = None
        self._never: dict[Hashable, Blocked | None] = {}
        self._orders: dict[str, VictimOrder] = {}
        self._queue_orders: dict[str, QueueOrder] = {}
        self._quotas: tuple[Mapping[str, Any], dict[str, Vec]] | None = None
        self._sums: dict[str, TeamSums] = {}
        self._diff: tuple[Sequence[Any], Sequence[Any], tuple[list[Any], list[Any]] | None] | None = None

    def team_sums(
        self, name: str, running: Sequence[RunningJob], tag: Hashable, team_of: Callable[[RunningJob], str | None]
    ) -> dict[str, Vec] | None:
        """The sums ``name`` of ``running`` per team (see :class:`TeamSums`); ``tag``: what else
        ``team_of`` depends on (a different one sums again).  ``None``: sum from scratch."""
        if not self.enabled:
            return None
        sums = self._sums.get(name)
        if sums is None or sums.tag != tag:
            sums = self._sums[name] = TeamSums()
            sums.tag = tag
        return sums.sync(running, team_of, self._identity_diff)

    def _identity_diff(self, old: Sequence[Any], new: Sequence[Any]) -> tuple[list[Any], list[Any]] | None:
        """:func:`identity_diff`, remembering its last answer (held: the identities stay unique)."""
        last = self._diff
        if last is not None and last[0] is old and last[1] is new:
            return last[2]
        diff = identity_diff(old, new)
        self._diff = (old, new, diff)
        return diff

    def quotas(self, teams: Mapping[str, Any]) -> dict[str, Vec] | None:
        """The quota vectors of ``teams`` (team -> ``TeamConfig``; only teams with a quota),
        kept while the snapshot's ``teams`` is the same mapping object (a simulator passes one
        for a whole replay); ``None`` when the index is off."""
        if not self.enabled:
            return None
        kept = self._quotas
        if kept is None or kept[0] is not teams:
            kept = self._quotas = (teams, quota_vectors(teams))  # holds ``teams``: its identity stays unique
        return kept[1]

    def queue_order(
        self, name: str, queue: Sequence[JobRequest], tag: Hashable, key: Callable[[JobRequest], SortKey]
    ) -> QueueOrder:
        """The queue sorted by ``key`` (see :class:`QueueOrder`); a different ``tag`` (what
        else the keys depend on) sorts it again."""
        order = self._queue_orders.get(name) if self.enabled else None
        if order is None or order.tag != tag:
            order = QueueOrder()
            order.tag = tag
            if self.enabled:
                self._queue_orders[name] = order
        order.sync(queue, key)
        return order

    def never_table(self, totals: Any, settings: Any) -> dict[Hashable, Blocked | None]:
        """The never-schedulable verdicts valid for this totals template and these placement settings."""
        if not self.enabled:
            return {}
        owner = self._never_owner
        if owner is None or owner[0] is not totals or (owner[1] is not settings and owner[1] != settings):
            self._never_owner = (totals, settings)  # holds the template: its identity stays unique
            self._never = {}
        return self._never

    def running_order(
        self,
        name: str,
        running: Sequence[RunningJob],
        now: float,
        tag: Hashable,
        key: KeyFn,
        changes_at: TimeFn,
        *,
        per_node: bool = True,
    ) -> VictimOrder:
        """The order ``name`` of ``running`` at ``now`` (see :class:`VictimOrder`): a victim
        order (las, priority), or with ``per_node=False`` an order without the per-node
        index (backfill's order of end times).

        ``tag``: what else the keys depend on (policy arguments, team priorities); a
        different tag, or a time earlier than the last one, rebuilds it.
        """
        order = self._orders.get(name) if self.enabled else None
        if order is None or order.tag != tag or now < order.valid_from or order.per_node != per_node:
            order = VictimOrder(per_node=per_node)
            order.tag = tag
            if self.enabled:
                self._orders[name] = order
        order.valid_from = now
        order.sync(running, now, key, changes_at)
        return order
