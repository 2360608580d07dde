"""Autoscaler awareness (pure: no Ray): the cluster's maximum shape, and what a gang needs from it.

A :class:`MaxShape` lists the node types an autoscaler can launch (resources,
labels, ``max_workers`` each) and the global ``max_workers``.  The largest
cluster it allows is the nodes there are now plus, for every type, as many
more workers as its ``max_workers`` leaves (counting the workers of that type
already up), with at most ``max_workers - workers now`` added in all.

:meth:`MaxShape.never_reason` tells whether a request that cannot be placed on
the cluster as it is could be placed on that largest cluster, with the same
placement code as everywhere else (:class:`~raypipe.scheduler.placement.FreeLedger`
on node totals).  When the global cap is smaller than the sum of the types', the
check first places on every type's additions and counts the new nodes used;
if that is over the cap it tries each type alone.  Like ``feasible_ever``, it is
greedy: a gang only an exact bin-packing (or an unusual mix of types under the
cap) could fit is reported as never fitting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raypipe.resources import Resources
from raypipe.scheduler.errors import InvalidRequestError
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.types import ClusterView, JobRequest, Labels, NodeView, freeze_labels

_EPS = 1e-9
#: Prefix of the ids of nodes the autoscaler could add ("~" sorts after node ids,
#: so on ties placement prefers nodes that exist).
NEW_NODE_PREFIX = "~"


def format_shape(r: Resources) -> str:
    """``{CPU: 8, GPU: 4}`` (Ray's resource names; memory in MB)."""
    parts = []
    if r.cpu:
        parts.append(f"CPU: {r.cpu:g}")
    if r.gpu:
        parts.append(f"GPU: {r.gpu:g}")
    if r.memory_mb:
        parts.append(f"memory_mb: {r.memory_mb:g}")
    parts += [f"{k}: {x:g}" for k, x in r.custom]
    return "{" + ", ".join(parts) + "}"


def format_bundles(bundles: Iterable[Resources]) -> str:
    """``2 x {CPU: 8, GPU: 4}, 1 x {CPU: 1}`` (identical shapes counted, first-seen order)."""
    counts: dict[Resources, int] = {}
    for b in bundles:
        counts[b] = counts.get(b, 0) + 1
    return ", ".join(f"{n} x {format_shape(b)}" for b, n in counts.items()) or "nothing"


def scale_up_bundles(request: JobRequest) -> tuple[Resources, ...]:
    """The shapes to ask the autoscaler for: the bundles, or one bundle of the whole gang for
    ``STRICT_PACK`` (the autoscaler packs bundles independently; that one needs one node)."""
    if request.strategy == "STRICT_PACK" and len(request.bundles) > 1:
        return (request.demand,)
    return tuple(b for b in request.bundles if not b.is_zero())


@dataclass(frozen=True, slots=True)
class NodeType:
    """A node type the autoscaler can launch: its resources, labels and ``max_workers``."""

    name: str
    resources: Resources
    max_workers: int
    labels: Labels = ()

    def matches(self, total: Resources, labels: Mapping[str, str]) -> bool:
        """True when a node with ``total`` and ``labels`` looks like this type.

        Every resource the type declares must equal the node's (GPUs always: a
        type without GPUs matches only nodes without), and the type's labels
        must be on the node.  Resources the type does not declare (memory,
        accelerator markers) are ignored: Ray detects them on the node.
        """
        mine, theirs = self.resources._vec(), total._vec()
        mine.setdefault("gpu", 0.0)
        for k, x in mine.items():
            if (x > _EPS or k == "gpu") and abs(theirs.get(k, 0.0) - x) > _EPS:
                return False
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True, slots=True)
class MaxShape:
    """What an autoscaler may add: node types and the global ``max_workers`` (``None``: no cap)."""

    node_types: tuple[NodeType, ...]
    max_workers: int | None = None

    @classmethod
    def from_settings(cls, d: Mapping[str, Any] | None) -> MaxShape | None:
        """From the controller's ``autoscaler`` setting::

            {"node_types": {"gpu_worker": {"resources": {"CPU": 8, "GPU": 4},
                                           "max_workers": 4, "labels": {...}}},
             "max_workers": 4}

        Resources use Ray's names (``CPU``, ``GPU``, ``memory`` in bytes, custom).
        ``None`` -> ``None`` (no autoscaler).  Raises ``InvalidRequestError``.
        """
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise InvalidRequestError(f"autoscaler: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - {"node_types", "max_workers"}
        if unknown:
            raise InvalidRequestError(f"autoscaler: unknown key(s) {', '.join(sorted(unknown))}")
        cap = d.get("max_workers")
        if cap is not None and (not isinstance(cap, int) or cap < 0):
            raise InvalidRequestError(f"autoscaler: max_workers must be an integer >= 0, got {cap!r}")
        types = []
        for name, t in (d.get("node_types") or {}).items():
            try:
                res = t["resources"]
                mw = t.get("max_workers", cap)
                if not isinstance(mw, int) or mw < 0:
                    raise InvalidRequestError(f"max_workers must be an integer >= 0, got {mw!r}")
                if any(not isinstance(v, (int, float)) or v < 0 for v in res.values()):
                    raise InvalidRequestError(f"resources must be numbers >= 0, got {dict(res)}")
                types.append(NodeType(str(name), Resources.from_ray(res), mw, freeze_labels(t.get("labels"))))
            except (KeyError, TypeError, AttributeError) as e:
                raise InvalidRequestError(f"autoscaler: node type {name!r}: malformed ({e!r})") from None
            except InvalidRequestError as e:
                raise InvalidRequestError(f"autoscaler: node type {name!r}: {e}") from None
        if not types:
            raise InvalidRequestError("autoscaler: no node types")
        return cls(tuple(types), cap)

    def describe(self) -> str:
        """``head + up to 4 x gpu_worker {CPU: 8, GPU: 4}, 2 x cpu_worker {CPU: 4}; at most 4 workers``."""
        kinds = ", ".join(f"{t.max_workers} x {t.name} {format_shape(t.resources)}" for t in self.node_types)
        cap = f"; at most {self.max_workers} workers" if self.max_workers is not None else ""
        return f"head + up to {kinds}{cap}"

    def type_of(self, total: Resources, labels: Mapping[str, str], declared: str | None = None) -> str | None:
        """The type of a worker node: ``declared`` (Ray's node-group label) when it is one of
        the types, else the first type whose resources and labels it matches, else ``None``."""
        names = {t.name for t in self.node_types}
        if declared in names:
            return declared
        return next((t.name for t in self.node_types if t.matches(total, labels)), None)

    # ------------------------------------------------------------------ feasibility

    def _room(self, workers: int) -> int | None:
        return None if self.max_workers is None else max(0, self.max_workers - workers)

    def _view(self, current: ClusterView, adds: Mapping[str, int]) -> tuple[ClusterView, set[str]]:
        """Alive nodes of ``current`` (empty) plus ``adds[type]`` new nodes of each type."""
        nodes = [NodeView(n.node_id, n.total, n.total, n.labels) for n in current.alive_nodes()]
        new: set[str] = set()
        for t in self.node_types:
            for i in range(adds.get(t.name, 0)):
                nid = f"{NEW_NODE_PREFIX}{t.name}-{i + 1}"
                nodes.append(NodeView(nid, t.resources, t.resources, t.labels))
                new.add(nid)
        return ClusterView(tuple(nodes)), new

    def never_reason(
        self, request: JobRequest, current: ClusterView, workers_by_type: Mapping[str, int], workers: int
    ) -> str | None:
        """``None`` when ``request`` fits the largest cluster the autoscaler allows, else why not.

        ``current`` is the cluster now (its alive nodes' totals count, not what
        is free), ``workers_by_type`` the alive workers of each type and
        ``workers`` all alive workers (nodes other than the head).
        """
        n = len(request.bundles)
        room = self._room(workers)
        limit = n if room is None else min(n, room)
        left = {t.name: max(0, t.max_workers - workers_by_type.get(t.name, 0)) for t in self.node_types}
        adds = {name: min(k, limit) for name, k in left.items()}
        view, new = self._view(current, adds)
        ledger = FreeLedger.from_cluster(view, use_total=True)
        placement = ledger.place(request)
        if placement is None:
            return f"never schedulable, even at the cluster's maximum size: {ledger.explain(request, capacity_word='node')}; max shape: {self.describe()}"
        used = len(set(placement.bundle_nodes) & new)
        if room is None or used <= room:
            return None
        # The global cap binds: any placement on one type's additions alone uses at most ``room``.
        for name, k in adds.items():
            if k and FreeLedger.from_cluster(self._view(current, {name: k})[0], use_total=True).place(request):
                return None
        return (
            f"never schedulable, even at the cluster's maximum size: the gang needs {used} new nodes "
            f"and at most {room} more workers can be added; max shape: {self.describe()}"
        )


def count_workers(
    shape: MaxShape, workers: Sequence[tuple[Resources, Mapping[str, str], str | None]]
) -> dict[str, int]:
    """Alive workers per node type, from ``(total, labels, declared type)`` of each worker."""
    out: dict[str, int] = {}
    for total, labels, declared in workers:
        name = shape.type_of(total, labels, declared)
        if name is not None:
            out[name] = out.get(name, 0) + 1
    return out
