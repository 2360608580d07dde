"""Immutable value types of the scheduler: cluster views, requests, snapshots, decisions.

Everything here is a frozen, slotted dataclass.  Mappings given by callers
(labels, label selectors, teams, reasons) are frozen on construction: labels and
selectors become sorted tuples of pairs, ``teams`` and ``reasons`` become
read-only ``MappingProxyType`` views of private copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from raypipe.resources import Resources
from raypipe.scheduler import _vec
from raypipe.scheduler.errors import InvalidRequestError

Strategy = Literal["PACK", "SPREAD", "STRICT_PACK"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

Labels = tuple[tuple[str, str], ...]


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
            object.__setattr__(self, "labels", freeze_labels(self.labels))  # type: ignore[arg-type]
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
    # Placement-ledger templates keyed by ``use_total``, kept only on views made by
    # ``replace_nodes`` (see there); private to ``placement.FreeLedger.from_cluster``.
    _ledgers: dict[bool, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, tuple):
            object.__setattr__(self, "nodes", tuple(self.nodes))
        by_id = {n.node_id: n for n in self.nodes}
        if len(by_id) != len(self.nodes):
            raise InvalidRequestError("duplicate node ids in ClusterView")
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))
        object.__setattr__(self, "_ledgers", {})

    def replace_nodes(self, changed: Iterable[NodeView]) -> ClusterView:
        """A view with ``changed`` nodes (known ids) replacing this view's, other nodes shared.

        For callers that update a view many times (the simulator): the result
        carries the placement ledgers policies build from it, derived from this
        view's by touching only the changed nodes, so a decision on it does not
        pay O(nodes) to index the cluster.  Equal to
        ``ClusterView(<nodes with replacements>)`` in every observable way.
        """
        from raypipe.scheduler.placement import derive_ledgers  # placement imports this module

        repl = {n.node_id: n for n in changed}
        unknown = [nid for nid in repl if nid not in self._by_id]
        if unknown:
            raise InvalidRequestError(f"unknown node(s) {', '.join(map(repr, unknown))}")
        by_id = self._by_id.copy()  # type: ignore[attr-defined]  # MappingProxyType.copy: a dict
        by_id.update(repl)
        new = object.__new__(ClusterView)
        object.__setattr__(new, "nodes", tuple(by_id.values()))
        object.__setattr__(new, "_by_id", MappingProxyType(by_id))
        object.__setattr__(new, "_ledgers", derive_ledgers(self, repl))
        return new

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
        return _sum_vec(_vec.vec(n.total) for n in self.nodes if n.alive)

    def free(self) -> Resources:
        """Free capacity of alive nodes."""
        return _sum_vec(_vec.vec(n.free) for n in self.nodes if n.alive)

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
            free = _vec.vmin(_vec.add(_vec.vec(node.free), _vec.vec(give)), _vec.vec(node.total))
            changed[nid] = NodeView(nid, node.total, _vec.to_resources(free), node.labels, node.alive)
        return ClusterView(tuple(changed.get(n.node_id, n) for n in self.nodes))


def _sum_vec(vs: Iterable[_vec.Vec]) -> Resources:
    acc = _vec.ZERO
    for v in vs:
        acc = _vec.add(acc, v)
    return _vec.to_resources(acc)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job waiting for resources: a gang of bundles placed all-or-nothing.

    ``label_selector`` (a mapping or pairs, stored as sorted pairs) lists node
    labels every bundle's node must carry.  ``attained_service`` is the
    GPU-seconds the job already ran (for least-attained-service policies);
    ``enqueue_time`` is when it last (re)entered the queue (defaults to
    ``submit_time``) and ``last_run_s`` how long its last run lasted (both only
    used by LAS's starvation guard).
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
    _demand: Resources = field(init=False, repr=False, compare=False)
    _bvecs: tuple[_vec.Vec, ...] = field(init=False, repr=False, compare=False)
    _dvec: _vec.Vec = field(init=False, repr=False, compare=False)
    _shape: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.bundles, tuple):
            object.__setattr__(self, "bundles", tuple(self.bundles))
        if not self.bundles:
            raise InvalidRequestError(f"job {self.job_id!r}: a request needs at least one bundle")
        if any(not isinstance(b, Resources) or not b.nonnegative() for b in self.bundles):
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
            object.__setattr__(self, "label_selector", freeze_labels(self.label_selector))  # type: ignore[arg-type]
        bvecs = tuple(_vec.vec(b) for b in self.bundles)
        dvec = _vec.ZERO
        for v in bvecs:
            dvec = _vec.add(dvec, v)
        object.__setattr__(self, "_bvecs", bvecs)
        object.__setattr__(self, "_dvec", dvec)
        object.__setattr__(self, "_demand", _vec.to_resources(dvec))
        object.__setattr__(self, "_shape", repr((bvecs, self.strategy, self.label_selector)))

    @property
    def demand(self) -> Resources:
        """Sum of the bundles."""
        return self._demand

    @property
    def gpus(self) -> float:
        """GPUs of the whole gang."""
        return self._dvec[1]

    @property
    def shape_key(self) -> str:
        """Identifies requests that place identically (bundles, strategy, selector)."""
        return self._shape

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
    """Everything a policy may look at: time, queue (in submit order), running jobs, cluster, teams."""

    now: float
    queue: tuple[JobRequest, ...]
    running: tuple[RunningJob, ...]
    cluster: ClusterView
    teams: Mapping[str, TeamConfig] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.queue, tuple):
            object.__setattr__(self, "queue", tuple(self.queue))
        if not isinstance(self.running, tuple):
            object.__setattr__(self, "running", tuple(self.running))
        if not isinstance(self.teams, MappingProxyType):
            object.__setattr__(self, "teams", MappingProxyType(dict(self.teams)))
        ids = {j.job_id for j in self.queue}
        if len(ids) != len(self.queue):
            raise InvalidRequestError("duplicate job ids in the queue")
        run_ids = {r.request.job_id for r in self.running}
        if not ids.isdisjoint(run_ids):
            both = next(r.request.job_id for r in self.running if r.request.job_id in ids)
            raise InvalidRequestError(f"job {both!r} is both queued and running")
        if len(run_ids) != len(self.running):
            raise InvalidRequestError("duplicate job ids among running jobs")

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
