"""The speed machinery of a decision must not change it: wait memos, preemption budget, batched ledger updates."""

from __future__ import annotations

import pytest
import test_properties as props
from hypothesis import HealthCheck, given, settings
from sched_helpers import gpu, job, node, running, snapshot

from raypipe.scheduler import PolicyConfigError, Snapshot, TeamConfig, get_policy
from raypipe.scheduler.context import DEFAULT_MAX_PREEMPTIONS, DecisionContext
from raypipe.scheduler.placement import FreeLedger
from raypipe.scheduler.policies import FairSharePolicy, LasPolicy, PriorityPolicy
from raypipe.scheduler.types import ClusterView, Placement

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
