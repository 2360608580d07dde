"""Why a job waits, for people: a policy's reason with nodes named and what holds their capacity.

``ControllerCore`` gives every waiting job its policy's reason after each decision.  A
reason names nodes by id (``largest free block is 2 GPU (node-3)``); people read them by
IP or name, followed by who holds the capacity (``held by train/fit 4 GPU, serving app
digits 1 CPU, ...``).  :class:`Blockers` indexes, once per scheduling step, what every
job holding a grant holds on each node (one pass over the jobs), and names each distinct
reason once: many waiting jobs share a reason (fifo's ``behind head-of-line job ...``,
one per class of jobs in the others), so a step no longer scans every job for every
node for every waiting job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from raypipe.resources import Resources
from raypipe.scheduler.backend import NodeInfo
from raypipe.scheduler.jobs import Job, job_label

__all__ = ["Blockers", "node_label"]

#: What Ray sees taken on a node beyond raypipe's grants, as a holder.
EXTERNAL = "work raypipe did not admit"
#: Holders a reason lists before ``N more``.
SHOWN = 6


def node_label(node_id: str, node: NodeInfo | None) -> str:
    """A node for people: its IP (and name when it differs), ``head`` for the head node."""
    if node is None:
        return f"node {node_id[:12]}"
    label = node.address or node.name or node_id[:12]
    if node.name and node.name != label:
        label += f" {node.name}"
    return f"node {label}" + (" (head)" if node.head else "")


class Blockers:
    """The holders of every node at one moment, and reasons named with them (see the module)."""

    def __init__(self, nodes: Sequence[NodeInfo], jobs: Iterable[Job], external: Mapping[str, Resources]) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        for n in nodes:
            self._nodes.setdefault(n.node_id, n)
        self._ids = [n.node_id for n in nodes]
        self._alive = [n.node_id for n in nodes if n.alive]
        # per node: holder name -> the bundles of each of its jobs there (summed only when shown)
        self._raw: dict[str, dict[str, list[list[Resources]]]] = {}
        for job in jobs:
            if not (job.state.holds_grant and job.placement):
                continue
            mine: dict[str, list[Resources]] = {}
            for b, nid in zip(job.request.bundles, job.placement, strict=True):
                mine.setdefault(nid, []).append(b)
            name = job_label(job)
            for nid, bundles in mine.items():
                self._raw.setdefault(nid, {}).setdefault(name, []).append(bundles)
        self._external = {nid: ext for nid, ext in external.items() if not ext.is_zero()}
        self._held: dict[str, list[tuple[str, Resources]]] = {}
        self._labels: dict[str, str] = {}
        self._named: dict[str, str] = {}

    def label(self, node_id: str) -> str:
        """:func:`node_label` of a node of this moment."""
        label = self._labels.get(node_id)
        if label is None:
            label = self._labels[node_id] = node_label(node_id, self._nodes.get(node_id))
        return label

    def holders(self, node_id: str) -> list[tuple[str, Resources]]:
        """Who holds capacity on ``node_id``: each job's name (a pipeline's stage, a serving
        app) with what it holds there, and ``work raypipe did not admit`` (what Ray sees taken
        beyond raypipe's grants), largest first."""
        held = self._held.get(node_id)
        if held is None:
            on: dict[str, Resources] = {}
            for name, per_job in self._raw.get(node_id, {}).items():
                for bundles in per_job:  # each job's bundles there summed, then added to its name's
                    on[name] = on.get(name, Resources()) + sum(bundles, Resources())
            ext = self._external.get(node_id)
            if ext is not None:
                on[EXTERNAL] = ext
            held = self._held[node_id] = sorted(on.items(), key=lambda kv: (-kv[1].gpu, -kv[1].cpu, kv[0]))
        return list(held)

    def _count(self, node_id: str) -> int:
        """How many holders :meth:`holders` lists for ``node_id`` (without summing them)."""
        on = self._raw.get(node_id)
        n = len(on) if on else 0
        return n + (node_id in self._external and not (on and EXTERNAL in on))

    def name(self, why: str) -> str:
        """``why`` with nodes by IP or name instead of ids, and what holds the capacity of the
        nodes it names (of every alive node when it names none): the first six holders, then
        how many more."""
        named = self._named.get(why)
        if named is None:
            named = self._named[why] = self._name(why)
        return named

    def _name(self, why: str) -> str:
        named = [nid for nid in self._ids if nid in why]
        for nid in named:
            label = self.label(nid)
            why = why.replace(f"({nid})", f"({label})").replace(nid, label)
        nodes = named or self._alive
        total = sum(map(self._count, nodes))
        if not total:
            return why
        shown: list[str] = []
        for nid in nodes:  # sum and format only what is shown
            if nid not in self._raw and nid not in self._external:
                continue
            for name, res in self.holders(nid):
                if len(shown) == SHOWN:
                    break
                shown.append(f"{name} {res}" + (f" on {self.label(nid)}" if len(nodes) > 1 else ""))
            if len(shown) == SHOWN:
                break
        more = [f"{total - SHOWN} more"] if total > SHOWN else []
        return why + "; held by " + ", ".join(shown + more)
