"""Immutable value types of the scheduler: cluster views, requests, snapshots, decisions.

Everything here is a frozen, slotted dataclass.  Mappings given by callers
(labels, label selectors, teams, reasons) are frozen on construction: labels and
selectors become sorted tuples of pairs, ``teams`` and ``reasons`` become
read-only ``MappingProxyType`` views of private copies.

:class:`Blocked` is why a job may not start, as a kind (:class:`BlockKind`,
for code to branch on) and a text (for people).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

from raypipe.resources import Resources
from raypipe.scheduler import vec
from raypipe.scheduler.errors import InvalidRequestError
from raypipe.scheduler.placement_settings import DEFAULT_PLACEMENT, PlacementSettings
from raypipe.scheduler.vec import Vec

if TYPE_CHECKING:
    from raypipe.scheduler.fragmentation import TaskMix

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: members are strings, ``str()`` gives the value."""

        def __str__(self) -> str:
            return str(self.value)


Strategy = Literal["PACK", "SPREAD", "STRICT_PACK"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

Labels = tuple[tuple[str, str], ...]
_JOB_ID = operator.attrgetter("job_id")
_REQUEST_ID = operator.attrgetter("request.job_id")


def freeze_labels(labels: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Labels:
    """Sorted tuple of ``(key, value)`` string pairs from a mapping or pairs."""
    if labels is None:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple(sorted((str(k), str(v)) for k, v in items))


def _format_labels(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the scheduler sees it: capacity, what is free now, labels, liveness."""

    node_id: str
    total: Resources
    free: Resources
    labels: Labels = ()
    alive: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.labels, tuple) or any(not isinstance(p, tuple) for p in self.labels):
            object.__setattr__(self, "labels", freeze_labels(self.labels))
        if not self.total.nonnegative() or not self.free.nonnegative():
            raise InvalidRequestError(
                f"node {self.node_id!r}: resources must be >= 0, got total={self.total}, free={self.free}"
            )

    @property
    def labels_dict(self) -> dict[str, str]:
        """Labels as a plain dict."""
        return dict(self.labels)

    def matches(self, selector: Labels) -> bool:
        """True when every ``(key, value)`` of ``selector`` is one of this node's labels."""
        return all(p in self.labels for p in selector)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where each bundle of a gang goes: ``bundle_nodes[i]`` is the node of bundle ``i``."""

    bundle_nodes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.bundle_nodes, tuple):
            object.__setattr__(self, "bundle_nodes", tuple(self.bundle_nodes))

    @property
    def nodes(self) -> frozenset[str]:
        """The distinct nodes used."""
        return frozenset(self.bundle_nodes)

    def __len__(self) -> int:
        return len(self.bundle_nodes)


def per_node(bundles: Sequence[Resources], placement: Placement) -> dict[str, Resources]:
    """Sum of the bundles placed on each node."""
    if len(bundles) != len(placement.bundle_nodes):
        raise InvalidRequestError(f"placement has {len(placement.bundle_nodes)} nodes for {len(bundles)} bundles")
    out: dict[str, Resources] = {}
    for b, n in zip(bundles, placement.bundle_nodes, strict=True):
        out[n] = out[n] + b if n in out else b
    return out


@dataclass(frozen=True, slots=True)
class ClusterView:
    """An immutable view of the cluster's nodes.  ``free`` of each node is authoritative."""

    nodes: tuple[NodeView, ...]
    _by_id: Mapping[str, NodeView] = field(init=False, repr=False, compare=False)
    # Placement-ledger templates keyed by ``use_total`` (see ``ledger_template``).
    _ledgers: dict[bool, Any] = field(init=False, repr=False, compare=False)
    # (view, replaced nodes) of ``replace_nodes`` until the templates are derived (see ``replaced_from``).
    _source: tuple[ClusterView, Mapping[str, NodeView]] | None = field(init=False, repr=False, compare=False)
    # ``replace_nodes(..., handoff=True)``: the templates are taken over from the source view, not copied.
    _handoff: bool = field(init=False, repr=False, compare=False)
    # ``total()`` once computed (a view made by ``replace_nodes`` keeps its source's when no total changed).
    _total: Resources | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, tuple):
            object.__setattr__(self, "nodes", tuple(self.nodes))
        by_id = {n.node_id: n for n in self.nodes}
        if len(by_id) != len(self.nodes):
            raise InvalidRequestError("duplicate node ids in ClusterView")
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))
        object.__setattr__(self, "_ledgers", {})
        object.__setattr__(self, "_source", None)
        object.__setattr__(self, "_handoff", False)
        object.__setattr__(self, "_total", None)

    def replace_nodes(self, changed: Iterable[NodeView], *, handoff: bool = False) -> ClusterView:
        """A view with ``changed`` nodes (known ids) replacing this view's, other nodes shared.

        For callers that update a view many times (the simulator): the placement
        ledgers policies build from the result are derived from this view's by
        touching only the changed nodes (see :meth:`replaced_from`), so a
        decision on it does not pay O(nodes) to index the cluster.  Equal to
        ``ClusterView(<nodes with replacements>)`` in every observable way.
        ``handoff=True`` (a caller that places on this view no more, e.g. the
        simulator moving on): the new view takes this view's free-capacity
        template over instead of copying it (this view indexes itself again
        if it is ever used).
        """
        repl = {n.node_id: n for n in changed}
        unknown = [nid for nid in repl if nid not in self._by_id]
        if unknown:
            raise InvalidRequestError(f"unknown node(s) {', '.join(map(repr, unknown))}")
        by_id = self._by_id.copy()  # type: ignore[attr-defined]  # MappingProxyType.copy: a dict
        by_id.update(repl)
        new = object.__new__(ClusterView)
        object.__setattr__(new, "nodes", tuple(by_id.values()))
        object.__setattr__(new, "_by_id", MappingProxyType(by_id))
        object.__setattr__(new, "_ledgers", {})
        object.__setattr__(new, "_source", (self, MappingProxyType(repl)))
        object.__setattr__(new, "_handoff", handoff)
        total = self._total
        for nid, node in repl.items() if total is not None else ():
            old = self._by_id[nid]
            if node.alive != old.alive or (node.total is not old.total and node.total != old.total):
                total = None
                break
        object.__setattr__(new, "_total", total)
        return new

    def replaced_from(self) -> tuple[ClusterView, Mapping[str, NodeView]] | None:
        """For a view made by :meth:`replace_nodes` whose ledger templates are not derived yet:
        the view it was made from and the nodes replaced; else ``None``."""
        return self._source

    def hands_off(self) -> bool:
        """True when this view was made by ``replace_nodes(..., handoff=True)``."""
        return self._handoff

    def take_ledger_template(self, use_total: bool) -> Any | None:
        """Remove and return the template kept for ``use_total`` (``None`` when there is none)."""
        return self._ledgers.pop(use_total, None)

    def ledger_template(self, use_total: bool) -> Any | None:
        """The placement ledger kept on this view for ``use_total``; ``None`` when there is none.

        Owned by :class:`~raypipe.scheduler.placement.FreeLedger`: ledgers are
        copies of the template, which is never mutated.
        """
        return self._ledgers.get(use_total)

    def keep_ledger_template(self, use_total: bool, ledger: Any) -> None:
        """Keep ``ledger`` as this view's template for ``use_total`` (a cache: the view is unchanged)."""
        self._ledgers[use_total] = ledger

    def keep_derived_templates(self, templates: Mapping[bool, Any]) -> None:
        """Keep the templates derived for a view made by :meth:`replace_nodes` (possibly none);
        :meth:`replaced_from` is ``None`` from then on."""
        self._ledgers.update(templates)
        object.__setattr__(self, "_source", None)

    def node(self, node_id: str) -> NodeView:
        """The node with this id; raises ``InvalidRequestError`` when unknown."""
        try:
            return self._by_id[node_id]
        except KeyError:
            raise InvalidRequestError(f"unknown node {node_id!r}") from None

    def alive_nodes(self) -> tuple[NodeView, ...]:
        """Nodes that can host work."""
        return tuple(n for n in self.nodes if n.alive)

    def total(self) -> Resources:
        """Total capacity of alive nodes."""
        total = self._total
        if total is None:
            total = vec.to_resources(vec.total(vec.of(n.total) for n in self.nodes if n.alive))
            object.__setattr__(self, "_total", total)
        return total

    def free(self) -> Resources:
        """Free capacity of alive nodes."""
        return vec.to_resources(vec.total(vec.of(n.free) for n in self.nodes if n.alive))

    def with_allocation(self, placement: Placement, bundles: Sequence[Resources]) -> ClusterView:
        """A new view with ``bundles`` subtracted from the nodes of ``placement``.

        Raises ``InvalidRequestError`` when a bundle does not fit or a node is dead.
        """
        changed: dict[str, NodeView] = {}
        for nid, need in per_node(bundles, placement).items():
            node = self.node(nid)
            if not node.alive or not need.fits(node.free):
                raise InvalidRequestError(
                    f"cannot allocate {need} on node {nid!r} (free: {node.free}, alive: {node.alive})"
                )
            changed[nid] = NodeView(nid, node.total, node.free - need, node.labels, node.alive)
        return ClusterView(tuple(changed.get(n.node_id, n) for n in self.nodes))

    def with_release(self, placement: Placement, bundles: Sequence[Resources]) -> ClusterView:
        """A new view with ``bundles`` given back to their nodes (clamped at each node's total)."""
        changed: dict[str, NodeView] = {}
        for nid, give in per_node(bundles, placement).items():
            node = self.node(nid)
            free = vec.clamp(vec.add(vec.of(node.free), vec.of(give)), vec.of(node.total))
            changed[nid] = NodeView(nid, node.total, vec.to_resources(free), node.labels, node.alive)
        return ClusterView(tuple(changed.get(n.node_id, n) for n in self.nodes))


#: (bundles, their vectors, their sum as a vector and as Resources, shape keys by (strategy, selector)).
_Shape = tuple[tuple[Resources, ...], tuple[Vec, ...], Vec, Resources, dict[tuple[str, Labels], str]]
#: What ``JobRequest`` derives from its bundles, by the ``id`` of the bundles tuple: requests made
#: from one tuple (the simulator's per-shape bundles, ``dataclasses.replace`` of a request) derive
#: it once.  Each entry holds its tuple, so an id is never reused while it is cached.
_SHAPES: dict[int, _Shape] = {}


def _shape_of(bundles: tuple[Resources, ...]) -> _Shape | None:
    """The derived vectors of ``bundles`` (``None`` when a bundle is not non-negative ``Resources``)."""
    hit = _SHAPES.get(id(bundles))
    if hit is not None and hit[0] is bundles:
        return hit
    if any(not isinstance(b, Resources) or not b.nonnegative() for b in bundles):
        return None
    bvecs = tuple(vec.of(b) for b in bundles)
    dvec = vec.total(bvecs)
    if len(_SHAPES) >= 4096:
        _SHAPES.clear()
    shape = _SHAPES[id(bundles)] = (bundles, bvecs, dvec, vec.to_resources(dvec), {})
    return shape


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job waiting for resources: a gang of bundles placed all-or-nothing.

    ``label_selector`` (a mapping or pairs, stored as sorted pairs) lists node
    labels every bundle's node must carry.  ``attained_service`` is the
    GPU-seconds the job already ran (for least-attained-service policies);
    ``enqueue_time`` is when it last (re)entered the queue (defaults to
    ``submit_time``) and ``last_run_s`` how long its last run lasted (both only
    used by LAS's starvation guard).

    Derived on construction (read-only, for placement and policies):
    ``bundle_vecs`` (each bundle as a :data:`~raypipe.scheduler.vec.Vec`),
    ``demand_vec`` (their sum) and ``shape_key`` (equal for requests that place
    identically: same bundles, strategy and selector).
    """

    job_id: str
    bundles: tuple[Resources, ...]
    submit_time: float = 0.0
    strategy: Strategy = "PACK"
    priority: int = 0
    team: str = "default"
    duration_estimate_s: float | None = None
    preemptible: bool = True
    label_selector: Labels = ()
    attained_service: float = 0.0
    enqueue_time: float | None = None
    last_run_s: float = 0.0
    bundle_vecs: tuple[Vec, ...] = field(init=False, repr=False, compare=False)
    demand_vec: Vec = field(init=False, repr=False, compare=False)
    shape_key: str = field(init=False, repr=False, compare=False)
    _demand: Resources = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.bundles, tuple):
            object.__setattr__(self, "bundles", tuple(self.bundles))
        if not self.bundles:
            raise InvalidRequestError(f"job {self.job_id!r}: a request needs at least one bundle")
        shape = _shape_of(self.bundles)
        if shape is None:
            raise InvalidRequestError(f"job {self.job_id!r}: bundles must be non-negative Resources")
        if self.strategy not in STRATEGIES:
            raise InvalidRequestError(
                f"job {self.job_id!r}: strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}"
            )
        if self.duration_estimate_s is not None and self.duration_estimate_s < 0:
            raise InvalidRequestError(
                f"job {self.job_id!r}: duration_estimate_s must be >= 0, got {self.duration_estimate_s}"
            )
        if self.attained_service < 0:
            raise InvalidRequestError(f"job {self.job_id!r}: attained_service must be >= 0")
        if not isinstance(self.label_selector, tuple) or any(not isinstance(p, tuple) for p in self.label_selector):
            object.__setattr__(self, "label_selector", freeze_labels(self.label_selector))
        _, bvecs, dvec, demand, keys = shape
        object.__setattr__(self, "bundle_vecs", bvecs)
        object.__setattr__(self, "demand_vec", dvec)
        object.__setattr__(self, "_demand", demand)
        how = (self.strategy, self.label_selector)
        key = keys.get(how)
        if key is None:
            key = keys[how] = repr((bvecs, self.strategy, self.label_selector))
        object.__setattr__(self, "shape_key", key)

    @property
    def demand(self) -> Resources:
        """Sum of the bundles."""
        return self._demand

    @property
    def gpus(self) -> float:
        """GPUs of the whole gang."""
        return self.demand_vec[vec.GPU]

    @property
    def wait_start(self) -> float:
        """When the job last entered the queue."""
        return self.submit_time if self.enqueue_time is None else self.enqueue_time

    def describe_selector(self) -> str:
        """``k=v,k2=v2`` form of the label selector."""
        return _format_labels(self.label_selector)


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job holding resources.  ``borrowed`` marks a job started on capacity above its team's quota."""

    request: JobRequest
    placement: Placement
    start_time: float
    expected_end: float | None = None
    borrowed: bool = False

    def __post_init__(self) -> None:
        if len(self.placement.bundle_nodes) != len(self.request.bundles):
            raise InvalidRequestError(
                f"running job {self.request.job_id!r}: placement has {len(self.placement.bundle_nodes)} "
                f"nodes for {len(self.request.bundles)} bundles"
            )

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def end_estimate(self) -> float | None:
        """``expected_end``, else ``start_time + duration_estimate_s``, else ``None`` (unknown)."""
        if self.expected_end is not None:
            return self.expected_end
        if self.request.duration_estimate_s is not None:
            return self.start_time + self.request.duration_estimate_s
        return None

    def attained_at(self, now: float) -> float:
        """GPU-seconds attained by ``now``: earlier runs plus GPUs x time in this run."""
        return self.request.attained_service + self.request.gpus * max(0.0, now - self.start_time)


@dataclass(frozen=True, slots=True)
class TeamConfig:
    """A team's quota (``None``: unlimited), priority bonus and fair-share weight.

    A quota limits only the resource kinds it sets to a positive value:
    ``Resources.of(gpu=8)`` caps GPUs and leaves CPU and memory unlimited.
    """

    quota: Resources | None = None
    priority: int = 0
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise InvalidRequestError(f"team weight must be > 0, got {self.weight}")
        if self.quota is not None and not self.quota.nonnegative():
            raise InvalidRequestError(f"team quota must be >= 0, got {self.quota}")


DEFAULT_TEAM = TeamConfig()
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a policy may look at: time, queue (in submit order), running jobs, cluster, teams.

    ``placement`` is how the cluster places gangs (consolidation, node choice; the
    same for every policy: :class:`~raypipe.scheduler.context.DecisionContext`
    builds its ledger with it) and ``task_mix`` the workload's task mix that
    ``node_choice: fgd`` needs (``None``: none known yet, fgd acts as best_fit).
    """

    now: float
    queue: tuple[JobRequest, ...]
    running: tuple[RunningJob, ...]
    cluster: ClusterView
    teams: Mapping[str, TeamConfig] = field(default_factory=lambda: MappingProxyType({}))
    placement: PlacementSettings = DEFAULT_PLACEMENT
    task_mix: TaskMix | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.queue, tuple):
            object.__setattr__(self, "queue", tuple(self.queue))
        if not isinstance(self.running, tuple):
            object.__setattr__(self, "running", tuple(self.running))
        if not isinstance(self.teams, MappingProxyType):
            object.__setattr__(self, "teams", MappingProxyType(dict(self.teams)))
        ids = set(map(_JOB_ID, self.queue))  # C-level passes: this runs on every decision
        if len(ids) != len(self.queue):
            raise InvalidRequestError("duplicate job ids in the queue")
        run_ids = set(map(_REQUEST_ID, self.running))
        if not ids.isdisjoint(run_ids):
            both = next(r.request.job_id for r in self.running if r.request.job_id in ids)
            raise InvalidRequestError(f"job {both!r} is both queued and running")
        if len(run_ids) != len(self.running):
            raise InvalidRequestError("duplicate job ids among running jobs")

    @classmethod
    def unchecked(
        cls,
        now: float,
        queue: tuple[JobRequest, ...],
        running: tuple[RunningJob, ...],
        cluster: ClusterView,
        teams: MappingProxyType[str, TeamConfig],
        placement: PlacementSettings = DEFAULT_PLACEMENT,
        task_mix: TaskMix | None = None,
    ) -> Snapshot:
        """A snapshot without the O(queue + running) checks of the constructor, for a caller
        whose state guarantees them (the simulator: job ids unique, queued xor running)."""
        snap = object.__new__(cls)
        for name, value in (
            ("now", now),
            ("queue", queue),
            ("running", running),
            ("cluster", cluster),
            ("teams", teams),
            ("placement", placement),
            ("task_mix", task_mix),
        ):
            object.__setattr__(snap, name, value)
        return snap

    def team(self, name: str) -> TeamConfig:
        """The team's config, or the default (no quota, weight 1) when not configured."""
        return self.teams.get(name, DEFAULT_TEAM)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now.

    ``starts`` are ``(job_id, placement)`` pairs, ``preemptions`` ids of running
    jobs to stop and requeue (their resources are already counted free for the
    starts), ``borrowed`` the started ids that run on borrowed capacity (above
    their team's quota; the controller records them as ``RunningJob.borrowed``),
    and ``reasons`` a human-readable reason for every queued job left waiting.
    """

    starts: tuple[tuple[str, Placement], ...] = ()
    preemptions: tuple[str, ...] = ()
    reasons: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    borrowed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.starts, tuple):
            object.__setattr__(self, "starts", tuple(self.starts))
        if not isinstance(self.preemptions, tuple):
            object.__setattr__(self, "preemptions", tuple(self.preemptions))
        if not isinstance(self.borrowed, tuple):
            object.__setattr__(self, "borrowed", tuple(self.borrowed))
        if not isinstance(self.reasons, MappingProxyType):
            object.__setattr__(self, "reasons", MappingProxyType(dict(self.reasons)))

    @property
    def started_ids(self) -> tuple[str, ...]:
        """Ids of the started jobs, in start order."""
        return tuple(j for j, _ in self.starts)


class BlockKind(StrEnum):
    """Why a job may not start, for code to branch on (the text of a :class:`Blocked` is for people)."""

    #: Its demand exceeds its team's quota: it never runs within the quota (only borrowing could help).
    EXCEEDS_QUOTA = "exceeds_quota"
    #: It cannot be placed even with every alive node empty (a bigger cluster could help).
    NEVER_FITS = "never_fits"
    #: Its team's usage plus its demand exceeds the quota now.
    AT_QUOTA = "at_quota"
    #: The free capacity does not hold it now (or holds it only by delaying a job ahead of it).
    NO_CAPACITY = "no_capacity"

    @property
    def never(self) -> bool:
        """True for the kinds that do not pass with time (``EXCEEDS_QUOTA``, ``NEVER_FITS``)."""
        return self is BlockKind.EXCEEDS_QUOTA or self is BlockKind.NEVER_FITS


class Blocked(NamedTuple):
    """Why a job may not start, as ``(kind, text)``: ``kind`` for code, ``text`` for people (a decision's reason)."""

    kind: BlockKind
    text: str

    @property
    def never(self) -> bool:
        """True when the job can never start as the cluster and its team's quota are."""
        return self.kind.never

    def __str__(self) -> str:
        return self.text
