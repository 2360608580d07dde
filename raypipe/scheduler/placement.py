"""Gang placement: where the bundles of a request go, or why they cannot go anywhere.

Public entry points:

* :func:`place` -- a :class:`Placement` for a request on a cluster view, or ``None``.
* :func:`feasible_ever` -- a reason when a request can NEVER run, else ``None``
  (:func:`admission_block`: the same as a :class:`~raypipe.scheduler.types.Blocked`).
* :func:`explain_wait` -- why a request does not fit now ("largest free block is ...").
* :class:`FreeLedger` -- the mutable, per-decision working copy policies use to
  place many requests in a row without re-reading the snapshot.

Rules (all strategies are all-or-nothing; dead nodes and nodes missing a label
of ``label_selector`` are never used):

* ``STRICT_PACK``: every bundle on one node.
* ``PACK``: as the ledger's :class:`~raypipe.scheduler.placement_settings.PlacementSettings`
  say (``consolidation``).  With ``none`` (the default): first try one node for the
  whole gang; otherwise first-fit-decreasing (largest bundle first), preferring
  nodes the gang already uses, then a new node.  This is a greedy approximation of
  "fewest nodes".  ``strict`` keeps a gang that fits one node on one node and puts a
  bigger one on whole nodes; ``prefer`` is ``strict`` when that places it, else ``none``.
* ``SPREAD``: each bundle on a node the gang does not use yet when possible,
  otherwise on any node of the gang that still fits it.

Which node among those that fit is ``node_choice`` (:mod:`raypipe.scheduler.placement_choice`):
by default ``best_fit``, the smallest leftover of the bundle's dominant resource (GPU,
else CPU, else memory) after placement, so big free blocks stay whole; bundles
without GPUs first prefer nodes with the least free GPU (not to strand GPUs).
Ties go to the smallest node id, so placement is deterministic.

Speed: nodes are grouped by (free vector, labels); a search scans groups, not
nodes, and a busy cluster has few distinct groups.  The ledger caches failed
request shapes: capacity only shrinks between releases, so a shape that failed
once fails again until something is released.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Mapping

from raypipe.resources import Resources
from raypipe.scheduler import vec
from raypipe.scheduler.fragmentation import TaskMix
from raypipe.scheduler.placement_choice import _UNSET, GroupKey, _gpu_of, _unlist
from raypipe.scheduler.placement_explain import ExplainMixin
from raypipe.scheduler.placement_settings import DEFAULT_PLACEMENT, PlacementSettings
from raypipe.scheduler.types import Blocked, BlockKind, ClusterView, JobRequest, Labels, NodeView, Placement, TeamConfig
from raypipe.scheduler.vec import Vec


class FreeLedger(ExplainMixin):
    """Free capacity per alive node, mutable, for the span of ONE decision.

    Built from a :class:`ClusterView` (``free`` of each node, or its ``total``
    with ``use_total=True``), with the cluster's ``placement`` settings and,
    for ``node_choice: fgd``, the workload's ``task_mix``.  Policies ``place``
    a request, then ``allocate`` it; ``release`` gives capacity back (for
    preemption within the decision).
    """

    __slots__ = (
        "_free",
        "_total",
        "_labels",
        "_groups",
        "_shared",
        "_failed",
        "_match_cache",
        "_settings",
        "_task_mix",
        "_mix_cache",
        "_one_node",
        "_order",
    )

    def __init__(
        self,
        nodes: Iterable[NodeView],
        *,
        use_total: bool = False,
        placement: PlacementSettings | None = None,
        task_mix: TaskMix | None = None,
    ) -> None:
        self._free: dict[str, Vec] = {}
        self._total: dict[str, Vec] = {}
        self._labels: dict[str, Labels] = {}
        self._groups: dict[GroupKey, list[str]] = {}
        # Group lists this ledger may share with copies (copied before a change; see ``copy``).
        self._shared: set[GroupKey] | None = None
        self._failed: set[str] = set()
        self._match_cache: dict[tuple[Labels, Labels], bool] = {}
        self._settings = placement or DEFAULT_PLACEMENT
        self._task_mix = task_mix
        self._mix_cache: list[object] = [_UNSET]
        self._one_node: dict[tuple[Vec, Labels], bool] = {}
        # Group keys sorted by free GPU, built on first use and kept in step (see ``_by_gpu``).
        self._order: list[list[GroupKey] | None] = [None]  # boxed: the mixin fills it in place
        alive = [n for n in nodes if n.alive]
        alive.sort(key=_node_id)
        free, total, labels_of, groups = self._free, self._total, self._labels, self._groups
        # Nodes of one type usually share their ``total`` object: convert it once.
        # (Keyed by id() only for the span of this loop, while ``alive`` holds them.)
        totals: dict[int, Vec] = {}
        for n in alive:
            t = n.total
            tot = totals.get(id(t))
            if tot is None:
                tot = totals[id(t)] = (t.cpu, t.gpu, t.memory_mb, t.custom)
            if use_total:
                fv = tot
            else:
                f = n.free
                fv = (f.cpu, f.gpu, f.memory_mb, f.custom)
            nid = n.node_id
            labels = n.labels
            free[nid] = fv
            total[nid] = tot
            labels_of[nid] = labels
            key = (fv, labels, tot)
            group = groups.get(key)
            if group is None:
                groups[key] = [nid]
            else:
                group.append(nid)  # nodes are visited in id order: groups stay sorted

    def configure(self, placement: PlacementSettings | None, task_mix: TaskMix | None = None) -> FreeLedger:
        """Use these placement settings and task mix from now on (returns the ledger)."""
        placement = placement or DEFAULT_PLACEMENT
        if placement is not self._settings and placement != self._settings:  # identity first: == is pydantic's
            self._settings = placement
            self._failed = set()
            self._mix_cache = [_UNSET]
        if task_mix is not self._task_mix:
            self._task_mix = task_mix
        return self

    def _share_tables(self, other: FreeLedger) -> None:
        """Give ``other`` this ledger's never-mutated tables and settings."""
        other._total = self._total
        other._labels = self._labels
        other._match_cache = self._match_cache  # pure memo of an immutable relation
        other._settings = self._settings
        other._task_mix = self._task_mix
        other._mix_cache = self._mix_cache
        other._one_node = self._one_node

    def totals(self) -> FreeLedger:
        """A new ledger of the same nodes with every node empty (``use_total=True``), same settings.

        Built from this ledger's node tables (never mutated), so a decision
        indexes the cluster view once.
        """
        other = FreeLedger(())
        self._share_tables(other)
        groups = other._groups
        labels_of = self._labels
        for nid, tot in self._total.items():  # id order (insertion order of __init__)
            key = (tot, labels_of[nid], tot)
            group = groups.get(key)
            if group is None:
                groups[key] = [nid]
            else:
                group.append(nid)
        other._free = dict(self._total)  # a mutated copy must not touch _total
        return other

    @classmethod
    def from_cluster(
        cls,
        cluster: ClusterView,
        *,
        use_total: bool = False,
        placement: PlacementSettings | None = None,
        task_mix: TaskMix | None = None,
    ) -> FreeLedger:
        """A ledger of ``cluster``'s alive nodes, placing with ``placement`` (default: ``none`` + ``best_fit``).
        A copy of the view's template (a view made by :meth:`ClusterView.replace_nodes` derives
        it from its source's, see :func:`derive_ledgers`): no node is indexed again."""
        template = _template(cluster, use_total)
        if template is None:  # index the view once: later decisions on the same view copy it
            template = cls(cluster.nodes, use_total=use_total)
            cluster.keep_ledger_template(use_total, template)
        return template.copy().configure(placement, task_mix)

    # ------------------------------------------------------------------ queries

    def has_node(self, node_id: str) -> bool:
        """True when ``node_id`` is an alive node of this ledger."""
        return node_id in self._free

    def fits_on(self, request: JobRequest, node_id: str) -> bool:
        """True when the whole gang fits on ``node_id`` alone (labels included)."""
        fv = self._free.get(node_id)
        return (
            fv is not None
            and vec.fits(request.demand_vec, fv)
            and self._match(self._labels[node_id], request.label_selector)
        )

    def matches(self, node_id: str, selector: Labels) -> bool:
        """True when the node carries every label of ``selector``."""
        return self._match(self._labels[node_id], selector)

    def free_vec(self, node_id: str) -> Vec:
        """Free capacity of an alive node."""
        return self._free[node_id]

    def total_vec(self, node_id: str) -> Vec:
        """Total capacity of an alive node."""
        return self._total[node_id]

    def labels_of(self, node_id: str) -> Labels:
        """Labels of an alive node."""
        return self._labels[node_id]

    def slots(self, bundle: Vec, selector: Labels, cap: int) -> int:
        """How many copies of ``bundle`` fit on matching nodes (each node counted up to ``cap``).

        Stops counting once ``cap`` is reached.  For a gang of ``cap`` identical
        bundles that may spread (not :meth:`whole_nodes`), the greedy placement
        succeeds exactly when this is ``cap``.
        """
        total = 0
        for (fv, labels, _), ids in self._groups.items():
            if not self._match(labels, selector):
                continue
            n = 0
            f = fv
            while n < cap and vec.fits(bundle, f):
                f = vec.sub(f, bundle)
                n += 1
            total += n * len(ids)
            if total >= cap:
                return cap
        return total

    def free_of(self, node_id: str) -> Resources:
        """What is free on a node now (within this decision)."""
        return vec.to_resources(self._free[node_id])

    def _match(self, labels: Labels, selector: Labels) -> bool:
        if not selector:
            return True
        key = (labels, selector)
        hit = self._match_cache.get(key)
        if hit is None:
            hit = all(p in labels for p in selector)
            self._match_cache[key] = hit
        return hit

    def place(self, request: JobRequest) -> Placement | None:
        """Where ``request`` would go now, or ``None``; does not allocate."""
        key = request.shape_key
        if key in self._failed:
            return None
        placement = self._place(request)
        if placement is None:
            self._failed.add(key)
        return placement

    def _place(self, request: JobRequest) -> Placement | None:
        sel = request.label_selector
        n = len(request.bundle_vecs)
        strategy = request.strategy
        if n == 1 or strategy == "STRICT_PACK":
            nid = self._best(request.demand_vec, sel, {})
            return None if nid is None else Placement((nid,) * n)
        if strategy == "PACK":
            mode = self._settings.consolidation
            if mode == "none" or self.fits_one_node_total(request):
                nid = self._best(request.demand_vec, sel, {})
                if nid is not None:
                    return Placement((nid,) * n)
                if mode == "strict":
                    return None
            else:
                placement = self._place_whole_nodes(request)
                if placement is not None or mode == "strict":
                    return placement
        return self._greedy(request)

    def _greedy(self, request: JobRequest) -> Placement | None:
        """Bundle by bundle, largest first: ``PACK`` prefers the gang's nodes, ``SPREAD`` new ones."""
        sel = request.label_selector
        bvecs = request.bundle_vecs
        n = len(bvecs)
        order = sorted(range(n), key=lambda i: (-bvecs[i][1], -bvecs[i][0], -bvecs[i][2], i))
        touched: dict[str, Vec] = {}
        out: list[str] = [""] * n
        spread = request.strategy == "SPREAD"
        for i in order:
            need = bvecs[i]
            if spread:
                nid = self._best(need, sel, touched) or self._best_touched(need, touched)
            else:
                nid = self._best_touched(need, touched) or self._best(need, sel, touched)
            if nid is None:
                return None
            touched[nid] = vec.sub(touched.get(nid, self._free[nid]), need)
            out[i] = nid
        return Placement(tuple(out))

    # ---------------------------------------------------------------- mutation

    def copy(self) -> FreeLedger:
        """An independent copy (e.g. to project capacity into the future)."""
        other = FreeLedger(())
        self._share_tables(other)
        other._free = dict(self._free)
        # Copy-on-write group lists: both ledgers share them and copy one before changing it.
        other._groups = dict(self._groups)
        other._shared = set(self._groups)
        self._shared = set(self._groups)
        other._failed = set(self._failed)
        other._order = [None if self._order[0] is None else list(self._order[0])]
        return other

    def can_allocate(self, request: JobRequest, placement: Placement) -> bool:
        """True when ``placement`` of ``request`` fits this ledger's free capacity node by node."""
        for nid, need in self._per_node(request, placement).items():
            if nid not in self._free or not vec.fits(need, self._free[nid]):
                return False
        return True

    def _set(self, nid: str, new: Vec) -> None:
        old = self._free[nid]
        labels = self._labels[nid]
        tot = self._total[nid]
        okey = (old, labels, tot)
        groups, shared = self._groups, self._shared
        group = groups[okey]
        order = self._order[0]
        if shared and okey in shared:
            shared.discard(okey)
            if len(group) == 1:
                del groups[okey]
                if order is not None:
                    _unlist(order, okey)
            else:
                group = groups[okey] = list(group)
                del group[bisect.bisect_left(group, nid)]
        else:
            del group[bisect.bisect_left(group, nid)]  # groups are sorted: no linear search
            if not group:
                del groups[okey]
                if order is not None:
                    _unlist(order, okey)
        nkey = (new, labels, tot)
        ngroup = groups.get(nkey)
        if ngroup is None:
            groups[nkey] = [nid]
            if order is not None:
                bisect.insort(order, nkey, key=_gpu_of)
        elif shared and nkey in shared:
            shared.discard(nkey)
            ngroup = groups[nkey] = list(ngroup)
            bisect.insort(ngroup, nid)
        else:
            bisect.insort(ngroup, nid)
        self._free[nid] = new

    def _per_node(self, request: JobRequest, placement: Placement) -> dict[str, Vec]:
        if len(placement.bundle_nodes) != len(request.bundle_vecs):
            raise ValueError(f"placement of {request.job_id!r} has the wrong number of bundles")
        out: dict[str, Vec] = {}
        for v, nid in zip(request.bundle_vecs, placement.bundle_nodes, strict=True):
            out[nid] = vec.add(out[nid], v) if nid in out else v
        return out

    def allocate(self, request: JobRequest, placement: Placement) -> None:
        """Take ``request``'s bundles from the nodes of ``placement``.

        Raises ``ValueError`` when a node is unknown or lacks capacity (a bug in the caller).
        """
        nodes, bvecs = placement.bundle_nodes, request.bundle_vecs
        if len(nodes) == 1 and len(bvecs) == 1:  # one bundle (the common case): no per-node sums
            nid, need = nodes[0], bvecs[0]
            f = self._free.get(nid)
            if f is None or not vec.fits(need, f):
                raise ValueError(f"cannot allocate {vec.to_resources(need)} of {request.job_id!r} on {nid!r}")
            self._set(nid, vec.sub(f, need))
            return
        per = self._per_node(request, placement)
        for nid, need in per.items():
            if nid not in self._free or not vec.fits(need, self._free[nid]):
                raise ValueError(f"cannot allocate {vec.to_resources(need)} of {request.job_id!r} on {nid!r}")
        for nid, need in per.items():
            self._set(nid, vec.sub(self._free[nid], need))

    def allocate_many(self, jobs: Iterable[tuple[JobRequest, Placement]]) -> None:
        """``allocate`` each job in turn."""
        for request, placement in jobs:
            self.allocate(request, placement)

    def release(self, request: JobRequest, placement: Placement) -> None:
        """Give ``request``'s bundles back (clamped at node totals; dead/unknown nodes ignored)."""
        for nid, give in self._per_node(request, placement).items():
            if nid in self._free:
                self._set(nid, vec.clamp(vec.add(self._free[nid], give), self._total[nid]))
        self._failed.clear()

    def release_many(self, jobs: Iterable[tuple[JobRequest, Placement]]) -> set[str]:
        """``release`` of many jobs at once; returns the nodes that got capacity back.  Sums what each
        node gets back first, so every node moves between groups once (as releasing one by one)."""
        return self.release_sums(bundle_sums(jobs))

    def release_sums(self, gains: Mapping[str, Vec]) -> set[str]:
        """Give back what :func:`bundle_sums` of some jobs gives each node (unknown nodes
        ignored, clamped at node totals); returns the nodes of this ledger that got it."""
        free, total = self._free, self._total
        changes: list[tuple[str, Vec]] = []
        touched: set[str] = set()
        for nid, give in gains.items():
            f = free.get(nid)
            if f is None:
                continue
            touched.add(nid)
            if f[3] or give[3] or total[nid][3]:
                new = vec.clamp(vec.add(f, give), total[nid])
            else:  # vec.clamp(vec.add(...)) without custom kinds, inlined
                t = total[nid]
                new = (min(f[0] + give[0], t[0]), min(f[1] + give[1], t[1]), min(f[2] + give[2], t[2]), ())
            if new != f:
                changes.append((nid, new))
        if len(changes) * 4 > len(free):  # most nodes change: regroup once instead of moving each
            free.update(changes)
            self._regroup()
        else:
            for nid, new in changes:
                self._set(nid, new)
        self._failed.clear()
        return touched

_node_id = operator.attrgetter("node_id")


def bundle_sums(jobs: Iterable[tuple[JobRequest, Placement]]) -> dict[str, Vec]:
    """What the jobs hold on each node (their bundles summed per node, in the jobs' order)."""
    gains: dict[str, Vec] = {}
    for request, placement in jobs:
        for v, nid in zip(request.bundle_vecs, placement.bundle_nodes, strict=True):
            g = gains.get(nid)
            if g is None:
                gains[nid] = v
            elif g[3] or v[3]:
                gains[nid] = vec.add(g, v)
            else:  # vec.add without custom kinds, inlined (the same sums)
                gains[nid] = (g[0] + v[0], g[1] + v[1], g[2] + v[2], ())
    return gains


def derive_ledgers(
    parent: ClusterView, changed: Mapping[str, NodeView], *, take: bool = False
) -> dict[bool, FreeLedger]:
    """Ledger templates (by ``use_total``) of ``parent`` with the ``changed`` nodes replaced.

    For views made by :meth:`ClusterView.replace_nodes`.  The free template is a copy of
    the parent's (indexed from scratch the first time) with only the changed
    nodes moved between groups; the total template is shared, as only ``free``
    changed.  Templates are never mutated after this; ledgers are copies.
    When a change touches a node's total, labels or liveness, nothing is derived (ledgers of
    the new view are then built from its nodes).  ``take``: see ``replace_nodes(handoff=True)``.
    """
    for nid, node in changed.items():
        old = parent.node(nid)
        if node.alive != old.alive or node.labels != old.labels or node.total != old.total:
            return {}
    free = _template(parent, False)
    if free is None:
        free = FreeLedger(parent.nodes)
        parent.keep_ledger_template(False, free)
    total = _template(parent, True)
    if total is None:
        total = FreeLedger(parent.nodes, use_total=True)
        parent.keep_ledger_template(True, total)
    if take:  # the parent is placed on no more: its template moves here (earlier copies share lists copy-on-write)
        parent.take_ledger_template(False)
    else:
        free = free.copy()
    for nid, node in changed.items():
        if node.alive:
            f = node.free
            fv = vec.of(f)
            if free._free[nid] != fv:
                free._set(nid, fv)
    return {False: free, True: total}


def _template(view: ClusterView, use_total: bool) -> FreeLedger | None:
    """``view``'s ledger template, derived first when ``view`` was made by ``replace_nodes``."""
    template: FreeLedger | None = view.ledger_template(use_total)
    if template is None:
        source = view.replaced_from()
        if source is not None:
            view.keep_derived_templates(derive_ledgers(*source, take=view.hands_off()))
            template = view.ledger_template(use_total)
    return template


def exceeds_quota(demand: Resources, quota: Resources | None) -> str | None:
    """The first quota-limited kind ``demand`` exceeds, as ``"16 GPU > 8 GPU"``; ``None`` when within."""
    if quota is None:
        return None
    d, q = vec.of(demand), vec.of(quota)
    for i in (vec.GPU, vec.CPU, vec.MEMORY):
        di, qi = vec.component(d, i), vec.component(q, i)
        if qi > vec.EPS and di > qi + vec.EPS:
            return f"{di:g} {vec.DIM_NAMES[i]} > {qi:g} {vec.DIM_NAMES[i]}"
    qc = dict(q[3])
    for k, x in d[3]:
        if qc.get(k, 0.0) > vec.EPS and x > qc[k] + vec.EPS:
            return f"{x:g} {k} > {qc[k]:g} {k}"
    return None


def place(request: JobRequest, cluster: ClusterView, placement: PlacementSettings | None = None) -> Placement | None:
    """A placement of the whole gang on ``cluster``'s free capacity, or ``None`` (never partial)."""
    return FreeLedger.from_cluster(cluster, placement=placement).place(request)


def explain_wait(request: JobRequest, cluster: ClusterView, placement: PlacementSettings | None = None) -> str:
    """Why ``request`` cannot start now on ``cluster``, e.g.
    ``needs 4 GPU on one node; largest free block is 2 GPU (node-3)``.

    Returns ``"fits now"`` when it does fit.
    """
    ledger = FreeLedger.from_cluster(cluster, placement=placement)
    if ledger.place(request) is not None:
        return "fits now"
    return ledger.explain(request)


def quota_never_block(request: JobRequest, quota: Resources | None) -> Blocked | None:
    """``EXCEEDS_QUOTA`` when ``request``'s demand alone exceeds ``quota``, else ``None``."""
    over = exceeds_quota(request.demand, quota)
    if over is None:
        return None
    return Blocked(BlockKind.EXCEEDS_QUOTA, f"never schedulable: demand exceeds team {request.team}'s quota ({over})")


def never_block(
    request: JobRequest, total_ledger: FreeLedger, quota: Resources | None, *, allow_borrowing: bool
) -> Blocked | None:
    """:func:`admission_block` against a prebuilt ``use_total=True`` ledger (policies cache it)."""
    if not allow_borrowing:
        over = quota_never_block(request, quota)
        if over is not None:
            return over
    if total_ledger.place(request) is None:
        return Blocked(
            BlockKind.NEVER_FITS, "never schedulable: " + total_ledger.explain(request, capacity_word="node")
        )
    return None


def never_reason(
    request: JobRequest, total_ledger: FreeLedger, quota: Resources | None, *, allow_borrowing: bool
) -> str | None:
    """The text of :func:`never_block`."""
    blocked = never_block(request, total_ledger, quota, allow_borrowing=allow_borrowing)
    return None if blocked is None else blocked.text


def admission_block(
    request: JobRequest,
    cluster: ClusterView,
    teams: Mapping[str, TeamConfig] | None = None,
    *,
    allow_borrowing: bool = False,
    placement: PlacementSettings | None = None,
) -> Blocked | None:
    """Why ``request`` can NEVER run on ``cluster``, else ``None``.

    ``EXCEEDS_QUOTA``: its demand exceeds its team's quota while borrowing is
    not allowed (only a policy that lends idle quota allows it).
    ``NEVER_FITS``: it cannot be placed even with every alive node empty (a
    bundle larger than any matching node's total, a label no alive node
    carries, a STRICT_PACK gang bigger than any node, a gang bigger than the
    matching nodes together).  The check uses the same greedy placement as
    :func:`place`, so a gang that only an exact bin-packing could fit is
    reported as never fitting.  ``placement``: the cluster's placement settings.
    """
    quota = (teams or {}).get(request.team, TeamConfig()).quota
    ledger = FreeLedger.from_cluster(cluster, use_total=True, placement=placement)
    return never_block(request, ledger, quota, allow_borrowing=allow_borrowing)


def feasible_ever(
    request: JobRequest,
    cluster: ClusterView,
    teams: Mapping[str, TeamConfig] | None = None,
    *,
    allow_borrowing: bool = False,
    placement: PlacementSettings | None = None,
) -> str | None:
    """A reason when ``request`` can NEVER run on ``cluster``, else ``None`` (the text of :func:`admission_block`)."""
    blocked = admission_block(request, cluster, teams, allow_borrowing=allow_borrowing, placement=placement)
    return None if blocked is None else blocked.text
