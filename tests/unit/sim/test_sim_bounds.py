"""No simulated schedule beats its lower bounds, for every policy and option, on random small traces."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raypipe.scheduler import available_policies
from raypipe.scheduler.cluster_spec import ClusterSpec
from raypipe.scheduler.metrics import lower_bounds, percentile, summarize, timeline
from raypipe.scheduler.simulator import simulate
from raypipe.scheduler.traces import Trace, TraceJob, TraceMeta

TOL = 1e-9
POLICIES: list[tuple[str, dict[str, Any]]] = [(p, {}) for p in available_policies()] + [
    ("priority", {"preempt": True, "aging_s": 20.0}),
    ("las", {"thresholds": (20.0, 200.0)}),
    ("las", {"thresholds": (10.0,), "starve_factor": 2.0}),
]
CLUSTERS = [(8, 4), (8, 8), (16, 4), (4, 2)]


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    n = draw(st.integers(1, 9))
    jobs = []
    for i in range(n):
        gpus = draw(st.sampled_from([0.5, 1.0, 1.0, 2.0, 4.0, 8.0]))
        jobs.append(
            TraceJob(
                job_id=f"j{i}",
                submit_s=float(draw(st.integers(0, 60))),
                duration_s=float(draw(st.integers(0, 120))),
                gpus=gpus,
                team=draw(st.sampled_from(["a", "b"])),
                priority=draw(st.integers(0, 2)),
                single_node=gpus < 1 or draw(st.booleans()),
            )
        )
    jobs.sort(key=lambda j: j.submit_s)
    return Trace(tuple(jobs), TraceMeta("hypothesis", "test", durations_known=draw(st.booleans())))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tr=traces(),
    policy=st.sampled_from(POLICIES),
    cluster=st.sampled_from(CLUSTERS),
    round_s=st.sampled_from([0.0, 0.0, 7.0]),
    restart=st.sampled_from([0.0, 5.0]),
    slowdown=st.sampled_from([1.0, 1.5]),
)
def test_no_result_beats_its_bound(
    tr: Trace,
    policy: tuple[str, dict[str, Any]],
    cluster: tuple[int, int],
    round_s: float,
    restart: float,
    slowdown: float,
) -> None:
    spec = ClusterSpec.from_flags(*cluster)
    name, args = policy
    res = simulate(
        tr,
        spec,
        name,
        policy_args=args,
        options={"round_s": round_s, "restart_cost_s": restart, "spread_slowdown": slowdown},
    )
    assert not res.unfinished, res.unfinished
    G = spec.total_gpus
    for r in res.records:
        assert r.end_s is not None and r.first_start_s is not None
        assert r.submit_s <= r.first_start_s <= r.end_s
        assert r.jct_s + TOL >= r.duration_s  # type: ignore[operator]
        assert len(r.runs) == r.preemptions + 1
        prev_end = r.submit_s
        for s, e in r.runs:
            assert prev_end <= s <= e
            prev_end = e
        assert r.runs[-1][1] == r.end_s
    used = timeline(res.records, G).used_gpus
    assert max(used, default=0.0) <= G + TOL  # never over-committed
    if not res.records:
        return
    # the bounds, straight from the jobs (independent of summarize)
    b = lower_bounds([r.submit_s for r in res.records], [r.duration_s for r in res.records], [r.gpus for r in res.records], G)
    jcts = [r.jct_s for r in res.records]
    assert sum(jcts) / len(jcts) >= b.avg_jct_s - TOL * max(1.0, b.avg_jct_s)  # type: ignore[arg-type]
    for q, bound in ((0.5, b.p50_jct_s), (0.95, b.p95_jct_s), (0.99, b.p99_jct_s)):
        assert percentile(jcts, q) >= bound - TOL * max(1.0, bound)  # type: ignore[arg-type,operator]
    makespan = max(r.end_s for r in res.records) - min(r.submit_s for r in res.records)  # type: ignore[type-var,operator]
    assert makespan >= b.makespan_s - TOL * max(1.0, b.makespan_s)
    # and as reported: every ratio to its bound is >= 1
    m = summarize(res)
    for key in ("avg_jct", "p50_jct", "p95_jct", "p99_jct", "makespan"):
        ratio = m[f"{key}_ratio_to_bound"]
        assert ratio is None or ratio >= 1 - 1e-9, (key, ratio)
    assert m["utilization"] is None or m["utilization"] <= 1 + TOL
