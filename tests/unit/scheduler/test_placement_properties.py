"""Property tests of the placement settings on random heterogeneous clusters and gangs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import POLICY_CONFIGS, check_invariants, snapshot_st

from raypipe.resources import Resources
from raypipe.scheduler import ClusterView, JobRequest, NodeView, Snapshot, get_policy
from raypipe.scheduler.fragmentation import TaskMix
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.placement_settings import CONSOLIDATIONS, NODE_CHOICES, PlacementSettings, TaskMixEntry

settings_st = st.builds(
    lambda c, n: PlacementSettings(consolidation=c, node_choice=n),
    st.sampled_from(CONSOLIDATIONS),
    st.sampled_from(NODE_CHOICES),
)
MIX = TaskMix.from_entries(
    [TaskMixEntry(gpus=g, cpus=c, weight=w, gang=g > 4) for g, c, w in ((0.5, 2, 3), (1, 4, 4), (2, 4, 2), (8, 8, 1))]
)


@st.composite
def cluster_st(draw: st.DrawFn) -> ClusterView:
    """Up to 8 nodes of 1-8 GPUs (two GPU types), each partly used."""
    nodes = []
    for i in range(draw(st.integers(1, 8))):
        g = draw(st.sampled_from([1, 2, 4, 8]))
        total = Resources.of(cpu=8.0 * g, gpu=g)
        used_g = draw(st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 8.0]))
        used_c = draw(st.sampled_from([0.0, 0.0, 4.0, 16.0]))
        free = Resources.of(cpu=max(0.0, 8.0 * g - used_c), gpu=max(0.0, g - used_g))
        nodes.append(NodeView(f"n{i}", total, free, {"gpu_type": draw(st.sampled_from("AB"))}))
    return ClusterView(tuple(nodes))


@st.composite
def gang_st(draw: st.DrawFn) -> JobRequest:
    """A PACK gang of one-GPU bundles (a trace job), or of mixed bundles."""
    if draw(st.booleans()):
        bundles = (Resources.of(cpu=draw(st.sampled_from([0.0, 2.0, 8.0])), gpu=1.0),) * draw(st.integers(1, 20))
    else:
        bundles = tuple(
            Resources.of(cpu=draw(st.sampled_from([0.0, 4.0])), gpu=draw(st.sampled_from([0.5, 1.0, 2.0, 4.0])))
            for _ in range(draw(st.integers(1, 5)))
        )
    selector = draw(st.sampled_from([{}, {}, {"gpu_type": "A"}]))
    return JobRequest("j", bundles, strategy="PACK", label_selector=selector)


def _ledger(cluster: ClusterView, s: PlacementSettings) -> FreeLedger:
    return FreeLedger.from_cluster(cluster, placement=s, task_mix=MIX)


def _whole_capacities(cluster: ClusterView, req: JobRequest) -> list[int]:
    """Bundles of a gang of identical one-GPU bundles each matching node with every GPU free holds."""
    b = req.bundles[0]
    out = []
    for n in cluster.nodes:
        if n.matches(req.label_selector) and n.total.gpu > 0 and n.free.gpu >= n.total.gpu - 1e-9:
            by_cpu = int(n.free.cpu // b.cpu + 1e-9) if b.cpu > 0 else 10**6
            out.append(min(int(n.free.gpu + 1e-9), by_cpu))
    return sorted(out, reverse=True)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster=cluster_st(), req=gang_st(), s=settings_st)
def test_placement_properties(cluster: ClusterView, req: JobRequest, s: PlacementSettings) -> None:
    ledger = _ledger(cluster, s)
    p = ledger.place(req)
    fits_one = _ledger(cluster, s).totals().fits_one_node_total(req)
    assert fits_one == any(n.matches(req.label_selector) and req.demand.fits(n.total) for n in cluster.nodes)
    if p is not None:
        # never more than a node's free capacity, labels respected, the whole gang placed
        assert len(p.bundle_nodes) == len(req.bundles)
        per: dict[str, Resources] = {}
        for b, nid in zip(req.bundles, p.bundle_nodes, strict=True):
            per[nid] = per.get(nid, Resources()) + b
        for nid, need in per.items():
            node = cluster.node(nid)
            assert node.matches(req.label_selector)
            assert need.fits(node.free), f"{nid} over-committed: {need} > {node.free}"
        ledger.allocate(req, p)  # the ledger agrees
    if s.consolidation == "strict":
        if fits_one:
            one = any(n.matches(req.label_selector) and req.demand.fits(n.free) for n in cluster.nodes)
            assert (p is not None) == one, "strict: one node when one has room, else wait"
            assert p is None or len(p.nodes) == 1, "strict split a gang that fits one node"
        else:
            assert p is None or all(cluster.node(n).free.gpu >= cluster.node(n).total.gpu - 1e-9 for n in p.nodes)
            if all(b == req.bundles[0] for b in req.bundles) and req.bundles[0].gpu == 1:
                # identical one-GPU bundles: the fewest whole nodes (largest first), or wait
                sizes = _whole_capacities(cluster, req)
                need, k = len(req.bundles), 0
                while need > 0 and k < len(sizes):
                    need -= sizes[k]
                    k += 1
                assert (p is not None) == (need <= 0)
                assert p is None or len(p.nodes) == k
    strict = _ledger(cluster, s.model_copy(update={"consolidation": "strict"})).place(req)
    prefer = _ledger(cluster, s.model_copy(update={"consolidation": "prefer"})).place(req)
    none = _ledger(cluster, s.model_copy(update={"consolidation": "none"})).place(req)
    if strict is not None:
        assert prefer == strict, "prefer is strict whenever strict places the gang"
    else:
        assert prefer == none, "prefer spreads as none does when strict cannot place"


@pytest.mark.parametrize(
    ("name", "kwargs"), POLICY_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(POLICY_CONFIGS)]
)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=snapshot_st(), s=settings_st)
def test_policy_invariants_under_every_placement(name: str, kwargs: dict, snap: Snapshot, s: PlacementSettings) -> None:
    snap = replace(snap, placement=s, task_mix=MIX)
    policy = get_policy(name, **kwargs)
    d = policy.decide(snap)
    check_invariants(snap, d, policy)
    assert policy.decide(snap) == d, "decide must be deterministic"
    if s.consolidation == "strict":
        totals = FreeLedger.from_cluster(snap.cluster, use_total=True, placement=s)
        queued = {j.job_id: j for j in snap.queue}
        for jid, p in d.starts:
            if totals.one_node(queued[jid]):
                assert len(p.nodes) == 1, f"{name} split {jid} under strict"
