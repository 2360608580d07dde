"""Victim search for a :class:`~raypipe.scheduler.context.DecisionContext` (a mixin: the
context's preemption toolkit; its state lives in the context).

:meth:`PreemptionMixin.try_preempt_for` frees room for one job by preempting a
minimal set of victims in the policy's order: one-node gangs pick the node whose
needed victims come earliest (a per-node index of the victims, kept across
decisions when the policy keeps its order in a
:class:`~raypipe.scheduler.index.DecisionIndex`), gangs of identical bundles count
slots instead of placing trial by trial, and other gangs release victims in
doubling chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raypipe.scheduler import vec
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.types import JobRequest, Placement, RunningJob
from raypipe.scheduler.vec import Vec

__all__ = ["PreemptionMixin"]


class PreemptionMixin:
    """Preempting victims so a job fits (state lives in ``DecisionContext``)."""

    __slots__ = ()

    #: Tests switch slot counting off (every check then places the gang) to compare decisions.
    count_slots = True

    ledger: FreeLedger
    preempted: dict[str, RunningJob]

    def preempt_room(self) -> int:  # pragma: no cover - DecisionContext's
        raise NotImplementedError

    def preempt(self, victim: RunningJob) -> None:  # pragma: no cover - DecisionContext's
        raise NotImplementedError

    def _mark_preempted(self, victim: RunningJob) -> None:  # pragma: no cover - DecisionContext's
        raise NotImplementedError

    def _victims_by_node(
        self, victims: Sequence[RunningJob]
    ) -> tuple[Mapping[str, list[tuple[Any, RunningJob, Vec]]], Any]:  # pragma: no cover - DecisionContext's
        raise NotImplementedError

    def try_preempt_for(self, job: JobRequest, victims: Sequence[RunningJob]) -> Placement | None:
        """Preempt a minimal prefix-pruned subset of ``victims`` (in order) so ``job`` fits.

        Releases victims in order until ``job`` can be placed; then gives back
        every victim that turns out not to be needed.  When even all victims do
        not make room, or the job would need more victims than
        :meth:`preempt_room` allows, nothing is preempted and ``None`` is
        returned.  The victims taken are added to :attr:`preempted`.
        """
        room = self.preempt_room()
        if room <= 0:
            return None
        ledger = self.ledger
        if ledger.one_node(job):
            return self._preempt_one_node(job, victims, room)
        preempted = self.preempted
        released: list[RunningJob] | None = None
        placement: Placement | None = None
        bvecs = job.bundle_vecs
        counted = False  # identical bundles that may spread: the greedy placement succeeds iff the slots suffice
        if all(b == bvecs[0] for b in bvecs) and not ledger.whole_nodes(job):
            released = self._release_for_identical(job, victims)
            if released is None and self.count_slots:
                return None  # even every victim leaves too few slots: the greedy placement fails too
            if released is not None:
                placement = ledger.place(job)
                if placement is None:  # not expected (slot counting mirrors the greedy placement)
                    ledger.allocate_many((v.request, v.placement) for v in released)
                    released = None
                counted = placement is not None and self.count_slots
        if released is None:
            live, released = [v for v in victims if v.request.job_id not in preempted], []
            step = 1
            while len(released) < len(live):  # release in doubling chunks: O(log n) placement attempts
                chunk = live[len(released) : len(released) + step]
                ledger.release_many((v.request, v.placement) for v in chunk)
                released.extend(chunk)
                placement = ledger.place(job)
                if placement is not None:
                    break
                step *= 2
            if placement is None:
                for v in reversed(released):
                    ledger.allocate(v.request, v.placement)
                return None
        # Victims on nodes the placement does not use are not needed: give them back.
        assert placement is not None
        used = placement.nodes
        needed: list[RunningJob] = []
        for v in released:
            if used.isdisjoint(v.placement.bundle_nodes) and ledger.can_allocate(v.request, v.placement):
                ledger.allocate(v.request, v.placement)
            else:
                needed.append(v)
        # Then try to keep each remaining victim, lowest-ranked (last released) first.
        kept: set[str] = set()
        m = len(bvecs)
        for v in reversed(needed):
            if ledger.can_allocate(v.request, v.placement):
                ledger.allocate(v.request, v.placement)
                if counted:  # counting slots answers as placing would, without placing every bundle
                    if ledger.slots(bvecs[0], job.label_selector, m) >= m:
                        kept.add(v.job_id)
                        continue
                else:
                    again = ledger.place(job)
                    if again is not None:
                        placement = again
                        kept.add(v.job_id)
                        continue
                ledger.release(v.request, v.placement)
        lost = [v for v in needed if v.job_id not in kept]
        if counted and kept:  # the placement on what is left: the one the last kept victim allowed
            placement = ledger.place(job)
            if placement is None:  # not expected (as above): preempt nothing
                ledger.allocate_many((v.request, v.placement) for v in lost)
                return None
        if len(lost) > room:  # over this decision's preemption budget: undo
            for v in lost:
                ledger.allocate(v.request, v.placement)
            return None
        for v in lost:
            self._mark_preempted(v)  # the ledger already released it
        return placement

    def _release_for_identical(self, job: JobRequest, victims: Sequence[RunningJob]) -> list[RunningJob] | None:
        """Release the victims a gang of identical bundles needs, found without trial placements.

        Counts, node by node, how many copies of the bundle fit ("slots"); the
        greedy placement of identical bundles succeeds exactly when the slots
        of matching nodes add up to the gang size.  Walks ``live`` in order
        until they do, then releases only the victims of that prefix on nodes
        that gained a slot (the others cannot help).  ``None``: even all
        victims are not enough.
        """
        ledger = self.ledger
        b = job.bundle_vecs[0]
        m = len(job.bundle_vecs)
        sel = job.label_selector
        have = ledger.slots(b, sel, m)
        if have >= m:
            return []
        base: dict[str, int] = {}
        cur: dict[str, Vec] = {}
        gained: dict[str, int] = {}
        unusable: set[str] = set()  # dead or not matching the selector
        plain = not b[3]  # no custom kinds: vector sums and slot counts inlined (the same arithmetic)
        preempted, live = self.preempted, []  # live: victims walked and not preempted (the walk stops early)
        for v in victims:
            req = v.request
            if req.job_id in preempted:
                continue
            live.append(v)
            for part, nid in zip(req.bundle_vecs, v.placement.bundle_nodes, strict=True):
                f = cur.get(nid)
                if f is None:
                    if nid in unusable or not ledger.has_node(nid) or not ledger.matches(nid, sel):
                        unusable.add(nid)
                        continue
                    f = ledger.free_vec(nid)
                    base[nid] = gained[nid] = vec.copies(b, f, m)
                before = gained[nid]
                if before >= m:
                    continue  # the node holds every bundle already: more capacity there changes nothing
                t = ledger.total_vec(nid)
                if plain and not part[3] and not f[3] and not t[3]:
                    f = cur[nid] = (min(f[0] + part[0], t[0]), min(f[1] + part[1], t[1]), min(f[2] + part[2], t[2]), ())
                    after = _copies(b, f, m)
                else:
                    f = cur[nid] = vec.clamp(vec.add(f, part), t)
                    after = vec.copies(b, f, m)
                gained[nid] = after
                have += after - before
            if have >= m:
                break
        else:
            return None
        helpful = {nid for nid, g in gained.items() if g > base[nid]}
        out = [v for v in live if not helpful.isdisjoint(v.placement.bundle_nodes)]
        self.ledger.release_many((v.request, v.placement) for v in out)
        return out

    def _preempt_one_node(self, job: JobRequest, victims: Sequence[RunningJob], room: int) -> Placement | None:
        """One-node gangs: pick the node whose needed victims come earliest in ``victims``.

        The key is (rank of the last victim needed, number of victims, node id),
        so the caller's victim order (lowest priority first) is honoured.  A
        node that would need more than ``room`` victims is not considered.
        (A rank is a victim's position, or its sort key in a kept order: both
        order victims the same way.)
        """
        ledger = self.ledger
        per_node, last = self._victims_by_node(victims)
        need = job.demand_vec
        best: tuple[Any, int, str] | None = None
        chosen: list[RunningJob] = []
        preempted = self.preempted
        for nid, lst in per_node.items():
            first = lst[0][0]  # the loop below would stop at once: skip the node's checks
            if first > last or (best is not None and first > best[0]):
                continue
            if not ledger.has_node(nid) or not ledger.matches(nid, job.label_selector):
                continue
            free = ledger.free_vec(nid)
            picked: list[RunningJob] = []
            for rank, v, part in lst:
                if rank > last or (best is not None and rank > best[0]):
                    break
                if v.job_id in preempted:
                    continue
                if len(picked) >= room:
                    break
                picked.append(v)
                free = vec.add(free, part)
                if vec.fits(need, free):
                    key = (rank, len(picked), nid)
                    if best is None or key < best:
                        best, chosen = key, picked
                    break
        if best is None:
            return None
        for v in chosen:
            self.preempt(v)
        return ledger.place(job)



def _copies(b: Vec, f: Vec, cap: int) -> int:
    """:func:`vec.copies` for vectors without custom kinds (the same repeated subtraction)."""
    eps = vec.EPS
    b0, b1, b2 = b[0], b[1], b[2]
    f0, f1, f2 = f[0], f[1], f[2]
    n = 0
    while n < cap and not (b0 > f0 + eps or b1 > f1 + eps or b2 > f2 + eps):
        f0, f1, f2 = f0 - b0, f1 - b1, f2 - b2
        n += 1
    return n
