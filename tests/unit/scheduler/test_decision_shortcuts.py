"""Shortcuts of the third speed pass (issue 21 item 2) against what they replace.

* backfill's order of end estimates, kept across decisions (``DecisionIndex.running_order``);
* the ledger's group keys kept sorted by free GPU (``FreeLedger._by_gpu``), which lets best-fit
  stop early, and the regrouping of a release that touches most nodes (``FreeLedger._regroup``);
* the derived vectors a ``JobRequest`` shares with every request of the same bundles tuple;
* the controller keeping the ``RunningJob`` objects of unchanged running jobs;
* views handing their ledger on (``replace_nodes(handoff=True)``, the simulator's);
* preemption keeping victims by counting slots instead of placing the gang each time.

Every policy's indexed decisions are compared with from-scratch ones in
``test_decision_index.py`` (random snapshots and event sequences).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import test_properties as props
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import job, node, running, snapshot
from test_decision_index import _scratch
from test_decision_speed import PLACEMENTS

from raypipe.resources import Resources
from raypipe.scheduler import get_policy, vec
from raypipe.scheduler.errors import InvalidRequestError
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.preemption import PreemptionMixin
from raypipe.scheduler.types import JobRequest, NodeView, Snapshot

# ---------------------------------------------------------------- backfill's end order


def test_backfill_reservation_follows_the_running_jobs_that_changed() -> None:
    # Decision 1: a (n1, ends at 100) and b (n2, ends at 200): the head is reserved from t=100.
    # Decision 2: b finished and c (n2, ends at 20) started: the kept order must drop b and add
    # c, so the head is reserved from t=20 (a stale order would still say t=100).
    nodes = [node("n1", 8), node("n2", 8)]
    queue = [job("h", 8, t=1), job("x", 8, t=2, duration_estimate_s=5.0)]
    a = running(job("a", 8), "n1", end=100.0)
    policy = get_policy("backfill")
    for run in ([a, running(job("b", 8), "n2", end=200.0)], [a, running(job("c", 8), "n2", end=20.0)]):
        snap = snapshot(nodes, queue=queue, run=run, now=0.0)
        d = policy.decide(snap)
        assert d == _scratch("backfill", {}, snap)
    assert "reserved from t=20" in d.reasons["h"]


def test_backfill_reservation_rekeys_a_job_whose_end_estimate_changed() -> None:
    # The same job id with a new RunningJob object (a new expected end): re-keyed, not reused.
    nodes = [node("n1", 8)]
    queue = [job("h", 8, t=1)]
    policy = get_policy("backfill")
    for end in (300.0, 40.0):
        snap = snapshot(nodes, queue=queue, run=[running(job("a", 8), "n1", end=end)], now=0.0)
        d = policy.decide(snap)
        assert d == _scratch("backfill", {}, snap)
    assert "reserved from t=40" in d.reasons["h"]


# ---------------------------------------------------------------- ledger groups by free GPU

_GPU = [0.0, 1.0, 2.0, 3.0, 4.0, 8.0]
_NEEDS = [vec.make(c, g, 0.0) for g in (0.0, 1.0, 2.0, 4.0, 8.0) for c in (0.0, 1.0, 8.0)]


def _ledger(frees: list[tuple[float, float]], labels: list[int]) -> FreeLedger:
    nodes = [
        NodeView(
            f"n{i:02d}",
            Resources.of(cpu=16, gpu=8),
            Resources.of(cpu=c, gpu=g),
            {"t": "h"} if labels[i % len(labels)] else {},
        )
        for i, (g, c) in enumerate(frees)
    ]
    return FreeLedger(nodes)


def _brute_best_fit(ledger: FreeLedger, need: vec.Vec, sel: tuple) -> str | None:
    """Best fit as before the sorted order: every group scanned."""
    d = vec.dominant_index(need)
    no_gpu = need[1] <= vec.EPS
    best = None
    for (fv, labels, _), ids in ledger._groups.items():
        if not vec.fits(need, fv) or not ledger._match(labels, sel):
            continue
        key = (fv[1] if no_gpu else 0.0, fv[d] - need[d] if d < 3 else 0.0, ids[0])
        if best is None or key < best:
            best = key
    return None if best is None else best[2]


def _check(ledger: FreeLedger) -> None:
    fresh = FreeLedger(())
    ledger._share_tables(fresh)
    fresh._free = dict(ledger._free)
    fresh._regroup()
    assert ledger._groups == fresh._groups  # the same groups, each sorted by node id
    order = ledger._order[0]
    if order is not None:
        assert sorted(map(repr, order)) == sorted(map(repr, ledger._groups))
        assert [k[0][1] for k in order] == sorted(k[0][1] for k in order)
    for need in _NEEDS:
        for sel in ((), (("t", "h"),)):
            assert ledger._best_fit(need, sel, {}) == _brute_best_fit(ledger, need, sel), (need, sel)


op_st = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 30), st.sampled_from([1.0, 2.0, 4.0, 8.0])),
    st.tuples(st.just("release"), st.integers(0, 30), st.sampled_from([1.0, 2.0, 4.0, 8.0])),
    st.tuples(st.just("release_all"), st.integers(0, 30), st.just(0.0)),
    st.tuples(st.just("copy"), st.integers(0, 30), st.just(0.0)),
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frees=st.lists(st.tuples(st.sampled_from(_GPU), st.sampled_from([0.0, 4.0, 16.0])), min_size=1, max_size=12),
    labels=st.lists(st.booleans(), min_size=1, max_size=4),
    ops=st.lists(op_st, max_size=25),
)
def test_groups_by_free_gpu_stay_in_step_and_best_fit_equals_a_full_scan(
    frees: list[tuple[float, float]], labels: list[int], ops: list[tuple[str, int, float]]
) -> None:
    ledger = _ledger(frees, labels)
    _check(ledger)  # builds the order: every change below must keep it in step
    nids = sorted(ledger._free)
    for k, (kind, i, g) in enumerate(ops):
        nid = nids[i % len(nids)]
        req = JobRequest(f"j{k}", (Resources.of(cpu=1, gpu=g),))
        if kind == "alloc" and ledger.fits_on(req, nid):
            ledger.allocate(req, ledger.place(req) or _placement(nid))
        elif kind == "release":
            ledger.release(req, _placement(nid))
        elif kind == "release_all":  # most nodes at once: regrouped instead of moved one by one
            ledger.release_many((JobRequest(f"r{k}{n}", (Resources.of(cpu=16, gpu=8),)), _placement(n)) for n in nids)
        elif kind == "copy":
            other = ledger.copy()
            if ledger.fits_on(req, nid):
                other.allocate(req, _placement(nid))  # a copy's change never reaches the original
            _check(other)
        _check(ledger)


def _placement(nid: str):  # type: ignore[no-untyped-def]
    from raypipe.scheduler.types import Placement

    return Placement((nid,))


def test_a_new_group_is_found_by_best_fit() -> None:
    # n1 goes from 4 free GPUs to 1 (a group no node had): a 1-GPU need must now pick it.
    ledger = _ledger([(4.0, 16.0), (2.0, 16.0)], [0])
    assert ledger._best_fit(vec.make(0.0, 1.0, 0.0), (), {}) == "n01"
    ledger.allocate(JobRequest("x", (Resources.of(gpu=3),)), _placement("n00"))
    assert ledger._best_fit(vec.make(0.0, 1.0, 0.0), (), {}) == "n00"
    ledger.release(JobRequest("x", (Resources.of(gpu=3),)), _placement("n00"))
    assert ledger._best_fit(vec.make(0.0, 1.0, 0.0), (), {}) == "n01"


# ---------------------------------------------------------------- requests sharing bundles


def test_requests_of_one_bundles_tuple_share_vectors_but_not_shape_keys() -> None:
    bundles = (Resources.of(cpu=2, gpu=1),) * 2
    a = JobRequest("a", bundles, strategy="PACK")
    b = JobRequest("b", bundles, strategy="SPREAD")
    c = JobRequest("c", bundles, strategy="PACK", label_selector={"t": "h"})
    assert a.bundle_vecs is b.bundle_vecs and a.demand == Resources.of(cpu=4, gpu=2)
    assert len({a.shape_key, b.shape_key, c.shape_key}) == 3
    assert replace(a, job_id="a2").shape_key == a.shape_key
    assert JobRequest("d", tuple(bundles)).shape_key == a.shape_key  # equal bundles, another tuple


def test_invalid_bundles_are_rejected_every_time() -> None:
    bad = (Resources.of(gpu=1), "not resources")
    for _ in range(2):
        with pytest.raises(InvalidRequestError, match="non-negative Resources"):
            JobRequest("x", bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- views handing their ledger over


def _same(a: FreeLedger, b: FreeLedger) -> None:
    assert a._free == b._free and a._groups == b._groups


def test_a_view_made_with_handoff_takes_the_template_and_its_source_indexes_itself_again() -> None:
    snap = snapshot([node("n1", 8, 2), node("n2", 8, 8), node("n3", 4, 0)])
    parent = snap.cluster
    kept = FreeLedger.from_cluster(parent)  # indexes the parent: its template is kept on it
    changed = NodeView("n1", parent.node("n1").total, Resources.of(gpu=8), (), True)
    child = parent.replace_nodes([changed], handoff=True)
    fresh_child = FreeLedger(child.nodes)
    _same(FreeLedger.from_cluster(child), fresh_child)
    assert parent.ledger_template(False) is None  # taken over, not copied
    _same(FreeLedger.from_cluster(parent), FreeLedger(parent.nodes))  # the source still places as before
    _same(kept, FreeLedger(parent.nodes))  # a ledger copied from the template earlier is untouched
    grandchild = child.replace_nodes([NodeView("n2", parent.node("n2").total, Resources.of(gpu=3), (), True)])
    _same(FreeLedger.from_cluster(grandchild), FreeLedger(grandchild.nodes))
    _same(FreeLedger.from_cluster(child), fresh_child)  # without handoff the source keeps its template


# ---------------------------------------------------------------- preemption counting slots

_PREEMPTING = [c for c in props.POLICY_CONFIGS if c[0] in ("las", "fair_share") or c[1].get("preempt")]


@pytest.mark.parametrize(("name", "kwargs"), _PREEMPTING, ids=[f"{n}-{i}" for i, (n, _) in enumerate(_PREEMPTING)])
@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=props.snapshot_st(), placement=st.sampled_from(PLACEMENTS))
def test_keeping_victims_by_counting_slots_decides_as_placing_the_gang(
    name: str, kwargs: dict, snap: Snapshot, placement: object
) -> None:
    snap = replace(snap, placement=placement)
    counted = get_policy(name, **kwargs).decide(snap)
    PreemptionMixin.count_slots = False
    try:
        placed = get_policy(name, **kwargs).decide(snap)
    finally:
        PreemptionMixin.count_slots = True
    assert counted == placed


@pytest.mark.parametrize("count_slots", [True, False])
def test_a_victim_released_on_the_way_is_kept_when_the_gang_fits_without_it(count_slots: bool) -> None:
    # n1 (8 GPU) is full: n (2 GPU, not preemptible), v1 (2 GPU, newer) and v2 (4 GPU). w needs
    # 2 x 2 GPU: the walk releases v1 (one slot) then v2 (enough); giving v1 back still leaves
    # 2 slots, so only v2 is preempted (and w starts on n1).
    run = [
        running(job("n", 2, priority=9, preemptible=False), "n1", start=0),
        running(job("v1", 2), "n1", start=20),
        running(job("v2", 4), "n1", start=10),
    ]
    snap = snapshot([node("n1", 8)], queue=[job("w", 2, 2, t=1, priority=5)], run=run, now=30)
    PreemptionMixin.count_slots = count_slots
    try:
        d = get_policy("priority", preempt=True).decide(snap)
    finally:
        PreemptionMixin.count_slots = True
    assert d.preemptions == ("v2",)
    assert dict(d.starts)["w"].bundle_nodes == ("n1", "n1")


@pytest.mark.parametrize("count_slots", [True, False])
def test_a_gang_that_every_victim_together_cannot_make_room_for_preempts_nothing(count_slots: bool) -> None:
    # Each 8-GPU node holds a 6-GPU job that is not preemptible and a 2-GPU victim: w needs
    # 3 x 4 GPU, and even with both victims gone no node has 4 free GPUs. Slot counting says so
    # without trying placements; both ways nothing is preempted and w waits.
    run = [
        running(job("n1", 6, priority=9, preemptible=False), "a", start=0),
        running(job("v1", 2), "a", start=10),
        running(job("n2", 6, priority=9, preemptible=False), "b", start=0),
        running(job("v2", 2), "b", start=20),
    ]
    snap = snapshot([node("a", 8), node("b", 8)], queue=[job("w", 4, 3, t=1, priority=5)], run=run, now=30)
    PreemptionMixin.count_slots = count_slots
    try:
        d = get_policy("priority", preempt=True).decide(snap)
    finally:
        PreemptionMixin.count_slots = True
    assert d.preemptions == () and d.starts == ()
    assert "w" in d.reasons
