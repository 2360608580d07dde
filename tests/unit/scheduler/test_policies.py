"""Per-policy behaviour on hand-made snapshots."""

from __future__ import annotations

import pytest
from sched_helpers import gpu, job, node, running, snapshot

from raypipe.exceptions import RaypipeError
from raypipe.scheduler import PolicyConfigError, TeamConfig, UnknownPolicyError, available_policies, get_policy
from raypipe.scheduler.policies import BackfillPolicy, FairSharePolicy, FifoPolicy, LasPolicy, PriorityPolicy

# ---------------------------------------------------------------------- registry


def test_registry_lists_every_policy() -> None:
    assert available_policies() == ("fifo", "priority", "backfill", "fair_share", "las")
    assert isinstance(get_policy("priority", aging_s=60, preempt=True), PriorityPolicy)
    assert get_policy("las").name == "las"


def test_unknown_policy_lists_choices() -> None:
    with pytest.raises(UnknownPolicyError) as err:
        get_policy("sjf")
    assert isinstance(err.value, RaypipeError)
    assert "fifo, priority, backfill, fair_share, las" in str(err.value)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("fifo", {"aging_s": 1}), ("priority", {"aging_s": 0}), ("las", {"thresholds": [5, 1]})]
)
def test_bad_policy_arguments_raise(name: str, kwargs: dict) -> None:
    with pytest.raises(PolicyConfigError):
        get_policy(name, **kwargs)


# -------------------------------------------------------------------------- fifo


def test_fifo_head_blocks_everyone_behind_it() -> None:
    snap = snapshot([node("n1", 8)], queue=[job("a", 4, t=0), job("b", 8, t=1), job("c", 2, t=2)])
    d = FifoPolicy().decide(snap)
    assert d.started_ids == ("a",)
    assert d.reasons["b"] == "needs 8 GPU on one node; largest free block is 4 GPU (n1) (head of line, fifo)"
    assert d.reasons["c"] == "behind head-of-line job b (fifo)"


def test_fifo_skips_never_runnable_and_quota_blocked_jobs() -> None:
    teams = {"research": TeamConfig(quota=gpu(4))}
    r = running(job("r", 4, team="research"), "n1")
    snap = snapshot(
        [node("n1", 8)],
        queue=[job("huge", 16, t=0), job("q", 2, t=1, team="research"), job("ok", 2, t=2)],
        run=[r],
        teams=teams,
    )
    d = FifoPolicy().decide(snap)
    assert d.started_ids == ("ok",)
    assert d.reasons["huge"].startswith("never schedulable: needs 16 GPU on one node")
    assert d.reasons["q"] == "team research at quota 4/4 GPU (needs 2 more)"


# ---------------------------------------------------------------------- priority


def test_priority_order_and_head_of_line_blocking() -> None:
    snap = snapshot(
        [node("n1", 8, 4)],
        queue=[
            job("low", 4, t=0, priority=0),
            job("high", 2, t=1, priority=5),
            job("mid", 2, t=2, priority=1),
            job("tiny", 1, t=3),
        ],
    )
    d = PriorityPolicy().decide(snap)
    assert d.started_ids == ("high", "mid")
    assert "highest waiting priority" in d.reasons["low"]
    assert d.reasons["tiny"] == "behind higher-priority job low (priority)"


def test_aging_prevents_starvation_of_a_big_low_priority_job() -> None:
    big = job("big", 8, t=0, priority=0)
    small_early = job("small", 2, t=90, priority=1)
    # Early on, the fresh priority-1 job goes first.
    early = PriorityPolicy(aging_s=600).decide(snapshot([node("n1", 8, 4)], queue=[big, small_early], now=100))
    assert early.started_ids == ("small",)
    # Much later, the big job has aged past newer priority-1 jobs and holds the line.
    late_small = job("small2", 2, t=1990, priority=1)
    late = PriorityPolicy(aging_s=600).decide(snapshot([node("n1", 8, 4)], queue=[big, late_small], now=2000))
    assert late.started_ids == ()
    assert late.reasons["small2"] == "behind higher-priority job big (priority)"


@pytest.mark.parametrize(
    ("victim_kw", "preempt", "expect_preempt"),
    [
        ({"priority": 0}, True, True),
        ({"priority": 0}, False, False),
        ({"priority": 0, "preemptible": False}, True, False),
        ({"priority": 5}, True, False),  # equal base priority: no preemption
    ],
)
def test_priority_preemption(victim_kw: dict, preempt: bool, expect_preempt: bool) -> None:
    victim = running(job("victim", 8, **victim_kw), "n1", start=0)
    snap = snapshot([node("n1", 8)], queue=[job("urgent", 8, t=5, priority=5)], run=[victim], now=10)
    d = PriorityPolicy(preempt=preempt).decide(snap)
    assert d.preemptions == (("victim",) if expect_preempt else ())
    assert d.started_ids == (("urgent",) if expect_preempt else ())


def test_priority_preempts_lowest_then_newest_and_only_what_is_needed() -> None:
    run = [
        running(job("old-p0", 4, priority=0), "n1", start=0),
        running(job("new-p0", 4, priority=0), "n1", start=5),
        running(job("p1", 4, priority=1), "n2", start=1),
        running(job("p1b", 4, priority=1), "n2", start=2),
    ]
    snap = snapshot([node("n1", 8), node("n2", 8)], queue=[job("u", 4, priority=9)], run=run, now=10)
    d = PriorityPolicy(preempt=True).decide(snap)
    assert d.preemptions == ("new-p0",)
    assert d.starts[0][1].bundle_nodes == ("n1",)


# ---------------------------------------------------------------------- backfill


def test_backfill_short_job_runs_before_reservation_long_one_waits() -> None:
    r = running(job("r", 4), "n1", start=0, end=100)
    queue = [
        job("head", 12, t=0),
        job("short", 4, t=1, duration_estimate_s=50),
        job("long", 4, t=2, duration_estimate_s=500),
    ]
    d = BackfillPolicy().decide(snapshot([node("n1", 12)], queue=queue, run=[r], now=10))
    assert d.started_ids == ("short",)
    assert d.reasons["head"].endswith("next in line, reserved from t=100 (backfill)")
    assert d.reasons["long"] == "reserved for head until t=100 (backfill)"


def test_backfill_job_on_capacity_the_head_does_not_need() -> None:
    run = [running(job("r1", 8), "n1", end=100), running(job("r2", 4), "n2")]  # r2: unknown end
    queue = [job("head", 8, t=0), job("other", 4, t=1)]  # no duration estimate
    d = BackfillPolicy().decide(snapshot([node("n1", 8), node("n2", 8)], queue=queue, run=run, now=10))
    assert d.started_ids == ("other",)
    assert d.starts[0][1].bundle_nodes == ("n2",)


def test_backfill_unknown_end_means_no_backfill_that_could_delay_head() -> None:
    run = [running(job("r1", 6), "n1")]  # unknown end: shadow time is infinite
    queue = [job("head", 8, t=0), job("short", 2, t=1, duration_estimate_s=1)]
    d = BackfillPolicy().decide(snapshot([node("n1", 8)], queue=queue, run=run, now=0))
    assert d.started_ids == ()
    assert d.reasons["short"] == "reserved for head until an unknown time (backfill)"


# -------------------------------------------------------------------- fair share


def test_drf_serves_lowest_dominant_share_first() -> None:
    run = [running(job("a-run", 6, team="a"), "n1"), running(job("b-run", 2, team="b"), "n2")]
    queue = [job("a1", 2, t=0, team="a"), job("b1", 2, t=1, team="b")]
    d = FairSharePolicy().decide(snapshot([node("n1", 8), node("n2", 8, 2)], queue=queue, run=run))
    # b (2/16) is served before a (6/16); then a is served with what is left.
    assert d.started_ids == ("b1", "a1")


def test_drf_weights_scale_shares() -> None:
    run = [running(job("a-run", 6, team="a"), "n1"), running(job("b-run", 4, team="b"), "n2")]
    queue = [job("b1", 2, t=0, team="b"), job("a1", 2, t=1, team="a")]
    nodes = [node("n1", 8, 2), node("n2", 8, 4)]
    teams = {"a": TeamConfig(weight=3.0)}
    snap = snapshot(nodes, queue=queue, run=run, teams=teams)
    snap_free = snapshot([node("n1", 8, 0), node("n2", 8, 2)], queue=queue, run=run, teams=teams)
    assert FairSharePolicy().decide(snap).started_ids[0] == "a1"
    d = FairSharePolicy().decide(snap_free)
    assert d.started_ids == ("a1",)
    assert "fair_share" in d.reasons["b1"]


def test_team_at_quota_borrows_idle_capacity_marked() -> None:
    teams = {"r": TeamConfig(quota=gpu(4))}
    run = [running(job("r-run", 4, team="r"), "n1")]
    d = FairSharePolicy().decide(snapshot([node("n1", 8)], queue=[job("r2", 2, team="r")], run=run, teams=teams))
    assert d.started_ids == ("r2",) and d.borrowed == ("r2",)


def test_no_borrowing_while_a_team_within_quota_waits() -> None:
    teams = {"r": TeamConfig(quota=gpu(4))}
    run = [running(job("r-run", 4, team="r"), "n1")]
    queue = [job("r2", 2, t=0, team="r"), job("p1", 8, t=1, team="p")]
    d = FairSharePolicy().decide(snapshot([node("n1", 8), node("n2", 8, 4)], queue=queue, run=run, teams=teams))
    assert d.started_ids == ()
    assert d.reasons["r2"].startswith("team r at quota 4/4 GPU")
    assert "cannot borrow" in d.reasons["r2"]


def test_owner_reclaims_borrowed_capacity_newest_first() -> None:
    teams = {"r": TeamConfig(quota=gpu(2)), "p": TeamConfig(quota=gpu(8))}
    run = [
        running(job("r-own", 2, team="r"), "n1", start=0),
        running(job("b-old", 2, team="r"), "n1", start=10, borrowed=True),
        running(job("b-new", 2, team="r"), "n1", start=20, borrowed=True),
        running(job("b-nope", 2, team="r", preemptible=False), "n1", start=30, borrowed=True),
    ]
    d = FairSharePolicy().decide(
        snapshot([node("n1", 8)], queue=[job("p1", 2, team="p")], run=run, teams=teams, now=40)
    )
    assert d.preemptions == ("b-new",)
    assert d.started_ids == ("p1",) and d.borrowed == ()


def test_non_preemptible_jobs_never_borrow() -> None:
    teams = {"r": TeamConfig(quota=gpu(2))}
    run = [running(job("r-own", 2, team="r"), "n1")]
    d = FairSharePolicy().decide(
        snapshot([node("n1", 8)], queue=[job("x", 2, team="r", preemptible=False)], run=run, teams=teams)
    )
    assert d.started_ids == ()
    assert "non-preemptible" in d.reasons["x"]


# ---------------------------------------------------------------------------- las


def test_las_serves_least_attained_queue_first() -> None:
    queue = [job("veteran", 4, t=0, attained_service=500), job("fresh", 4, t=5)]
    d = LasPolicy(thresholds=[100]).decide(snapshot([node("n1", 8, 4)], queue=queue, now=10))
    assert d.started_ids == ("fresh",)
    assert d.reasons["veteran"].endswith("(las queue 1)")


def test_las_demotes_running_jobs_and_preempts_them() -> None:
    # r has 2 GPUs x 100 s = 200 GPU-s >= 100: demoted to queue 1; w (queue 0) preempts it.
    run = [running(job("r", 2), "n1", start=0)]
    d = LasPolicy(thresholds=[100]).decide(snapshot([node("n1", 2)], queue=[job("w", 2, t=50)], run=run, now=100))
    assert d.preemptions == ("r",) and d.started_ids == ("w",)
    # Before crossing the threshold it is in the same queue: no preemption.
    d = LasPolicy(thresholds=[100]).decide(snapshot([node("n1", 2)], queue=[job("w", 2, t=40)], run=run, now=40))
    assert d.preemptions == () and d.reasons["w"].endswith("(las queue 0)")
    d = LasPolicy(thresholds=[100], preempt=False).decide(
        snapshot([node("n1", 2)], queue=[job("w", 2, t=50)], run=run, now=100)
    )
    assert d.preemptions == ()


def test_las_preempts_lowest_queue_first_then_newest() -> None:
    run = [
        running(job("q1", 4, attained_service=150), "n1", start=100),
        running(job("q2-old", 4, attained_service=5000), "n2", start=50),
        running(job("q2-new", 4, attained_service=5000), "n2", start=90),
    ]
    snap = snapshot([node("n1", 4), node("n2", 8)], queue=[job("w", 4, t=99)], run=run, now=100)
    d = LasPolicy(thresholds=[100, 1000]).decide(snap)
    assert d.preemptions == ("q2-new",)


def test_las_starvation_guard_promotes_long_waiting_job() -> None:
    starving = job("starving", 4, t=0, attained_service=400, last_run_s=100, enqueue_time=0)
    fresh = job("fresh", 4, t=5)
    snap = snapshot([node("n1", 8, 4)], queue=[starving, fresh], now=2000)
    assert LasPolicy(thresholds=[100]).decide(snap).started_ids == ("fresh",)
    assert LasPolicy(thresholds=[100], starve_factor=10).decide(snap).started_ids == ("starving",)


# -------------------------------------------------------------------- all policies


@pytest.mark.parametrize("name", available_policies())
def test_every_waiting_job_gets_a_reason_and_decisions_are_deterministic(name: str) -> None:
    queue = [job(f"j{i}", (i % 4) + 1, t=float(i), team="ab"[i % 2], priority=i % 3) for i in range(12)]
    run = [running(job("r", 4, team="a"), "n1", start=0, end=50)]
    snap = snapshot(
        [node("n1", 8), node("n2", 8, 3)], queue=queue, run=run, now=10, teams={"a": TeamConfig(quota=gpu(8))}
    )
    policy = get_policy(name)
    d1, d2 = policy.decide(snap), policy.decide(snap)
    assert d1 == d2
    waiting = {j.job_id for j in queue} - set(d1.started_ids)
    assert set(d1.reasons) == waiting
    assert all(isinstance(r, str) and r for r in d1.reasons.values())
