"""Simulated clusters: groups of identical nodes, from flags, a YAML file or Alibaba's node list.

A :class:`ClusterSpec` is a validated description (pydantic, ``extra="forbid"``)
that turns into the scheduler's own :class:`~raypipe.scheduler.types.NodeView`
objects.  GPU types are node labels (``gpu_type``); a job restricted to GPU
types gets a label selector built by :func:`gpu_type_selector`.

Label selectors are conjunctions (every pair must be on the node), so a job that
accepts one of several types (Alibaba's ``gpu_spec`` ``"V100M16|V100M32"``)
selects one extra label per accepted set: :func:`any_of_label`.  Nodes carry
that label when their type is in the set (:func:`node_labels`); the simulator
adds them for the sets a trace uses.  The live replay must label its nodes the
same way.

A spec may also carry the cluster's placement settings (``placement:``, see
:mod:`raypipe.scheduler.placement_settings`) and how a gang spread over nodes slows
down (``spread_slowdown:``), with racks as node labels (``nodes_per_rack`` or
``labels``).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raypipe.resources import Resources
from raypipe.scheduler.errors import ClusterSpecError
from raypipe.scheduler.placement_settings import PlacementSettings, SpreadSlowdown, TaskMixEntry
from raypipe.scheduler.types import NodeView

#: The label ``nodes_per_rack`` gives each node (``SpreadSlowdown.rack_label``'s default).
RACK_LABEL = "rack"

GPU_TYPE_LABEL = "gpu_type"
_ANY_OF_PREFIX = "gpu_type_any_"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

#: Defaults for ``--gpus N --gpus-per-node K`` clusters: per GPU of a node.
DEFAULT_CPUS_PER_GPU = 8.0
DEFAULT_MEMORY_MB_PER_GPU = 65536.0


def any_of_label(gpu_types: Iterable[str]) -> str:
    """The label key a node carries when its GPU type is one of ``gpu_types``."""
    return _ANY_OF_PREFIX + "_".join(sorted(set(gpu_types)))


def gpu_type_selector(gpu_types: Sequence[str]) -> dict[str, str]:
    """Label selector for a job allowed on ``gpu_types`` (empty: any type).

    One type: ``{"gpu_type": T}``; several: ``{any_of_label(types): "true"}``.
    """
    types = sorted(set(gpu_types))
    if not types:
        return {}
    if len(types) == 1:
        return {GPU_TYPE_LABEL: types[0]}
    return {any_of_label(types): "true"}


def node_labels(gpu_type: str | None, any_of_sets: Iterable[Sequence[str]] = ()) -> dict[str, str]:
    """Labels of a node with ``gpu_type``, including the any-of labels of the sets containing it."""
    if gpu_type is None:
        return {}
    out = {GPU_TYPE_LABEL: gpu_type}
    for s in any_of_sets:
        if len(set(s)) > 1 and gpu_type in s:
            out[any_of_label(s)] = "true"
    return out


class NodeGroup(BaseModel):
    """``count`` identical nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(ge=1, description="number of nodes")
    gpus: float = Field(ge=0, description="GPUs per node")
    cpus: float = Field(gt=0, description="CPUs per node")
    memory_mb: float = Field(gt=0, description="memory per node, MB")
    gpu_type: str | None = Field(default=None, pattern=_NAME, description="GPU model, a node label")
    name: str | None = Field(default=None, pattern=_NAME, description="node id prefix (default g<index>)")
    labels: dict[str, str] = Field(default_factory=dict, description="more node labels, e.g. {rack: r1}")
    nodes_per_rack: int | None = Field(
        default=None, ge=1, description="label the nodes `rack: <name>-r<k>`, this many nodes per rack"
    )


class ClusterSpec(BaseModel):
    """A cluster made of node groups.

    YAML form::

        node_groups:
          - {count: 4, gpus: 8, cpus: 96, memory_mb: 786432, gpu_type: V100, nodes_per_rack: 2}
          - {count: 8, gpus: 2, cpus: 32, memory_mb: 131072, gpu_type: T4}
        placement: {consolidation: strict, node_choice: best_fit}    # optional
        spread_slowdown: {per_extra_node: 0.1, cross_rack: 1.2}      # optional
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_groups: list[NodeGroup] = Field(min_length=1)
    source: str = Field(default="", description="where the spec came from (informative)")
    placement: PlacementSettings | None = Field(
        default=None, description="consolidation and node choice (`raypipe bench scheduling` flags override them)"
    )
    spread_slowdown: SpreadSlowdown | None = Field(
        default=None, description="how much slower a gang spanning several nodes (racks) runs; a number or a mapping"
    )

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_flags(
        cls,
        gpus: int,
        gpus_per_node: int,
        *,
        cpus_per_node: float | None = None,
        memory_mb_per_node: float | None = None,
        gpu_type: str | None = None,
    ) -> ClusterSpec:
        """``gpus`` GPUs in nodes of ``gpus_per_node`` (CPUs and memory default to 8 and 64 GiB per GPU)."""
        if gpus_per_node < 1:
            raise ClusterSpecError(f"--gpus-per-node must be >= 1, got {gpus_per_node}")
        if gpus < 1:
            raise ClusterSpecError(f"--gpus must be >= 1, got {gpus}")
        if gpus % gpus_per_node:
            raise ClusterSpecError(f"--gpus {gpus} is not a multiple of --gpus-per-node {gpus_per_node}")
        return cls._build(
            {
                "node_groups": [
                    {
                        "count": gpus // gpus_per_node,
                        "gpus": gpus_per_node,
                        "cpus": cpus_per_node if cpus_per_node is not None else DEFAULT_CPUS_PER_GPU * gpus_per_node,
                        "memory_mb": memory_mb_per_node
                        if memory_mb_per_node is not None
                        else DEFAULT_MEMORY_MB_PER_GPU * gpus_per_node,
                        "gpu_type": gpu_type,
                        "name": "node",
                    }
                ],
                "source": f"--gpus {gpus} --gpus-per-node {gpus_per_node}",
            },
            "cluster flags",
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> ClusterSpec:
        """Read and validate a YAML file (``node_groups: [...]``)."""
        p = os.fspath(path)
        try:
            with open(p, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise ClusterSpecError(f"{p}: no such cluster file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ClusterSpecError(f"{p}: cannot read: {e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ClusterSpecError(f"{p}{line}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
        if not isinstance(data, dict):
            raise ClusterSpecError(f"{p}: expected a mapping with `node_groups`; got {type(data).__name__}")
        return cls._build({"source": p, **data}, p)

    @classmethod
    def from_alibaba_nodes(cls, path: str | os.PathLike[str]) -> ClusterSpec:
        """The heterogeneous cluster of Alibaba's ``openb_node_list_gpu_node.csv`` (``sn, cpu_milli,
        memory_mib, gpu, model``); identical nodes are grouped.  A directory means that file in it."""
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, "openb_node_list_gpu_node.csv")
        try:
            f = open(p, encoding="utf-8", newline="")
        except FileNotFoundError:
            raise ClusterSpecError(f"{p}: no such node list") from None
        except OSError as e:
            raise ClusterSpecError(f"{p}: cannot read: {e}") from None
        groups: dict[tuple[float, float, float, str], int] = {}
        bad: list[str] = []
        with f:
            reader = csv.DictReader(f)
            need = ("cpu_milli", "memory_mib", "gpu", "model")
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise ClusterSpecError(f"{p}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
            for row in reader:
                try:
                    cpus = float(row["cpu_milli"]) / 1000.0
                    mem = float(row["memory_mib"])
                    gpus = float(row["gpu"])
                    model = (row["model"] or "").strip()
                    if cpus <= 0 or mem <= 0 or gpus < 0 or not re.match(_NAME, model):
                        raise ValueError("cpu_milli and memory_mib must be > 0, gpu >= 0, model a name")
                except (TypeError, ValueError) as e:
                    bad.append(f"{p}:{reader.line_num}: {e}")
                    continue
                key = (gpus, cpus, mem, model)
                groups[key] = groups.get(key, 0) + 1
        if bad:
            raise ClusterSpecError(f"{len(bad)} bad node row(s):\n" + "\n".join(bad[:5]))
        if not groups:
            raise ClusterSpecError(f"{p}: no nodes")
        node_groups = [
            {"count": n, "gpus": g, "cpus": c, "memory_mb": m, "gpu_type": t, "name": f"{t}-{int(g)}g-{i}"}
            for i, ((g, c, m, t), n) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][3], -kv[0][0], kv[0])))
        ]
        return cls._build({"node_groups": node_groups, "source": p}, p)

    @classmethod
    def _build(cls, data: Mapping[str, Any], where: str) -> ClusterSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ClusterSpecError(f"{where}: " + "; ".join(_issue(err) for err in e.errors())) from None

    def scaled(self, fraction: float) -> ClusterSpec:
        """The same node groups with ``round(count * fraction)`` nodes each (at least one).

        Keeps a heterogeneous cluster's mix of node types while shrinking it, e.g.
        to put Alibaba's pods under contention on a tenth of its nodes.
        """
        if not 0 < fraction <= 1:
            raise ClusterSpecError(f"cluster fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        groups = [g.model_copy(update={"count": max(1, round(g.count * fraction))}) for g in self.node_groups]
        return self.model_copy(update={"node_groups": groups, "source": f"{self.source} x {fraction:g}"})

    # ------------------------------------------------------------------ views

    @property
    def total_gpus(self) -> float:
        return float(sum(g.count * g.gpus for g in self.node_groups))

    @property
    def num_nodes(self) -> int:
        return sum(g.count for g in self.node_groups)

    def gpu_types(self) -> tuple[str, ...]:
        return tuple(sorted({g.gpu_type for g in self.node_groups if g.gpu_type}))

    def nodes(self, any_of_sets: Iterable[Sequence[str]] = ()) -> tuple[NodeView, ...]:
        """Every node, empty, as the scheduler's ``NodeView`` (ids ``<name>-<i>``, sorted)."""
        sets = [tuple(s) for s in any_of_sets]
        out: list[NodeView] = []
        for gi, g in enumerate(self.node_groups):
            total = Resources.of(cpu=g.cpus, gpu=g.gpus, memory_mb=g.memory_mb)
            base = {**g.labels, **node_labels(g.gpu_type, sets)}
            labels = tuple(sorted(base.items()))
            prefix = g.name or f"g{gi}"
            width = max(4, len(str(g.count - 1)))
            for i in range(g.count):
                if g.nodes_per_rack:
                    labels = tuple(sorted({**base, RACK_LABEL: f"{prefix}-r{i // g.nodes_per_rack}"}.items()))
                out.append(NodeView(f"{prefix}-{i:0{width}d}", total, total, labels))
        ids = [n.node_id for n in out]
        if len(set(ids)) != len(ids):
            raise ClusterSpecError("two node groups produce the same node ids; give them distinct `name`s")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """For results.json: groups, totals, source."""
        return {
            "source": self.source,
            "nodes": self.num_nodes,
            "total_gpus": self.total_gpus,
            "total_cpus": float(sum(g.count * g.cpus for g in self.node_groups)),
            "gpu_types": list(self.gpu_types()),
            "node_groups": [g.model_dump(exclude_none=True, exclude_defaults=True) for g in self.node_groups],
            **({"placement": self.placement.model_dump(exclude_defaults=True)} if self.placement else {}),
            **({"spread_slowdown": self.spread_slowdown.summary()} if self.spread_slowdown else {}),
        }


def _issue(err: Mapping[str, Any]) -> str:
    loc = ""
    for part in err.get("loc", ()):
        loc += f"[{part}]" if isinstance(part, int) else ("." if loc else "") + str(part)
    loc = loc or "(top level)"
    if err.get("type") == "extra_forbidden":
        parts = err.get("loc", ())
        model: type[BaseModel] = ClusterSpec
        if len(parts) > 1:
            nested: dict[str, type[BaseModel]] = {
                "node_groups": NodeGroup,
                "placement": PlacementSettings,
                "spread_slowdown": SpreadSlowdown,
            }
            model = nested.get(str(parts[0]), ClusterSpec)
            if parts[0] == "placement" and "task_mix" in map(str, parts):
                model = TaskMixEntry
        fields = model.model_fields
        return f"{loc}: unknown key; expected one of: {', '.join(fields)}"
    if err.get("type") == "missing":
        return f"{loc}: missing required field"
    return f"{loc}: got {err.get('input')!r}; {err.get('msg', 'invalid')}"
