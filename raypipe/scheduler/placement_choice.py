"""Node choice and consolidation of the placement ledger (a mixin of
:class:`~raypipe.scheduler.placement.FreeLedger`; the rules are in
:mod:`raypipe.scheduler.placement_settings`).

Every search scans the ledger's groups of nodes with equal (free, labels, total):
a busy cluster has few distinct groups, and a group is represented by its
smallest node id that the gang does not use yet.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from raypipe.scheduler import vec
from raypipe.scheduler.fragmentation import TaskMix, generic_mix
from raypipe.scheduler.placement_settings import PlacementSettings
from raypipe.scheduler.types import JobRequest, Labels, Placement
from raypipe.scheduler.vec import Vec

#: (free, labels, total) of a group of nodes.
GroupKey = tuple[Vec, Labels, Vec]
_UNSET = object()
_FRAG_CHOICES = ("least_fragmenting", "fgd")


def _gpu_of(key: GroupKey) -> float:
    return key[0][1]


def _unlist(order: list[GroupKey], key: GroupKey) -> None:
    """Remove ``key`` from ``order`` (sorted by free GPU)."""
    i = bisect.bisect_left(order, key[0][1], key=_gpu_of)
    while order[i] != key:
        i += 1
    del order[i]


def _pick(ids: list[str], skip: Mapping[str, object] | set[str]) -> str:
    """The smallest id of a group not in ``skip`` ("" when all are)."""
    if not skip:
        return ids[0]
    for i in ids:
        if i not in skip:
            return i
    return ""


def whole(free: Vec, total: Vec, d: int) -> bool:
    """True when a node's dominant resource ``d`` (GPU for a GPU gang, else CPU) is entirely free."""
    if d == vec.GPU:
        return total[1] > vec.EPS and free[1] >= total[1] - vec.EPS
    if d == vec.CPU:
        return total[0] > vec.EPS and free[0] >= total[0] - vec.EPS
    return free == total


def _take(free: Vec, bundles: Sequence[Vec]) -> tuple[list[int], Vec]:
    """Positions (in ``bundles``) of the bundles that fit ``free`` taken in order, and what is left."""
    taken = []
    f = free
    for k, b in enumerate(bundles):
        if vec.fits(b, f):
            f = vec.sub(f, b)
            taken.append(k)
    return taken, f


class NodeChoiceMixin:
    """The ledger's node choice and consolidation (state lives in ``FreeLedger``)."""

    __slots__ = ()

    _free: dict[str, Vec]
    _total: dict[str, Vec]
    _labels: dict[str, Labels]
    _groups: dict[GroupKey, list[str]]
    _settings: PlacementSettings
    _task_mix: TaskMix | None
    _mix_cache: list[object]
    _one_node: dict[tuple[Vec, Labels], bool]

    _shared: set[GroupKey] | None
    _order: list[list[GroupKey] | None]

    def _regroup(self) -> None:
        """Group the nodes by (free, labels, total) from scratch (the same groups ``_set`` keeps)."""
        groups: dict[GroupKey, list[str]] = {}
        labels_of, total = self._labels, self._total
        for nid, fv in self._free.items():  # id order (kept since __init__): groups stay sorted
            key = (fv, labels_of[nid], total[nid])
            group = groups.get(key)
            if group is None:
                groups[key] = [nid]
            else:
                group.append(nid)
        self._groups.clear()  # each ledger has its own dict (copies share lists only)
        self._groups.update(groups)
        if self._shared:
            self._shared.clear()  # every list is this ledger's own
        self._order[0] = None

    def _by_gpu(self) -> list[GroupKey]:
        """The group keys sorted by free GPU (ties in no particular order), kept in step by ``_set``."""
        order = self._order[0]
        if order is None:
            order = self._order[0] = sorted(self._groups, key=_gpu_of)
        return order

    def _match(self, labels: Labels, selector: Labels) -> bool:  # pragma: no cover - FreeLedger's
        raise NotImplementedError

    # ------------------------------------------------------------------ settings

    @property
    def placement_settings(self) -> PlacementSettings:
        """The consolidation and node choice this ledger places with."""
        return self._settings

    def _frag_mix(self) -> TaskMix | None:
        """The mix ``least_fragmenting`` / ``fgd`` scores with (``None``: best_fit decides)."""
        choice = self._settings.node_choice
        if choice == "fgd":
            return self._task_mix
        if choice != "least_fragmenting":
            return None
        cached = self._mix_cache[0]
        if cached is _UNSET:
            biggest = max((tv[1] for (_, _, tv) in self._groups), default=0.0)
            cached = self._mix_cache[0] = generic_mix(biggest)
        return cached  # type: ignore[return-value]

    def fits_one_node_total(self, request: JobRequest) -> bool:
        """True when one matching alive node could hold ``request``'s whole demand (when empty)."""
        key = (request.demand_vec, request.label_selector)
        hit = self._one_node.get(key)
        if hit is None:
            d, sel = request.demand_vec, request.label_selector
            hit = any(vec.fits(d, tv) and self._match(labels, sel) for (_, labels, tv) in self._groups)
            self._one_node[key] = hit
        return hit

    def one_node(self, request: JobRequest) -> bool:
        """True when ``request`` may only run on one node (one bundle, ``STRICT_PACK``, or a
        ``PACK`` gang that fits one node under ``consolidation: strict``)."""
        if len(request.bundle_vecs) == 1 or request.strategy == "STRICT_PACK":
            return True
        return (
            request.strategy == "PACK"
            and self._settings.consolidation == "strict"
            and self.fits_one_node_total(request)
        )

    def whole_nodes(self, request: JobRequest) -> bool:
        """True when ``request`` may only run on whole nodes (a ``PACK`` gang no node can hold,
        under ``consolidation: strict``)."""
        return (
            len(request.bundle_vecs) > 1
            and request.strategy == "PACK"
            and self._settings.consolidation == "strict"
            and not self.fits_one_node_total(request)
        )

    # ---------------------------------------------------------------- node choice

    def _best(self, need: Vec, selector: Labels, skip: Mapping[str, Vec]) -> str | None:
        """The node ``node_choice`` picks for ``need`` among untouched nodes (``skip``: the gang's)."""
        choice = self._settings.node_choice
        if choice == "best_fit":
            return self._best_fit(need, selector, skip)
        fits = vec.fits
        if choice == "first_fit":
            first = ""
            for (fv, labels, _), ids in self._groups.items():
                if not fits(need, fv) or not self._match(labels, selector):
                    continue
                nid = _pick(ids, skip)
                if nid and (not first or nid < first):
                    first = nid
            return first or None
        mix = self._frag_mix()
        if mix is None:
            return self._best_fit(need, selector, skip)
        d = vec.dominant_index(need)
        no_gpu = need[1] <= vec.EPS
        best: tuple[float, float, float, str] | None = None
        for (fv, labels, tv), ids in self._groups.items():
            if not fits(need, fv) or not self._match(labels, selector):
                continue
            nid = _pick(ids, skip)
            if not nid:
                continue
            left = fv[d] - need[d] if d < 3 else 0.0  # type: ignore[operator]
            key = (round(mix.growth(fv, need, tv, labels), 9), fv[1] if no_gpu else 0.0, left, nid)
            if best is None or key < best:
                best = key
        return None if best is None else best[3]

    def _best_fit(self, need: Vec, selector: Labels, skip: Mapping[str, Vec]) -> str | None:
        """Best-fit untouched node for ``need`` (nodes in ``skip`` are ignored)."""
        d = vec.dominant_index(need)
        no_gpu = need[1] <= vec.EPS
        best: tuple[float, float, str] | None = None
        fits = vec.fits
        eps = vec.EPS
        # vec.fits inlined (GPU first: the most selective); custom kinds take the full check
        n0, n1, n2, custom = need[0], need[1], need[2], bool(need[3])
        match = self._match
        groups = self._groups
        order = self._by_gpu()
        # Groups by free GPU, ascending: the key's first part (free GPU without a GPU need, else
        # the GPU left, monotone in free GPU) only grows, so the scan stops once it exceeds the best.
        start = bisect.bisect_left(order, n1 - 2 * eps, key=_gpu_of) if n1 > eps else 0
        for pos in range(start, len(order)):
            gkey = order[pos]
            fv = gkey[0]
            if best is not None and (fv[1] > best[0] if no_gpu else fv[1] - n1 > best[1]):
                break
            if n1 > fv[1] + eps or n0 > fv[0] + eps or n2 > fv[2] + eps or (custom and not fits(need, fv)):
                continue
            if selector and not match(gkey[1], selector):
                continue
            ids = groups[gkey]
            nid = ids[0]
            if skip and nid in skip:
                nid = next((i for i in ids if i not in skip), "")
                if not nid:
                    continue
            key = (fv[1] if no_gpu else 0.0, fv[d] - need[d] if d < 3 else 0.0, nid)  # type: ignore[operator]
            if best is None or key < best:
                best = key
        return None if best is None else best[2]

    def _best_touched(self, need: Vec, touched: Mapping[str, Vec]) -> str | None:
        """The node ``node_choice`` picks among the nodes the gang already uses (their reduced free)."""
        choice = self._settings.node_choice
        mix = self._frag_mix() if choice in _FRAG_CHOICES else None
        d = vec.dominant_index(need)
        no_gpu = need[1] <= vec.EPS
        best: tuple[float, float, float, str] | None = None
        for nid, fv in touched.items():
            if not vec.fits(need, fv):
                continue
            if choice == "first_fit":
                key = (0.0, 0.0, 0.0, nid)
            else:
                grow = 0.0 if mix is None else round(mix.growth(fv, need, self._total[nid], self._labels[nid]), 9)
                key = (grow, fv[1] if no_gpu else 0.0, fv[d] - need[d] if d < 3 else 0.0, nid)  # type: ignore[operator]
            if best is None or key < best:
                best = key
        return None if best is None else best[3]

    # -------------------------------------------------------------- whole nodes

    def _place_whole_nodes(self, request: JobRequest) -> Placement | None:
        """``consolidation: strict`` for a gang no node can hold: the fewest matching nodes with
        every GPU free (see ``placement_settings``); ``None`` when they do not hold it now."""
        sel = request.label_selector
        bvecs = request.bundle_vecs
        d = vec.dominant_index(request.demand_vec)
        cands = [
            (fv, labels, tv, ids)
            for (fv, labels, tv), ids in self._groups.items()
            if whole(fv, tv, d) and self._match(labels, sel)
        ]
        remaining = sorted(range(len(bvecs)), key=lambda i: (-bvecs[i][1], -bvecs[i][0], -bvecs[i][2], i))
        out = [""] * len(bvecs)
        used: set[str] = set()
        mix = self._frag_mix()
        choice = self._settings.node_choice
        while remaining:
            needs = [bvecs[i] for i in remaining]
            best: tuple[int, float, float, str] | None = None
            best_taken: list[int] = []
            for fv, labels, tv, ids in cands:
                nid = _pick(ids, used)
                if not nid:
                    continue
                taken, left = _take(fv, needs)
                if not taken:
                    continue
                score = waste = 0.0
                if choice != "first_fit":
                    waste = left[d] if d < 3 else 0.0  # type: ignore[assignment]
                    if mix is not None:
                        grow = mix.node_fragmentation(left, tv, labels) - mix.node_fragmentation(fv, tv, labels)
                        score = round(grow, 9)
                key = (-len(taken), score, waste, nid)
                if best is None or key < best:
                    best, best_taken = key, taken
            if best is None:
                return None
            nid = best[3]
            used.add(nid)
            for k in best_taken:
                out[remaining[k]] = nid
            drop = set(best_taken)
            remaining = [i for k, i in enumerate(remaining) if k not in drop]
        return Placement(tuple(out))

    def whole_node_capacity(self, request: JobRequest) -> tuple[int, int]:
        """(matching nodes with every GPU free, how many of ``request``'s bundles they hold together)."""
        sel = request.label_selector
        d = vec.dominant_index(request.demand_vec)
        nodes = held = 0
        bvecs = sorted(request.bundle_vecs, key=lambda b: (-b[1], -b[0], -b[2]))
        for (fv, labels, tv), ids in self._groups.items():
            if whole(fv, tv, d) and self._match(labels, sel):
                nodes += len(ids)
                held += len(_take(fv, bvecs)[0]) * len(ids)
        return nodes, min(held, len(bvecs))
