"""GPU fragmentation of a node for a task mix, after Weng et al., "Beware of Fragmentation:
Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent" (USENIX ATC'23).

A workload's *task mix* ``M`` is a set of task kinds ``m`` with probabilities ``p_m``.
The fragmentation of a node ``n`` for one kind, ``F_n(m)``, is the free GPU capacity
of ``n`` that a task of kind ``m`` cannot use:

* all of the node's free GPUs when the task cannot run there at all: the node lacks
  a label it needs, or too few free GPUs or CPUs (a gang bigger than any node runs
  on whole nodes: then a node counts only while every GPU of it is free);
* when it can run there: the free capacity of a partly used GPU the task cannot use
  (a task of one or more whole GPUs never uses a partial GPU; a task of a fraction
  ``f`` of a GPU cannot use a partial GPU with less than ``f`` free).

``F_n(M) = sum_m p_m F_n(m)``.  Fragmentation gradient descent places a task on the
node where ``F_n(M)`` grows least (``node_choice: fgd``).  Tasks without GPUs are
left out of the mix: every node's fragmentation for them would be all its free
GPUs, which changes no choice.

The scheduler books GPUs per node, not per device: a node's free GPUs are read as
whole GPUs plus one partly used GPU holding the fraction (``free - floor(free)``),
which is how the ledger's capacity test behaves (a fractional task fits when the
node's free GPUs are at least its fraction).  The paper's simulator tracks each
GPU device, so fractional tasks there also strand capacity on several partial GPUs
of one node; that kind of fragmentation does not exist in this model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

from raypipe.scheduler import vec
from raypipe.scheduler.placement_settings import PlacementSettings, TaskMixEntry
from raypipe.scheduler.types import JobRequest, Labels, freeze_labels
from raypipe.scheduler.vec import Vec

__all__ = ["TaskMix", "TaskMixTracker", "generic_mix"]

_EPS = vec.EPS
#: (cpus, gpus, selector, gang) of a task kind.
_Kind = tuple[float, float, Labels, bool]
#: The memo of a mix is dropped when it grows past this many node states.
_MEMO_LIMIT = 200_000


class TaskMix:
    """A task mix: kinds with probabilities (summing to 1), and a memo of node fragmentation.

    Immutable in what it answers; the memo only caches :meth:`node_fragmentation`.
    """

    __slots__ = ("kinds", "_memo")

    def __init__(self, kinds: Iterable[tuple[float, float, Labels, bool, float]]) -> None:
        items = [k for k in kinds if k[1] > _EPS and k[4] > 0]
        total = math.fsum(k[4] for k in items)
        self.kinds: tuple[tuple[float, float, Labels, bool, float], ...] = tuple(
            (c, g, sel, gang, w / total) for c, g, sel, gang, w in items
        )
        self._memo: dict[tuple[float, float, float, bool, Labels], float] = {}

    @classmethod
    def from_entries(cls, entries: Sequence[TaskMixEntry]) -> TaskMix:
        """A mix given in settings."""
        return cls((e.cpus, e.gpus, freeze_labels(e.labels), e.gang, e.weight) for e in entries)

    def __len__(self) -> int:
        return len(self.kinds)

    def __repr__(self) -> str:
        parts = ", ".join(f"{g:g} GPU{' gang' if gang else ''}: {p:.2f}" for _, g, _, gang, p in self.kinds[:6])
        more = f", {len(self.kinds) - 6} more" if len(self.kinds) > 6 else ""
        return f"TaskMix({parts}{more})"

    def node_fragmentation(self, free: Vec, total: Vec, labels: Labels) -> float:
        """``F_n(M)``: the expected free GPUs of a node that a task of this mix cannot use."""
        g = free[1]
        if g <= _EPS:
            return 0.0
        whole = g >= total[1] - _EPS
        key = (free[0], g, total[1], whole, labels)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        partial = g - math.floor(g + _EPS)
        if partial < _EPS:
            partial = 0.0
        cpu = free[0]
        cap = total[1]
        f = 0.0
        for c, need, sel, gang, p in self.kinds:
            if sel and not all(pair in labels for pair in sel):
                f += p * g
            elif need > cap + _EPS:  # bigger than this node
                if not (gang and whole):
                    f += p * g
            elif need > g + _EPS or c > cpu + _EPS:
                f += p * g
            elif need >= 1.0 - _EPS or partial + _EPS < need:
                f += p * partial
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = f
        return f

    def growth(self, free: Vec, take: Vec, total: Vec, labels: Labels) -> float:
        """How much a node's fragmentation grows when ``take`` is placed on it (the FGD score)."""
        return self.node_fragmentation(vec.sub(free, take), total, labels) - self.node_fragmentation(
            free, total, labels
        )


@functools.lru_cache(maxsize=64)
def generic_mix(max_node_gpus: float) -> TaskMix | None:
    """``least_fragmenting``'s mix: gangs of 1, 2, 4, ... whole GPUs up to the largest node, equally likely."""
    sizes = []
    s = 1.0
    while s <= max_node_gpus + _EPS:
        sizes.append(s)
        s *= 2
    if not sizes:
        return None
    return TaskMix((0.0, size, (), True, 1.0) for size in sizes)


def kind_of(request: JobRequest) -> _Kind:
    """A request's task kind: its whole demand's CPUs and GPUs, selector, and whether it is a
    gang that may span nodes (several ``PACK`` or ``SPREAD`` bundles)."""
    d = request.demand_vec
    gang = len(request.bundle_vecs) > 1 and request.strategy != "STRICT_PACK"
    return (d[0], d[1], request.label_selector, gang)


class TaskMixTracker:
    """The task mix ``fgd`` uses: given in the settings, or observed from requests.

    ``observe`` counts each request's kind; :attr:`mix` is the most frequent kinds
    covering ``mix_coverage`` of the requests seen (the paper's "typical pods"; all
    of them by default), renormalized.  It is rebuilt only when the count has grown by a tenth (or 32
    requests) since the last build, so its memo of node fragmentation survives
    between decisions.  ``None`` until a GPU request has been seen.
    """

    __slots__ = ("_given", "_coverage", "_counts", "_seen", "_built_at", "_mix")

    def __init__(self, settings: PlacementSettings | None = None) -> None:
        s = settings or PlacementSettings()
        self._given = TaskMix.from_entries(s.task_mix) if s.task_mix else None
        self._coverage = s.mix_coverage
        self._counts: dict[_Kind, int] = {}
        self._seen = 0
        self._built_at = 0
        self._mix: TaskMix | None = self._given

    def observe(self, request: JobRequest) -> None:
        """Count one submitted request."""
        if self._given is not None or request.demand_vec[1] <= _EPS:
            return
        k = kind_of(request)
        self._counts[k] = self._counts.get(k, 0) + 1
        self._seen += 1

    @property
    def seen(self) -> int:
        """GPU requests observed."""
        return self._seen

    @property
    def mix(self) -> TaskMix | None:
        """The current mix (the same object until it is rebuilt)."""
        if self._given is not None:
            return self._given
        if (
            self._seen
            and self._seen >= max(self._built_at + 32, self._built_at * 1.1)
            or (self._mix is None and self._seen)
        ):
            self._mix = self._build()
            self._built_at = self._seen
        return self._mix

    def _build(self) -> TaskMix:
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], repr(kv[0])))
        want = self._coverage * self._seen
        kept: list[tuple[float, float, Labels, bool, float]] = []
        acc = 0
        for (c, g, sel, gang), n in ranked:
            kept.append((c, g, sel, gang, float(n)))
            acc += n
            if acc >= want - 1e-9:
                break
        return TaskMix(kept)
