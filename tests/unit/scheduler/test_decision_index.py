"""Indexes kept across decisions (``DecisionIndex``) never change a decision.

One long-lived policy object (its index updated decision after decision) against
a fresh object with the index off (everything from scratch), on random snapshots
and random event sequences: time passing (LAS queue crossings), applied
decisions (starts, preemptions), jobs finishing (views derived with
``replace_nodes`` or built anew), preemptibility flips and new end estimates
(new ``RunningJob`` objects for the same job) and quota changes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import test_properties as props
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decision_speed import PLACEMENTS, _advance

from raypipe.resources import Resources
from raypipe.scheduler import Snapshot, TeamConfig, get_policy
from raypipe.scheduler.index import DecisionIndex
from raypipe.scheduler.types import ClusterView, Decision, RunningJob

CONFIGS: list[tuple[str, dict]] = [
    *props.POLICY_CONFIGS,
    ("las", {"thresholds": (5.0, 30.0, 200.0)}),
    ("las", {"thresholds": (10.0,), "max_preemptions": 1}),
    ("priority", {"preempt": True, "aging_s": 50.0, "max_preemptions": 2}),
]

event_st = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.0, 1.0, 7.0, 60.0, 400.0])),
    st.tuples(st.just("finish"), st.integers(0, 50)),
    st.tuples(st.just("finish-derived"), st.integers(0, 50)),
    st.tuples(st.just("finish-handoff"), st.integers(0, 50)),
    st.tuples(st.just("flip"), st.integers(0, 50)),
    st.tuples(st.just("end"), st.integers(0, 50)),
    st.tuples(st.just("quota"), st.sampled_from([None, 2.0, 8.0, 64.0])),
)


def _scratch(name: str, kwargs: dict, snap: Snapshot) -> Decision:
    DecisionIndex.enabled = False
    try:
        return get_policy(name, **kwargs).decide(snap)
    finally:
        DecisionIndex.enabled = True


def _finish(snap: Snapshot, k: int, derived: bool, handoff: bool = False) -> Snapshot:
    if not snap.running:
        return snap
    r = snap.running[k % len(snap.running)]
    released = snap.cluster.with_release(r.placement, r.request.bundles)
    cluster = released
    if derived:  # as the simulator does: only the changed nodes replaced, ledger templates derived (or taken over)
        changed = [released.node(nid) for nid in set(r.placement.bundle_nodes)]
        cluster = snap.cluster.replace_nodes(changed, handoff=handoff)
    running = tuple(x for x in snap.running if x is not r)
    return replace(snap, running=running, cluster=cluster)


def _flip(snap: Snapshot, k: int) -> Snapshot:
    if not snap.running:
        return snap
    i = k % len(snap.running)
    r = snap.running[i]
    flipped = RunningJob(
        replace(r.request, preemptible=not r.request.preemptible), r.placement, r.start_time, borrowed=r.borrowed
    )
    return replace(snap, running=snap.running[:i] + (flipped,) + snap.running[i + 1 :])


def _new_end(snap: Snapshot, k: int) -> Snapshot:
    """A running job's end estimate changes (a new ``RunningJob`` object for the same job): backfill re-keys it."""
    if not snap.running:
        return snap
    i = k % len(snap.running)
    r = snap.running[i]
    moved = RunningJob(r.request, r.placement, r.start_time, expected_end=snap.now + 1.0 + k % 7 * 30.0, borrowed=r.borrowed)
    return replace(snap, running=snap.running[:i] + (moved,) + snap.running[i + 1 :])


def _quota(snap: Snapshot, gpus: float | None) -> Snapshot:
    teams = dict(snap.teams)
    teams["a"] = TeamConfig(quota=None if gpus is None else Resources.of(gpu=gpus), priority=1)
    return replace(snap, teams=teams)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=props.snapshot_st(), placement=st.sampled_from(PLACEMENTS), events=st.lists(event_st, max_size=8))
def test_indexed_decisions_equal_from_scratch(
    name: str, kwargs: dict, snap: Snapshot, placement, events: list[tuple[str, object]]
) -> None:
    policy = get_policy(name, **kwargs)  # one object: its index lives across the whole sequence
    snap = replace(snap, placement=placement)
    for kind, arg in [("tick", 0.0), *events]:
        d = policy.decide(snap)
        assert d == _scratch(name, kwargs, snap), f"after event {kind} {arg}"
        if kind == "tick":
            snap = _advance(snap, d, float(arg))  # type: ignore[arg-type]
        elif kind in ("finish", "finish-derived", "finish-handoff"):
            snap = _finish(snap, int(arg), kind != "finish", kind == "finish-handoff")  # type: ignore[call-overload]
        elif kind == "flip":
            snap = _flip(snap, int(arg))  # type: ignore[call-overload]
        elif kind == "end":
            snap = _new_end(snap, int(arg))  # type: ignore[call-overload]
        else:
            snap = _quota(snap, arg)  # type: ignore[arg-type]
    assert policy.decide(snap) == _scratch(name, kwargs, snap)


def test_a_las_order_is_rekeyed_when_a_running_job_crosses_a_threshold() -> None:
    from sched_helpers import job, node, running, snapshot

    # r1 (started at 0, 1 GPU) crosses 50 GPU-s at t=50: from then on r2 (queue 0) is no longer
    # the only victim that ranks after it; the index must see the crossing without any event.
    run = [running(job("r1", 1), "n1", start=0), running(job("r2", 1), "n1", start=45)]
    policy = get_policy("las", thresholds=(50.0,))
    for now in (10.0, 49.0, 50.5, 51.0, 120.0):
        snap = snapshot([node("n1", 2, 0)], queue=[job("w", 1, t=1)], run=run, now=now)
        assert policy.decide(snap) == _scratch("las", {"thresholds": (50.0,)}, snap)


def test_the_index_holds_what_it_compares_by_identity() -> None:
    # Ids of running jobs are compared: the index keeps the objects alive, so an id is never reused.
    index = DecisionIndex()
    view = ClusterView(())
    assert index.never_table(view, None) is index.never_table(view, None)
    assert index.never_table(ClusterView(()), None) == {}
