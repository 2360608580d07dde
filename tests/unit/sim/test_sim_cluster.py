"""Simulated clusters: flags, YAML (validated), Alibaba's node list, GPU-type labels; view updates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raypipe.resources import Resources
from raypipe.scheduler.cluster_spec import (
    ClusterSpec,
    any_of_label,
    gpu_type_selector,
    node_labels,
)
from raypipe.scheduler.errors import ClusterSpecError
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.types import ClusterView, NodeView

DATA = Path(__file__).resolve().parents[2] / "data" / "traces"


def test_from_flags_builds_equal_nodes_with_defaults() -> None:
    spec = ClusterSpec.from_flags(16, 4)
    nodes = spec.nodes()
    assert spec.total_gpus == 16 and spec.num_nodes == 4 and len(nodes) == 4
    assert [n.node_id for n in nodes] == ["node-0000", "node-0001", "node-0002", "node-0003"]
    assert nodes[0].total == Resources.of(cpu=32, gpu=4, memory_mb=4 * 65536) == nodes[0].free
    with pytest.raises(ClusterSpecError, match="not a multiple"):
        ClusterSpec.from_flags(10, 4)
    with pytest.raises(ClusterSpecError, match="--gpus-per-node must be >= 1"):
        ClusterSpec.from_flags(8, 0)


def test_yaml_groups_types_and_errors_name_the_field(tmp_path: Path) -> None:
    good = tmp_path / "c.yaml"
    good.write_text(
        "node_groups:\n"
        "  - {count: 2, gpus: 8, cpus: 96, memory_mb: 786432, gpu_type: V100, name: big}\n"
        "  - {count: 3, gpus: 2, cpus: 16, memory_mb: 65536, gpu_type: T4}\n"
    )
    spec = ClusterSpec.from_yaml(good)
    nodes = spec.nodes()
    assert spec.total_gpus == 22 and spec.gpu_types() == ("T4", "V100")
    assert [n.node_id for n in nodes][:3] == ["big-0000", "big-0001", "g1-0000"]
    assert nodes[0].labels_dict == {"gpu_type": "V100"}
    assert spec.to_dict()["nodes"] == 5

    bad = tmp_path / "bad.yaml"
    bad.write_text("node_groups:\n  - {count: 2, gpus: -1, cpus: 8, memory_mb: 10}\n")
    with pytest.raises(ClusterSpecError, match=r"node_groups\[0\]\.gpus: got -1"):
        ClusterSpec.from_yaml(bad)
    bad.write_text("node_groups:\n  - {count: 2, gpus: 1, cpus: 8, memory_mb: 10, gpu: 3}\n")
    with pytest.raises(ClusterSpecError, match=r"node_groups\[0\]\.gpu: unknown key; expected one of: count, gpus"):
        ClusterSpec.from_yaml(bad)
    bad.write_text("nodes: []\n")
    with pytest.raises(ClusterSpecError, match=r"node_groups: missing required field"):
        ClusterSpec.from_yaml(bad)
    bad.write_text("node_groups: [\n")
    with pytest.raises(ClusterSpecError, match="invalid YAML"):
        ClusterSpec.from_yaml(bad)
    with pytest.raises(ClusterSpecError, match="no such cluster file"):
        ClusterSpec.from_yaml(tmp_path / "missing.yaml")


def test_alibaba_node_list_groups_identical_nodes() -> None:
    spec = ClusterSpec.from_alibaba_nodes(DATA / "alibaba-sample")
    assert spec.num_nodes == 56
    assert set(spec.gpu_types()) == {"A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"}
    g2 = [g for g in spec.node_groups if g.gpu_type == "G2"]
    assert sum(g.count for g in g2) == 23 and all(g.gpus == 8 for g in g2)
    smaller = spec.scaled(0.5)
    assert smaller.num_nodes < spec.num_nodes and set(smaller.gpu_types()) == set(spec.gpu_types())
    with pytest.raises(ClusterSpecError):
        spec.scaled(0)


def test_gpu_type_selectors_match_labelled_nodes() -> None:
    assert gpu_type_selector(()) == {}
    assert gpu_type_selector(["T4"]) == {"gpu_type": "T4"}
    both = gpu_type_selector(["V100M32", "V100M16"])
    assert both == {any_of_label(["V100M16", "V100M32"]): "true"}
    sets = [("V100M16", "V100M32")]
    assert node_labels("V100M16", sets) == {"gpu_type": "V100M16", **both}
    assert node_labels("T4", sets) == {"gpu_type": "T4"}
    assert node_labels(None, sets) == {}


def _node(i: int, free: float, total: float = 8.0, alive: bool = True) -> NodeView:
    return NodeView(f"n{i:02d}", Resources.of(gpu=total, cpu=4), Resources.of(gpu=free, cpu=4), {}, alive)


@settings(max_examples=60, deadline=None)
@given(
    frees=st.lists(st.integers(0, 8), min_size=1, max_size=12),
    steps=st.lists(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 8)), max_size=4), max_size=6),
)
def test_replace_nodes_equals_a_fresh_view_and_its_ledger(frees: list[int], steps: list[list[tuple[int, int]]]) -> None:
    view = ClusterView(tuple(_node(i, f) for i, f in enumerate(frees)))
    for step in steps:
        changed = {f"n{i:02d}": _node(i, f) for i, f in step if i < len(frees)}
        view = view.replace_nodes(changed.values())
        fresh = ClusterView(tuple(changed.get(n.node_id, n) for n in view.nodes))
        assert view == fresh and view.free() == fresh.free()
        for use_total in (False, True):
            a = FreeLedger.from_cluster(view, use_total=use_total)
            b = FreeLedger.from_cluster(fresh, use_total=use_total)
            assert a._free == b._free
            assert {k: v for k, v in a._groups.items() if v} == b._groups
        # ledgers are copies: using one does not change the next
        led = FreeLedger.from_cluster(view)
        for nid in list(led._free):
            led._set(nid, (0.0, 0.0, 0.0, ()))
        assert FreeLedger.from_cluster(view)._free == FreeLedger.from_cluster(fresh)._free


def test_replace_nodes_with_a_changed_total_or_dead_node_rebuilds() -> None:
    view = ClusterView((_node(0, 8), _node(1, 8)))
    v2 = view.replace_nodes([_node(1, 2, total=4)])
    assert FreeLedger.from_cluster(v2)._free == FreeLedger(v2.nodes)._free
    v3 = v2.replace_nodes([_node(0, 8, alive=False)])
    assert list(FreeLedger.from_cluster(v3)._free) == ["n01"]
    with pytest.raises(Exception, match="unknown node"):
        view.replace_nodes([_node(7, 1)])
