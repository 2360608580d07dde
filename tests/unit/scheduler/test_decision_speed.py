"""The speed machinery of a decision must not change it: wait memos, preemption budget, batched ledger updates."""

from __future__ import annotations

from dataclasses import replace
from unittest.mock import patch

import pytest
import test_properties as props
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import gpu, job, node, running, snapshot

from raypipe.resources import Resources
from raypipe.scheduler import PolicyConfigError, Snapshot, TeamConfig, get_policy
from raypipe.scheduler.cluster_spec import ClusterSpec
from raypipe.scheduler.context import DEFAULT_MAX_PREEMPTIONS, DecisionContext
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.placement_settings import PlacementSettings
from raypipe.scheduler.policies import FairSharePolicy, LasPolicy, PriorityPolicy
from raypipe.scheduler.simulator import simulate
from raypipe.scheduler.traces import synthetic_philly
from raypipe.scheduler.types import ClusterView, Decision, JobRequest, NodeView, Placement

CAPPED: list[tuple[str, dict]] = [
    ("las", {"thresholds": (10.0, 100.0), "max_preemptions": 1}),
    ("las", {"thresholds": (10.0,), "max_preemptions": 0}),
    ("priority", {"preempt": True, "aging_s": 50.0, "max_preemptions": 1}),
    ("fair_share", {"max_preemptions": 1}),
]


# ------------------------------------------------------------------- wait memos


@pytest.mark.parametrize(
    ("name", "kwargs"), props.POLICY_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(props.POLICY_CONFIGS)]
)
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=props.snapshot_st())
def test_memos_never_change_a_decision(name: str, kwargs: dict, snap: Snapshot) -> None:
    policy = get_policy(name, **kwargs)
    fast = policy.decide(snap)
    DecisionContext.use_memos = False
    try:
        slow = policy.decide(snap)
    finally:
        DecisionContext.use_memos = True
    assert fast == slow


def _reclaim_snapshot() -> Snapshot:
    # r (team a, 8 GPU) is demoted (800 GPU-s > 100).  x1 is over team a's quota;
    # y (team b) preempts r, which gives team a its quota back: x2, same class as x1, may start.
    run = [running(job("r", 8, team="a"), "n1", start=0)]
    queue = [job("x1", 2, t=10, team="a"), job("y", 4, t=11, team="b"), job("x2", 2, t=12, team="a")]
    return snapshot([node("n1", 8)], queue=queue, run=run, now=100, teams={"a": TeamConfig(quota=gpu(8))})


@pytest.mark.parametrize("use_memos", [True, False])
def test_a_preemption_invalidates_the_memo(use_memos: bool) -> None:
    DecisionContext.use_memos = use_memos
    try:
        d = LasPolicy(thresholds=[100]).decide(_reclaim_snapshot())
    finally:
        DecisionContext.use_memos = True
    assert d.preemptions == ("r",)
    assert d.started_ids == ("y", "x2")
    assert "at quota" in d.reasons["x1"]


def test_a_start_invalidates_the_team_memo_reason() -> None:
    # Quota reasons carry the team's usage: after a start of the team they are recomputed.
    queue = [job("a1", 4, t=0, team="a"), job("big", 8, t=1, team="a"), job("a2", 2, t=2, team="a")]
    snap = snapshot([node("n1", 8), node("n2", 8)], queue=queue, teams={"a": TeamConfig(quota=gpu(8))})
    d = get_policy("backfill").decide(snap)
    assert d.started_ids == ("a1", "a2")
    assert "4/8 GPU" in d.reasons["big"]


# ------------------------------------------------------------ preemption budget


def test_default_cap_and_validation() -> None:
    assert LasPolicy().max_preemptions == DEFAULT_MAX_PREEMPTIONS
    assert PriorityPolicy().max_preemptions == DEFAULT_MAX_PREEMPTIONS
    assert FairSharePolicy().max_preemptions == DEFAULT_MAX_PREEMPTIONS
    assert LasPolicy(max_preemptions=None).max_preemptions is None
    for name in ("las", "priority", "fair_share"):
        for bad in (-1, 1.5, True, "3"):
            with pytest.raises(PolicyConfigError):
                get_policy(name, max_preemptions=bad)


def _storm() -> Snapshot:
    # Four demoted 8-GPU jobs fill four nodes; four fresh 8-GPU jobs each need one preemption.
    run = [running(job(f"r{i}", 8), f"n{i}", start=float(i)) for i in range(4)]
    queue = [job(f"w{i}", 8, t=50 + i) for i in range(4)]
    return snapshot([node(f"n{i}", 8) for i in range(4)], queue=queue, run=run, now=100)


@pytest.mark.parametrize(("cap", "expect"), [(None, 4), (4, 4), (3, 3), (1, 1), (0, 0)])
def test_las_preemptions_are_capped_per_decision(cap: int | None, expect: int) -> None:
    d = LasPolicy(thresholds=[100], max_preemptions=cap).decide(_storm())
    assert len(d.preemptions) == expect
    assert len(d.starts) == expect
    # Newest victims first, as without a cap.
    assert d.preemptions == ("r3", "r2", "r1", "r0")[:expect]
    assert all(d.reasons[f"w{i}"].endswith("(las queue 0)") for i in range(expect, 4))


def test_a_gang_needing_more_victims_than_the_budget_waits() -> None:
    # w needs both 4-GPU victims on n0 (one node): over a budget of 1, so nothing is preempted.
    run = [running(job("a", 4), "n0", start=1), running(job("b", 4), "n0", start=2)]
    snap = snapshot([node("n0", 8)], queue=[job("w", 8, t=50)], run=run, now=100)
    assert LasPolicy(thresholds=[100], max_preemptions=1).decide(snap).preemptions == ()
    assert set(LasPolicy(thresholds=[100], max_preemptions=2).decide(snap).preemptions) == {"a", "b"}
    # Multi-node gang: 2 x 8 GPU needs two whole nodes, i.e. two victims.
    run = [running(job(f"r{i}", 8), f"n{i}", start=float(i)) for i in range(3)]
    snap = snapshot([node(f"n{i}", 8) for i in range(3)], queue=[job("g", 8, 8, t=50)], run=run, now=100)
    assert LasPolicy(thresholds=[100], max_preemptions=1).decide(snap).preemptions == ()
    d = LasPolicy(thresholds=[100], max_preemptions=2).decide(snap)
    assert d.preemptions == ("r2", "r1") and d.started_ids == ("g",)


@pytest.mark.parametrize(("name", "kwargs"), CAPPED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CAPPED)])
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=props.snapshot_st())
def test_capped_policies_keep_invariants_and_the_cap(name: str, kwargs: dict, snap: Snapshot) -> None:
    policy = get_policy(name, **kwargs)
    d = policy.decide(snap)
    props.check_invariants(snap, d, policy)
    assert len(d.preemptions) <= kwargs["max_preemptions"]
    assert policy.decide(snap) == d


# ------------------------------------------------------------------ the ledger


def _state(ledger: FreeLedger) -> tuple[dict, dict]:
    return dict(ledger._free), {k: list(v) for k, v in ledger._groups.items()}


def test_release_many_equals_releasing_one_by_one() -> None:
    view = ClusterView((node("n1", 8, 0), node("n2", 8, 2), node("n3", 4, 0, alive=False)))
    jobs = [
        (job("a", 4, 4), ("n1", "n2")),
        (job("b", 2), ("n1",)),
        (job("c", 1), ("n3",)),  # dead node: ignored
        (job("d", 4), ("n2",)),
    ]
    one, many = FreeLedger.from_cluster(view), FreeLedger.from_cluster(view)
    for req, nodes in jobs:
        one.release(req, Placement(nodes))
    touched = many.release_many((req, Placement(nodes)) for req, nodes in jobs)
    assert _state(one) == _state(many)
    assert touched == {"n1", "n2"}


def test_totals_ledger_equals_a_ledger_of_totals() -> None:
    view = ClusterView(
        (node("n2", 8, 3, labels={"gpu_type": "A"}), node("n1", 8, 0), node("n3", 4, 1), node("n0", 8, alive=False))
    )
    derived = FreeLedger.from_cluster(view).totals()
    direct = FreeLedger.from_cluster(view, use_total=True)
    assert _state(derived) == _state(direct)
    derived.allocate(job("x", 8), derived.place(job("x", 8)))  # type: ignore[arg-type]
    assert _state(FreeLedger.from_cluster(view).totals()) == _state(direct)


# ------------------------------------------- indexed LAS against the from-scratch path


class _ScratchLas(LasPolicy):
    """LAS the from-scratch way: each waiting job's queue computed one by one (starvation
    guard and all), and no victim order declared (the context indexes each prefix anew)."""

    def _buckets(self, queue, now):  # type: ignore[no-untyped-def]
        out: dict[int, list] = {}
        for j in queue:
            out.setdefault(self._waiting_queue(j, now), []).append(j)
        return out

    def decide(self, snapshot: Snapshot) -> Decision:
        with patch.object(DecisionContext, "victim_order", lambda self, victims: None):
            return super().decide(snapshot)


PLACEMENTS = [
    PlacementSettings(),
    PlacementSettings(consolidation="strict", node_choice="first_fit"),
    PlacementSettings(consolidation="prefer", node_choice="least_fragmenting"),
]
LAS_CONFIGS: list[dict] = [
    {},
    {"thresholds": (10.0, 100.0)},
    {"thresholds": (10.0, 100.0), "starve_factor": 2.0},
    {"thresholds": (5.0, 50.0, 500.0), "max_preemptions": 1},
    {"thresholds": ()},
]


def _advance(snap: Snapshot, d: Decision, dt: float) -> Snapshot:
    """Apply ``d``, move time on by ``dt`` and finish the running jobs whose estimate has passed."""
    nxt = props._after(snap, d)
    now = snap.now + dt
    cluster, running = nxt.cluster, []
    for r in nxt.running:
        end = r.end_estimate
        if end is not None and end <= now:
            cluster = cluster.with_release(r.placement, r.request.bundles)
        else:
            running.append(r)
    return replace(nxt, now=now, running=tuple(running), cluster=cluster, placement=snap.placement)


@pytest.mark.parametrize("kwargs", LAS_CONFIGS, ids=[str(i) for i in range(len(LAS_CONFIGS))])
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    snap=props.snapshot_st(),
    placement=st.sampled_from(PLACEMENTS),
    steps=st.lists(st.sampled_from([0.0, 7.0, 60.0, 400.0]), min_size=1, max_size=4),
)
def test_indexed_las_decides_as_from_scratch(kwargs: dict, snap: Snapshot, placement, steps: list[float]) -> None:
    # A sequence of decisions (starts, preemptions, finishes as time moves on), each compared.
    fast, slow = LasPolicy(**kwargs), _ScratchLas(**kwargs)
    snap = replace(snap, placement=placement)
    for dt in steps:
        d = fast.decide(snap)
        assert d == slow.decide(snap)
        snap = _advance(snap, d, dt)


def test_indexed_las_replays_a_trace_as_from_scratch() -> None:
    trace = synthetic_philly(jobs=300, total_gpus=32, load=1.2, seed=3)
    cluster = ClusterSpec.from_flags(32, 8)
    fast = simulate(trace, cluster, LasPolicy(thresholds=(600.0, 3600.0)))
    slow = simulate(trace, cluster, _ScratchLas(thresholds=(600.0, 3600.0)))
    assert fast.decisions == slow.decisions
    assert fast.records == slow.records
    assert any(len(r.runs) > 1 for r in fast.records), "the trace should make LAS preempt"


def test_release_many_with_custom_kinds_equals_one_by_one() -> None:
    tot = Resources.of(cpu=8, gpu=4, custom={"tpu": 2})
    view = ClusterView(
        (NodeView("n1", tot, Resources.of(cpu=0, gpu=0, custom={})), NodeView("n2", tot, Resources.of()))
    )
    a = JobRequest("a", (Resources.of(cpu=4, gpu=2, custom={"tpu": 1}),) * 2)
    b = JobRequest("b", (Resources.of(cpu=4, gpu=2),) * 2)
    jobs = [(a, Placement(("n1", "n1"))), (b, Placement(("n2", "n2")))]
    one, many = FreeLedger.from_cluster(view), FreeLedger.from_cluster(view)
    for req, pl in jobs:
        one.release(req, pl)
    many.release_many(jobs)
    assert _state(one) == _state(many)


@pytest.mark.parametrize(
    ("name", "kwargs"), props.POLICY_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(props.POLICY_CONFIGS)]
)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    snap=props.snapshot_st(),
    placement=st.sampled_from(PLACEMENTS),
    steps=st.lists(st.sampled_from([0.0, 7.0, 60.0, 400.0]), min_size=1, max_size=3),
)
def test_skipping_answered_jobs_never_changes_a_sequence_of_decisions(
    name: str, kwargs: dict, snap: Snapshot, placement, steps: list[float]
) -> None:
    # Every policy, every placement setting: with memos (answered jobs skipped in one loop) and
    # without (each job examined from scratch), decision after decision.
    policy = get_policy(name, **kwargs)
    snap = replace(snap, placement=placement)
    for dt in steps:
        fast = policy.decide(snap)
        DecisionContext.use_memos = False
        try:
            slow = policy.decide(snap)
        finally:
            DecisionContext.use_memos = True
        assert fast == slow
        snap = _advance(snap, fast, dt)


@pytest.mark.parametrize("use_memos", [True, False])
def test_backfill_keeps_separate_memos_for_jobs_that_end_before_the_reservation(use_memos: bool) -> None:
    # h needs both nodes (n1 frees at t=100). x1 (no estimate) may not take n2; x2, the same
    # team and shape, ends by t=60 and may: x1's "reserved" must not be recalled for it.
    run = [running(job("r", 8), "n1", start=0, end=100)]
    queue = [
        job("h", 8, 8, t=1),
        job("x1", 8, t=2),
        job("x2", 8, t=3, duration_estimate_s=50.0),
    ]
    snap = snapshot([node("n1", 8, 0), node("n2", 8)], queue=queue, run=run, now=10)
    DecisionContext.use_memos = use_memos
    try:
        d = get_policy("backfill").decide(snap)
    finally:
        DecisionContext.use_memos = True
    assert d.started_ids == ("x2",)
    assert "reserved for h" in d.reasons["x1"]
