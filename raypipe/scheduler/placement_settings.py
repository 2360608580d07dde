"""Placement settings: how a gang is consolidated on nodes, which node is chosen, and how a
gang spread over several nodes slows down.

These are settings of the cluster, not of a policy: the controller
(``SchedulerSettings``), the simulator (``SimOptions``, or the simulated cluster's
YAML) and the live replay hand the same :class:`PlacementSettings` to the shared
placement code (:class:`~raypipe.scheduler.placement.FreeLedger`), so every policy
places gangs the same way.

``consolidation`` (for ``PACK`` gangs of several bundles; a single bundle, a
``STRICT_PACK`` gang and a ``SPREAD`` gang keep their own rules):

* ``none``: a gang goes on one node when one node has room for all of it; otherwise
  its bundles spread over any free capacity (largest bundle first, nodes the gang
  already uses first).  The scheduler's behaviour before these settings.
* ``strict``: a gang that fits one node *of the cluster* (its whole demand within
  one matching node's total capacity) runs on one node, and waits until one node
  has room.  A gang no matching node can hold runs on *whole nodes*: the fewest
  matching nodes whose every GPU is free (CPU and memory left to other work may
  be taken too, if the bundles still fit).  Nodes are filled in turn: while no
  node holds every remaining bundle, the node holding the most of them (ties by
  ``node_choice``); then the node chosen by ``node_choice`` among those that hold
  the rest.  On identical nodes of ``G`` GPUs a ``g``-GPU gang thus gets
  ``ceil(g / G)`` nodes; with heterogeneous nodes the largest go first, and the
  last node may keep free GPUs for jobs that fit one node.  (For a gang without
  GPUs, "every GPU free" reads "every CPU free".)
* ``prefer``: ``strict`` when that places the gang now; otherwise ``none``
  (the gang spreads, and its spread slowdown applies).

``node_choice`` (which node, among those that fit):

* ``first_fit``: the first node in node-id order.
* ``best_fit``: the node left with the least of the request's dominant resource
  (GPU, else CPU, else memory); a request without GPUs prefers nodes with the
  fewest free GPUs.  The scheduler's choice before these settings.
* ``least_fragmenting``: the node whose fragmentation grows least (see
  :mod:`raypipe.scheduler.fragmentation`) for a generic mix of whole-GPU requests
  (1, 2, 4, ... GPUs up to the largest node, equally likely): no knowledge of
  the workload needed.
* ``fgd``: fragmentation gradient descent (Weng et al., ATC'23): the same
  measure for the workload's own task mix, given (``task_mix``) or observed (the
  most frequent request shapes submitted so far, covering ``mix_coverage`` of
  them).  Ties in either go to ``best_fit``'s choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raypipe.scheduler.errors import PolicyConfigError

__all__ = [
    "CONSOLIDATIONS",
    "DEFAULT_PLACEMENT",
    "NODE_CHOICES",
    "Consolidation",
    "NodeChoice",
    "PlacementSettings",
    "SpreadSlowdown",
    "TaskMixEntry",
    "placement_from",
]

Consolidation = Literal["strict", "prefer", "none"]
NodeChoice = Literal["first_fit", "best_fit", "least_fragmenting", "fgd"]
CONSOLIDATIONS: tuple[str, ...] = get_args(Consolidation)
NODE_CHOICES: tuple[str, ...] = get_args(NodeChoice)


class TaskMixEntry(BaseModel):
    """One kind of task of a workload's mix (for ``node_choice: fgd``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: float = Field(ge=0, description="GPUs of one task (below 1: a share of one GPU)")
    cpus: float = Field(default=0.0, ge=0, description="CPUs of one task")
    labels: dict[str, str] = Field(default_factory=dict, description="node labels the task needs (its selector)")
    gang: bool = Field(
        default=False, description="a gang of one-GPU bundles that may run on several (whole) nodes, not a pod"
    )
    weight: float = Field(default=1.0, gt=0, description="relative frequency")


class PlacementSettings(BaseModel):
    """Where the scheduler puts gangs (see the module doc of ``raypipe.scheduler.placement_settings``).

    The controller's default is ``none`` + ``best_fit`` (its behaviour before
    these settings); ``raypipe bench scheduling`` defaults to ``strict`` and
    ``first_fit`` on whole-GPU traces (``best_fit`` on traces with fractional GPUs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    consolidation: Consolidation = Field(
        default="none",
        description="strict: a gang that fits one node runs on one node, a bigger one on whole nodes; "
        "prefer: strict when possible now, else spread; none: spread over any free capacity",
    )
    node_choice: NodeChoice = Field(
        default="best_fit",
        description="first_fit (node-id order), best_fit (least left over), least_fragmenting "
        "(least fragmentation growth for a generic whole-GPU mix) or fgd (for the workload's task mix)",
    )
    task_mix: tuple[TaskMixEntry, ...] | None = Field(
        default=None, description="fgd: the workload's task mix; none: observed from the requests submitted so far"
    )
    mix_coverage: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="fgd with an observed mix: keep the most frequent request shapes covering this share of them "
        "(the paper's simulator keeps 60%; on whole-GPU traces that is often the 1-GPU jobs alone, and fgd "
        "then chooses as best_fit)",
    )

    def describe(self) -> str:
        """``consolidation=strict, node_choice=first_fit`` (for reports)."""
        mix = "" if self.node_choice != "fgd" else (", task_mix=given" if self.task_mix else ", task_mix=observed")
        return f"consolidation={self.consolidation}, node_choice={self.node_choice}{mix}"


#: The controller's default: today's placement (``none`` + ``best_fit``).
DEFAULT_PLACEMENT = PlacementSettings()


def placement_from(
    consolidation: str, node_choice: str, task_mix: Iterable[Mapping[str, Any]] | None = None
) -> PlacementSettings:
    """Validated settings from plain values (the controller's); ``PolicyConfigError`` names the bad one."""
    try:
        return PlacementSettings.model_validate(
            {
                "consolidation": consolidation,
                "node_choice": node_choice,
                "task_mix": None if task_mix is None else list(task_mix),
            }
        )
    except ValidationError as e:
        issues = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})" for err in e.errors()
        )
        raise PolicyConfigError(f"scheduler placement: {issues}") from None


class SpreadSlowdown(BaseModel):
    """How much slower a gang runs when it spans several nodes (simulator and live replay).

    A number is the old single factor: every gang on two or more nodes runs that
    many times slower (``spread_slowdown: 1.2``).  Otherwise give at most one of
    ``per_extra_node`` (factor ``1 + per_extra_node x (nodes - 1)``) and
    ``by_nodes`` (a table ``{nodes: factor}``: the entry of the largest node count
    not above the gang's; 1 below the smallest), and optionally racks: nodes are
    grouped by the value of their label ``rack_label`` (nodes without it share one
    rack), and a gang spanning several racks is ``cross_rack`` times slower again.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: float = Field(default=1.0, ge=1, description="every gang on 2+ nodes (the single-number form)")
    per_extra_node: float | None = Field(default=None, ge=0, description="factor 1 + this x (nodes - 1)")
    by_nodes: dict[int, float] | None = Field(
        default=None, description="node count -> factor (the largest count not above the gang's applies)"
    )
    rack_label: str = Field(default="rack", min_length=1, description="the node label that names a node's rack")
    cross_rack: float = Field(default=1.0, ge=1, description="extra factor of a gang spanning several racks")

    @model_validator(mode="before")
    @classmethod
    def _number(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return {"factor": data}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> SpreadSlowdown:
        given = [
            name
            for name, on in (
                ("a factor", self.factor != 1.0),
                ("per_extra_node", self.per_extra_node is not None),
                ("by_nodes", self.by_nodes is not None),
            )
            if on
        ]
        if len(given) > 1:
            raise ValueError(f"give one of a factor, per_extra_node or by_nodes, not {' and '.join(given)}")
        if self.by_nodes is not None:
            if not self.by_nodes:
                raise ValueError("by_nodes: give at least one {nodes: factor} entry")
            last = 1.0
            for n in sorted(self.by_nodes):
                f = self.by_nodes[n]
                if n < 2:
                    raise ValueError(f"by_nodes: node counts start at 2, got {n}")
                if not (math.isfinite(f) and f >= last):
                    raise ValueError(f"by_nodes: factors must be >= 1 and not decrease with nodes, got {f} at {n}")
                last = f
        return self

    @property
    def is_none(self) -> bool:
        """True when no gang is ever slowed down."""
        return (
            self.factor == 1.0
            and not self.per_extra_node
            and (self.by_nodes is None or all(f == 1.0 for f in self.by_nodes.values()))
            and self.cross_rack == 1.0
        )

    def factor_for(self, nodes: int, racks: int = 1) -> float:
        """The slowdown of a gang on ``nodes`` nodes in ``racks`` racks (1.0 on one node)."""
        if nodes <= 1:
            return 1.0
        if self.by_nodes is not None:
            f = 1.0
            for n in sorted(self.by_nodes):
                if n <= nodes:
                    f = self.by_nodes[n]
        elif self.per_extra_node is not None:
            f = 1.0 + self.per_extra_node * (nodes - 1)
        else:
            f = self.factor
        return f * (self.cross_rack if racks > 1 else 1.0)

    def factor_on(self, labels_of_nodes: Iterable[Mapping[str, str] | Iterable[tuple[str, str]]]) -> float:
        """The slowdown of a gang on nodes with these labels (one entry per distinct node)."""
        racks: set[str | None] = set()
        n = 0
        for labels in labels_of_nodes:
            n += 1
            d = labels if isinstance(labels, Mapping) else dict(labels)
            racks.add(d.get(self.rack_label))
        return self.factor_for(n, len(racks))

    def summary(self) -> float | dict[str, Any]:
        """The single number when that is the form, else the fields set (for results.json)."""
        if self.per_extra_node is None and self.by_nodes is None and self.cross_rack == 1.0:
            return self.factor
        return self.model_dump(exclude_defaults=True)
