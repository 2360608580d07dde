"""Gang placement: strategies, labels, fragmentation, infeasibility reasons."""

from __future__ import annotations

import pytest
from sched_helpers import gpu, job, node

from raypipe.resources import Resources
from raypipe.scheduler import ClusterView, JobRequest, TeamConfig, explain_wait, feasible_ever, place
from raypipe.scheduler.placement import FreeLedger


def cluster(*nodes):  # type: ignore[no-untyped-def]
    return ClusterView(tuple(nodes))


def test_pack_puts_whole_gang_on_one_node_when_possible() -> None:
    c = cluster(node("n1", 8, 8), node("n2", 8, 8))
    p = place(job("j", 2, 2, 2), c)
    assert p is not None and p.bundle_nodes == ("n1", "n1", "n1")


def test_pack_best_fit_keeps_big_blocks_whole() -> None:
    # 2 GPUs go to the node where they leave the smallest leftover (n2: 3 free -> 1 left).
    c = cluster(node("n1", 8, 8), node("n2", 8, 3), node("n3", 8, 5))
    assert place(job("j", 2), c).bundle_nodes == ("n2",)  # type: ignore[union-attr]
    # ties go to the smallest node id
    c = cluster(node("b", 8, 4), node("a", 8, 4))
    assert place(job("j", 4), c).bundle_nodes == ("a",)  # type: ignore[union-attr]


def test_pack_uses_fewest_nodes_when_gang_must_split() -> None:
    c = cluster(node("n1", 8, 4), node("n2", 8, 4), node("n3", 8, 4))
    p = place(job("j", 2, 2, 2, 2), c)
    assert p is not None and len(p.nodes) == 2


def test_spread_uses_distinct_nodes_then_falls_back() -> None:
    c = cluster(node("n1", 8), node("n2", 8), node("n3", 8))
    p = place(job("j", 1, 1, 1, strategy="SPREAD"), c)
    assert p is not None and len(p.nodes) == 3
    p = place(job("j", 1, 1, 1, 1, strategy="SPREAD"), c)
    assert p is not None and len(p.nodes) == 3 and len(p.bundle_nodes) == 4


def test_strict_pack_needs_one_node() -> None:
    c = cluster(node("n1", 8, 4), node("n2", 8, 4))
    assert place(job("j", 2, 2, 2, strategy="STRICT_PACK"), c) is None
    assert place(job("j", 2, 2, 2), c) is not None  # PACK may split


def test_labels_and_dead_nodes_are_respected() -> None:
    c = cluster(
        node("a100-dead", 8, labels={"gpu_type": "A100"}, alive=False),
        node("v100", 8, labels={"gpu_type": "V100"}),
        node("a100", 8, 2, labels={"gpu_type": "A100", "zone": "z1"}),
    )
    assert place(job("j", 2, label_selector={"gpu_type": "A100"}), c).bundle_nodes == ("a100",)  # type: ignore[union-attr]
    assert place(job("j", 4, label_selector={"gpu_type": "A100"}), c) is None
    assert place(job("j", 1, label_selector={"gpu_type": "H100"}), c) is None


def test_gang_is_all_or_nothing_on_the_ledger() -> None:
    ledger = FreeLedger.from_cluster(cluster(node("n1", 8, 4), node("n2", 8, 2)))
    big = job("j", 4, 4)
    assert ledger.place(big) is None
    assert ledger.free_of("n1") == gpu(4) and ledger.free_of("n2") == gpu(2)


def test_cpu_only_jobs_avoid_nodes_with_free_gpus() -> None:
    c = cluster(
        NodeViewish("gpu-node", Resources.of(cpu=32, gpu=8)),
        NodeViewish("cpu-node", Resources.of(cpu=64)),
    )
    j = JobRequest("cpu", (Resources.of(cpu=4),))
    assert place(j, c).bundle_nodes == ("cpu-node",)  # type: ignore[union-attr]


def NodeViewish(node_id: str, total: Resources):  # type: ignore[no-untyped-def]
    from raypipe.scheduler import NodeView

    return NodeView(node_id, total, total)


def test_explain_wait_names_largest_free_block() -> None:
    c = cluster(node("node-1", 8, 0), node("node-2", 8, 1), node("node-3", 8, 2))
    assert explain_wait(job("j", 4), c) == "needs 4 GPU on one node; largest free block is 2 GPU (node-3)"
    assert explain_wait(job("j", 2), c) == "fits now"
    msg = explain_wait(job("j", 2, 2, strategy="SPREAD"), c)
    assert msg.startswith("gang of 2 bundles (SPREAD) needs 4 GPU")
    msg = explain_wait(job("j", 2, 2, strategy="STRICT_PACK"), c)
    assert msg == "needs 4 GPU on one node (STRICT_PACK); largest free block is 2 GPU (node-3)"


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (job("big", 16), "never schedulable: needs 16 GPU on one node; largest node has 8 GPU (n1)"),
        (
            job("lbl", 1, label_selector={"gpu_type": "H100"}),
            "never schedulable: no alive node has labels gpu_type=H100",
        ),
        (
            job("strict", 6, 6, strategy="STRICT_PACK"),
            "never schedulable: needs 12 GPU on one node (STRICT_PACK); largest node has 8 GPU (n1)",
        ),
        (job("huge-gang", 8, 8, 8), "never schedulable: gang of 3 bundles (PACK) needs 24 GPU"),
        (job("ok", 8, 8), None),
    ],
)
def test_feasible_ever(request_: JobRequest, expected: str | None) -> None:
    c = cluster(node("n1", 8, 0), node("n2", 8, 0))
    got = feasible_ever(request_, c)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.startswith(expected)


def test_feasible_ever_quota_unless_borrowing() -> None:
    c = cluster(node("n1", 8), node("n2", 8))
    teams = {"research": TeamConfig(quota=gpu(4))}
    j = job("j", 8, team="research")
    assert feasible_ever(j, c, teams) == "never schedulable: demand exceeds team research's quota (8 GPU > 4 GPU)"
    assert feasible_ever(j, c, teams, allow_borrowing=True) is None


def test_ledger_release_clamps_and_clears_failed_shapes() -> None:
    ledger = FreeLedger.from_cluster(cluster(node("n1", 8, 2)))
    j, small = job("j", 4), job("s", 2)
    assert ledger.place(j) is None
    p = ledger.place(small)
    assert p is not None
    ledger.allocate(small, p)
    ledger.release(small, p)
    assert ledger.free_of("n1") == gpu(2)
    for _ in range(5):
        ledger.release(small, p)  # more than was taken: clamped at the total
    assert ledger.free_of("n1") == gpu(8)
    assert ledger.place(j) is not None
