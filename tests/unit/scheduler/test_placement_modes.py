"""Placement settings: consolidation (strict, prefer, none), node choice, fragmentation, spread slowdown."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError
from sched_helpers import job, node, running, snapshot

from raypipe.resources import Resources
from raypipe.scheduler import (
    ClusterView,
    JobRequest,
    NodeView,
    Placement,
    explain_wait,
    feasible_ever,
    get_policy,
    place,
)
from raypipe.scheduler.errors import PolicyConfigError
from raypipe.scheduler.fragmentation import TaskMix, TaskMixTracker, generic_mix
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.placement_settings import PlacementSettings, SpreadSlowdown, TaskMixEntry, placement_from

STRICT = PlacementSettings(consolidation="strict")
PREFER = PlacementSettings(consolidation="prefer")
NONE = PlacementSettings(consolidation="none")


def cluster(*nodes: NodeView) -> ClusterView:
    return ClusterView(tuple(nodes))


def gang(job_id: str, n: int, **kw: object):  # type: ignore[no-untyped-def]
    """A PACK gang of ``n`` one-GPU bundles (as the simulator makes of a trace job)."""
    return job(job_id, *([1] * n), **kw)


def nodes_of(p) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(set(p.bundle_nodes))


# ----------------------------------------------------------------------------- consolidation


def test_strict_keeps_a_gang_that_fits_one_node_on_one_node_and_none_spreads_it() -> None:
    c = cluster(node("n1", 4, 2), node("n2", 4, 2), node("n3", 4, 3))
    assert place(gang("j", 3), c, STRICT).bundle_nodes == ("n3",) * 3  # type: ignore[union-attr]
    # 4 GPUs fit one 4-GPU node, but no node has 4 free: strict waits, none spreads
    assert place(gang("j", 4), c, STRICT) is None
    assert len(place(gang("j", 4), c, NONE).nodes) == 2  # type: ignore[union-attr]
    assert len(place(gang("j", 4), c).nodes) == 2  # type: ignore[union-attr]  # the default is none
    why = explain_wait(gang("j", 4), c, STRICT)
    assert why == "needs 4 GPU on one node (consolidation strict); largest free block is 3 GPU (n3)"


def test_strict_gives_a_big_gang_whole_nodes_only() -> None:
    # 8 GPUs on 4-GPU nodes: ceil(8/4) = 2 nodes with every GPU free; n1 (3 of 4 free) is never used
    c = cluster(node("n1", 4, 3), node("n2", 4), node("n3", 4, 1), node("n4", 4))
    p = place(gang("j", 8), c, STRICT)
    assert p is not None and nodes_of(p) == ["n2", "n4"]
    # 9 GPUs free in all, but only two whole nodes: strict waits and says why, none spreads
    assert place(gang("j", 9), c, STRICT) is None
    assert explain_wait(gang("j", 9), c, STRICT) == (
        "gang of 9 bundles needs 9 GPU on whole nodes (consolidation strict); "
        "2 matching node(s) have every GPU free, holding 8 of them"
    )
    assert place(gang("j", 9), c, NONE) is not None
    # a 6-GPU gang takes 2 whole nodes (the second keeps 2 GPUs free for jobs that fit one node)
    p = place(gang("j", 6), c, STRICT)
    assert p is not None and nodes_of(p) == ["n2", "n4"]
    assert sorted(p.bundle_nodes.count(n) for n in ("n2", "n4")) == [2, 4]


def test_strict_on_heterogeneous_nodes_uses_the_fewest_whole_nodes_largest_first() -> None:
    # nodes of 8, 4, 4 and 2 GPUs, all free; a 6-GPU gang fits the 8-GPU node alone
    c = cluster(node("a2", 2), node("b4", 4), node("c4", 4), node("d8", 8))
    assert place(gang("j", 6), c, STRICT).bundle_nodes == ("d8",) * 6  # type: ignore[union-attr]
    # ...and waits for it when it is busy, although 10 GPUs are free elsewhere
    busy = cluster(node("a2", 2), node("b4", 4), node("c4", 4), node("d8", 8, 5))
    assert place(gang("j", 6), busy, STRICT) is None
    assert place(gang("j", 6), busy, PREFER) is not None  # prefer spreads when it must
    # 10 GPUs fit no node: the 8-GPU node, then the node best fitting the other 2 (best_fit: a2)
    p = place(gang("j", 10), c, STRICT)
    assert p is not None and nodes_of(p) == ["a2", "d8"]
    # first_fit takes the lowest id among the nodes that hold the rest
    p = place(gang("j", 10), c, PlacementSettings(consolidation="strict", node_choice="first_fit"))
    assert p is not None and nodes_of(p) == ["a2", "d8"]
    p = place(gang("j", 12), c, PlacementSettings(consolidation="strict", node_choice="first_fit"))
    assert p is not None and nodes_of(p) == ["b4", "d8"]
    # 19 GPUs: more than the cluster; never fits, with the reason
    assert feasible_ever(gang("j", 19), c, placement=STRICT) == (
        "never schedulable: gang of 19 bundles needs 19 GPU on whole nodes (consolidation strict); "
        "the matching nodes hold 18 of them"
    )


def test_prefer_is_strict_when_strict_places_and_spreads_otherwise() -> None:
    c = cluster(node("n1", 4, 2), node("n2", 4, 3), node("n3", 4, 4))
    for g in (1, 2, 3, 4, 8):
        s = place(gang("j", g), c, STRICT)
        if s is not None:
            assert place(gang("j", g), c, PREFER) == s
    assert place(gang("j", 8), c, STRICT) is None
    p = place(gang("j", 8), c, PREFER)
    assert p is not None and p == place(gang("j", 8), c, NONE)


def test_single_bundles_strict_pack_and_spread_keep_their_rules() -> None:
    c = cluster(node("n1", 4, 2), node("n2", 4, 2), node("n3", 4, 2))
    assert place(job("j", 2, 2, strategy="STRICT_PACK"), c, NONE) is None  # STRICT_PACK: one node always
    p = place(job("j", 1, 1, 1, strategy="SPREAD"), c, STRICT)  # SPREAD is the request's own choice
    assert p is not None and len(p.nodes) == 3
    assert place(job("j", 2), c, STRICT) is not None


def test_labels_select_the_nodes_strict_counts() -> None:
    c = cluster(node("v1", 8, labels={"gpu_type": "V100"}), node("t1", 4, labels={"gpu_type": "T4"}))
    sel = {"gpu_type": "T4"}
    # 6 GPUs fit one node of the cluster, but no T4 node: the gang needs whole T4 nodes, and there is one
    assert place(gang("j", 6, label_selector=sel), c, STRICT) is None
    assert "whole nodes (consolidation strict) on nodes with gpu_type=T4" in explain_wait(
        gang("j", 6, label_selector=sel), c, STRICT
    )
    assert place(gang("j", 4, label_selector=sel), c, STRICT).bundle_nodes == ("t1",) * 4  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- node choice


def test_node_choice_first_fit_best_fit() -> None:
    c = cluster(node("a", 8, 6), node("b", 8, 2), node("c", 8, 3))
    ff = PlacementSettings(node_choice="first_fit")
    assert place(job("j", 2), c, ff).bundle_nodes == ("a",)  # type: ignore[union-attr]
    assert place(job("j", 2), c).bundle_nodes == ("b",)  # type: ignore[union-attr]  # best_fit
    assert place(job("j", 3), c, ff).bundle_nodes == ("a",)  # type: ignore[union-attr]
    assert place(job("j", 3), c).bundle_nodes == ("c",)  # type: ignore[union-attr]


def test_fgd_keeps_room_for_the_tasks_the_mix_expects() -> None:
    # Half the tasks need 4 GPUs.  One GPU on b (4 free) leaves 3, where no 4-GPU task fits;
    # on a (5 free) it leaves 4.  best_fit picks b (least left over); fgd picks a.
    c = cluster(node("a", 8, 5), node("b", 8, 4))
    mix = TaskMix.from_entries([TaskMixEntry(gpus=1, weight=1), TaskMixEntry(gpus=4, weight=1)])
    fgd = PlacementSettings(node_choice="fgd")
    assert place(job("j", 1), c).bundle_nodes == ("b",)  # type: ignore[union-attr]
    assert FreeLedger.from_cluster(c, placement=fgd, task_mix=mix).place(job("j", 1)).bundle_nodes == ("a",)  # type: ignore[union-attr]
    # without a mix (none observed yet) fgd is best_fit
    assert place(job("j", 1), c, fgd).bundle_nodes == ("b",)  # type: ignore[union-attr]
    # least_fragmenting: a generic mix of 1, 2, 4, 8 GPUs; it also keeps b's 4 GPUs whole
    lf = PlacementSettings(node_choice="least_fragmenting")
    assert place(job("j", 1), c, lf).bundle_nodes == ("a",)  # type: ignore[union-attr]


def test_node_fragmentation_follows_the_paper_on_the_ledgers_gpu_model() -> None:
    mix = TaskMix.from_entries([TaskMixEntry(gpus=0.5, cpus=1, weight=1), TaskMixEntry(gpus=2, cpus=1, weight=1)])
    total = (16.0, 4.0, 0.0, ())
    # 2.3 GPUs free = 2 whole + 0.3 of one: the 0.3 is useless to both kinds -> 0.3
    assert mix.node_fragmentation((8.0, 2.3, 0.0, ()), total, ()) == pytest.approx(0.3)
    # 1.6 free: the 2-GPU kind cannot run (all 1.6 lost, p=0.5); the 0.5 kind uses the 0.6 -> 0.8
    assert mix.node_fragmentation((8.0, 1.6, 0.0, ()), total, ()) == pytest.approx(0.8)
    # no CPU left: nothing runs, every free GPU is a fragment
    assert mix.node_fragmentation((0.0, 3.0, 0.0, ()), total, ()) == pytest.approx(3.0)
    # a label the mix's tasks need: the other kinds' fragment is all of the node's free GPUs
    labelled = TaskMix.from_entries([TaskMixEntry(gpus=1, labels={"gpu_type": "A100"})])
    assert labelled.node_fragmentation((8.0, 3.0, 0.0, ()), total, (("gpu_type", "T4"),)) == 3.0
    assert labelled.node_fragmentation((8.0, 3.0, 0.0, ()), total, (("gpu_type", "A100"),)) == 0.0
    # a gang bigger than the node counts the node only while it is whole
    big = TaskMix.from_entries([TaskMixEntry(gpus=8, gang=True)])
    assert big.node_fragmentation((8.0, 4.0, 0.0, ()), total, ()) == 0.0
    assert big.node_fragmentation((8.0, 3.0, 0.0, ()), total, ()) == 3.0
    assert generic_mix(8.0) is not None and [k[1] for k in generic_mix(8.0).kinds] == [1, 2, 4, 8]  # type: ignore[union-attr]


def test_task_mix_tracker_keeps_the_most_frequent_shapes_and_rebuilds_rarely() -> None:
    tracker = TaskMixTracker(PlacementSettings(node_choice="fgd", mix_coverage=0.7))
    assert tracker.mix is None
    for i in range(60):
        tracker.observe(job(f"a{i}", 1))
    for i in range(30):
        tracker.observe(job(f"b{i}", 2, 2))
    for i in range(10):
        tracker.observe(job(f"c{i}", 8))
    tracker.observe(job("cpu", 0))  # CPU-only requests are left out
    first = tracker.mix
    assert first is not None and tracker.seen == 100
    assert {(k[1], k[3]) for k in first.kinds} == {(1.0, False), (4.0, True)}  # 60% + 30% >= 70%
    assert sum(k[4] for k in first.kinds) == pytest.approx(1.0)
    tracker.observe(job("d", 1))
    assert tracker.mix is first  # rebuilt only after another tenth
    given = TaskMixTracker(PlacementSettings(node_choice="fgd", task_mix=(TaskMixEntry(gpus=4),)))
    given.observe(job("x", 1))
    assert given.mix is not None and [k[1] for k in given.mix.kinds] == [4.0]


# ----------------------------------------------------------------------------- policies, controller settings


def test_policies_place_with_the_snapshots_settings_and_preempt_one_node() -> None:
    nodes = [node("n1", 4), node("n2", 4)]
    run = [running(gang("r1", 2), "n1", "n1", start=0.0), running(gang("r2", 2), "n2", "n2", start=100.0)]
    snap = snapshot(nodes, queue=[gang("q", 4, t=1.0)], run=run, now=5000.0)
    d = get_policy("fifo").decide(snap)  # none: 2 + 2 free GPUs hold the gang
    assert d.started_ids == ("q",) and d.starts[0][1].nodes == {"n1", "n2"}
    strict = replace(snap, placement=STRICT)
    d = get_policy("fifo").decide(strict)
    assert d.started_ids == ()
    assert d.reasons["q"].startswith("needs 4 GPU on one node (consolidation strict); largest free block is 2 GPU")
    # las preempts for it under strict: one node's victims only (r2, the most recently started)
    d = get_policy("las").decide(strict)
    assert d.preemptions == ("r2",) and d.starts == (("q", Placement(("n2",) * 4)),)
    assert get_policy("las").decide(snap).preemptions == ()


def test_controller_settings_validate_placement() -> None:
    assert placement_from("strict", "fgd") == PlacementSettings(consolidation="strict", node_choice="fgd")
    with pytest.raises(PolicyConfigError, match="consolidation"):
        placement_from("loose", "best_fit")
    with pytest.raises(PolicyConfigError, match="node_choice"):
        placement_from("none", "worst_fit")


# ----------------------------------------------------------------------------- spread slowdown


def test_spread_slowdown_forms() -> None:
    assert SpreadSlowdown.model_validate(1.3).factor_for(2) == 1.3  # the old single number
    assert SpreadSlowdown.model_validate(1.3).factor_for(1) == 1.0
    per = SpreadSlowdown(per_extra_node=0.1)
    assert [per.factor_for(n) for n in (1, 2, 4)] == [1.0, pytest.approx(1.1), pytest.approx(1.3)]
    table = SpreadSlowdown(by_nodes={2: 1.1, 4: 1.5})
    assert [table.factor_for(n) for n in (2, 3, 4, 9)] == [1.1, 1.1, 1.5, 1.5]
    racks = SpreadSlowdown(per_extra_node=0.1, cross_rack=2.0)
    same = racks.factor_on([{"rack": "r1"}, {"rack": "r1"}])
    assert same == pytest.approx(1.1) and racks.factor_on([{"rack": "r1"}, {"rack": "r2"}]) == pytest.approx(2.2)
    assert racks.factor_on([{}, {}]) == pytest.approx(1.1)  # unlabelled nodes share one rack
    with pytest.raises(ValidationError, match="one of a factor, per_extra_node or by_nodes"):
        SpreadSlowdown(factor=1.2, per_extra_node=0.1)
    with pytest.raises(ValidationError, match="not decrease"):
        SpreadSlowdown(by_nodes={2: 1.5, 4: 1.2})
    with pytest.raises(ValidationError, match="start at 2"):
        SpreadSlowdown(by_nodes={1: 1.5})
    with pytest.raises(ValidationError):
        SpreadSlowdown.model_validate(0.5)


def test_cpu_gangs_use_whole_cpu_nodes() -> None:
    c = cluster(
        NodeView("a", Resources.of(cpu=8), Resources.of(cpu=8)),
        NodeView("b", Resources.of(cpu=8), Resources.of(cpu=6)),
        NodeView("c", Resources.of(cpu=8), Resources.of(cpu=8)),
    )
    p = place(JobRequest("j", (Resources.of(cpu=4),) * 3), c, STRICT)
    assert p is not None and nodes_of(p) == ["a", "c"]
