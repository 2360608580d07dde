"""Metrics from per-job records: hand-checked values, SRPT, fairness, fragmentation, time series."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raypipe.scheduler.metrics import (
    METRIC_KEYS,
    JobRecord,
    ReplayResult,
    finish_time_fairness,
    lower_bounds,
    percentile,
    records_from_dicts,
    relative_error,
    srpt_completion_sum,
    summarize,
    timeline,
)


def rec(job_id: str, submit: float, d: float, g: float, *runs: tuple[float, float], pre: int = 0) -> JobRecord:
    return JobRecord(job_id, submit, d, g, runs[0][0] if runs else None, runs[-1][1] if runs else None, runs, pre)


def test_percentile_interpolates_and_handles_empty() -> None:
    assert percentile([4, 1, 3, 2], 0.5) == 2.5
    assert percentile([1, 2, 3, 4], 0.99) == pytest.approx(3.97)
    assert percentile([7], 0.99) == 7 and percentile([], 0.5) is None


def test_srpt_hand_examples() -> None:
    # b (25) arrives while a (100) runs: b first, a last
    assert srpt_completion_sum([0, 10], [100, 25]) == 35 + 125
    # idle gap, then two at once: shorter first
    assert srpt_completion_sum([5, 5, 0], [3, 1, 1]) == 1 + 6 + 9
    assert srpt_completion_sum([], []) == 0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), min_size=1, max_size=6))
def test_srpt_beats_every_non_preemptive_order(jobs: list[tuple[int, int]]) -> None:
    best = srpt_completion_sum([float(r) for r, _ in jobs], [float(p) for _, p in jobs])
    for order in itertools.permutations(range(len(jobs))):
        t = total = 0.0
        for i in order:
            r, p = jobs[i]
            t = max(t, r) + p
            total += t
        assert best <= total + 1e-9


def test_fragmentation_counts_idle_gpus_while_a_waiting_job_fits_in_aggregate() -> None:
    recs = [rec("a", 0, 10, 2, (0, 10)), rec("b", 0, 10, 4, (10, 20)), rec("c", 0, 5, 1, (20, 25))]
    tl = timeline(recs, 4)
    assert tl.fragmentation_gpu_s == 20  # 2 idle GPUs during [0, 10) while c (1 GPU) waits
    assert tl.busy_gpu_s == 20 + 40 + 5
    assert list(zip(tl.times, tl.used_gpus, tl.waiting, strict=True)) == [(0, 2, 2), (10, 4, 1), (20, 1, 0), (25, 0, 0)]
    # nothing waiting that fits: no fragmentation
    assert timeline([rec("a", 0, 10, 2, (0, 10)), rec("b", 0, 10, 4, (10, 20))], 4).fragmentation_gpu_s == 0


def test_unallocated_share_while_jobs_wait_and_jobs_waited_share() -> None:
    recs = [rec("a", 0, 10, 2, (0, 10)), rec("b", 0, 10, 4, (10, 20)), rec("c", 0, 5, 1, (20, 25))]
    tl = timeline(recs, 4)
    # b and c wait during [0, 10) with 2 GPUs idle; c waits during [10, 20) with none idle
    assert (tl.waiting_s, tl.idle_while_waiting_gpu_s) == (20, 20)
    m = summarize(ReplayResult("fifo", "sim", tuple(recs), 4))
    assert m["unallocated_share_waiting"] == pytest.approx(20 / (4 * 20))
    assert m["jobs_waited_share"] == pytest.approx(2 / 3)
    alone = summarize(ReplayResult("fifo", "sim", (rec("a", 0, 10, 2, (0, 10)),), 4))
    assert alone["unallocated_share_waiting"] is None and alone["jobs_waited_share"] == 0


def test_timeline_preempted_jobs_wait_between_runs() -> None:
    recs = [rec("long", 0, 900, 4, (0, 100), (150, 1080), pre=1), rec("short", 100, 50, 4, (100, 150))]
    tl = timeline(recs, 4)
    at = dict(zip(tl.times, zip(tl.used_gpus, tl.waiting, strict=True), strict=True))
    assert at[100] == (4, 1) and at[150] == (4, 0) and at[1080] == (0, 0)
    ts, used, waiting = tl.downsample(10)
    assert len(ts) == 10 and max(used) <= 4 and max(waiting) <= 1


def test_finish_time_fairness_themis_style() -> None:
    recs = [rec("a", 0, 100, 4, (0, 100)), rec("b", 10, 50, 2, (100, 150))]
    a, b = finish_time_fairness(recs, 4)
    assert a == pytest.approx(100 / 190)  # N = 1.9 jobs on average during [0, 100]: fair run 190 s
    assert b == pytest.approx(140 / 50)  # N = 230/140 < 2: half the cluster covers its 2 GPUs
    assert finish_time_fairness([rec("solo", 0, 10, 4, (0, 10))], 4) == [1.0]


def test_summarize_keys_bounds_and_round_trip() -> None:
    recs = (rec("a", 0, 100, 4, (0, 100)), rec("b", 10, 50, 2, (100, 150)))
    res = ReplayResult("fifo", "sim", recs, 4.0, decision_latencies_s=(0.001, 0.003), decisions=2, wall_s=0.5)
    m = summarize(res)
    assert list(m) == ["mode", *METRIC_KEYS]
    assert m["ftf_worst"] == pytest.approx(2.8) and m["decision_latency_p99_ms"] == pytest.approx(2.98)
    assert m["p50_jct_ratio_to_bound"] == pytest.approx(120 / 75)
    again = records_from_dicts(r.to_dict() for r in recs)
    assert again == recs
    assert relative_error(110, 100) == pytest.approx(0.1) and relative_error(1, 0) is None
    assert res.timeline().busy_gpu_s == 400 + 100
    empty = summarize(ReplayResult("fifo", "sim", (), 4.0))
    assert empty["avg_jct_s"] is None and empty["jobs"] == 0


def test_lower_bounds_hand_example() -> None:
    b = lower_bounds([0, 10], [100, 50], [4, 2], 4)
    assert (b.avg_jct_s, b.p50_jct_s, b.makespan_s) == (75, 75, 125)
    # the arrival-time term: a late burst of work bounds the makespan
    late = lower_bounds([0, 100, 100], [1, 10, 10], [1, 4, 4], 4)
    assert late.makespan_s == 120
