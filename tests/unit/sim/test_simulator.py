"""The discrete-event simulator: hand-checked schedules, options, rejections, determinism."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest

from raypipe.scheduler import Decision, Policy, Snapshot, UnknownPolicyError, available_policies, get_policy
from raypipe.scheduler.cluster_spec import ClusterSpec, NodeGroup
from raypipe.scheduler.errors import SimulationError
from raypipe.scheduler.metrics import JobRecord, summarize
from raypipe.scheduler.simulator import SimOptions, job_request, simulate
from raypipe.scheduler.traces import Trace, TraceJob, TraceMeta, load_philly
from raypipe.scheduler.types import Placement

DATA = Path(__file__).resolve().parents[2] / "data" / "traces"


def trace(*jobs: TraceJob, known: bool = False) -> Trace:
    return Trace(tuple(sorted(jobs, key=lambda j: j.submit_s)), TraceMeta("test", "test", durations_known=known))


def tj(job_id: str, t: float, d: float, g: float = 1, **kw: object) -> TraceJob:
    return TraceJob(job_id, t, d, g, **kw)  # type: ignore[arg-type]


def by_id(records: Sequence[JobRecord]) -> dict[str, JobRecord]:
    return {r.job_id: r for r in records}


def test_two_jobs_fifo_exact_jct_makespan_and_bounds() -> None:
    res = simulate(trace(tj("a", 0, 100, 4), tj("b", 10, 50, 2)), ClusterSpec.from_flags(4, 4), "fifo")
    a, b = by_id(res.records)["a"], by_id(res.records)["b"]
    assert (a.first_start_s, a.end_s, a.runs) == (0, 100, ((0, 100),))
    assert (b.first_start_s, b.end_s, b.runs) == (100, 150, ((100, 150),))
    m = summarize(res)
    assert m["avg_jct_s"] == 120 and m["makespan_s"] == 150 and m["avg_queue_s"] == 45
    assert m["utilization"] == pytest.approx(500 / 600)
    assert m["fragmentation_gpu_s"] == 0
    # bounds: mean duration 75; SRPT on a 4x machine: b runs 10..35, a ends at 125 -> (35 + 125 - 10) / 2 = 75
    assert m["jct_lower_bound_duration_s"] == 75 and m["jct_lower_bound_srpt_s"] == 75
    assert m["makespan_lower_bound_s"] == 125  # t=0: 0 + (400 + 100) / 4
    assert m["avg_jct_ratio_to_bound"] == pytest.approx(1.6) and m["makespan_ratio_to_bound"] == pytest.approx(1.2)
    assert m["preemptions"] == 0 and m["rejected"] == 0 and m["decisions"] >= 2


def test_preemption_restart_cost_resumes_remaining_work() -> None:
    tr = trace(tj("long", 0, 1000, 4), tj("short", 100, 50, 4))
    res = simulate(
        tr,
        ClusterSpec.from_flags(4, 4),
        "las",
        policy_args={"thresholds": (100.0,)},
        options={"restart_cost_s": 30},
    )
    long, short = by_id(res.records)["long"], by_id(res.records)["short"]
    assert short.runs == ((100, 150),) and short.preemptions == 0
    # preempted at 100 with 900 s of work left; back at 150, +30 s restart cost
    assert long.runs == ((0, 100), (150, 1080)) and long.preemptions == 1 and long.end_s == 1080
    assert long.attained_gpu_s == 4 * (100 + 930)
    m = summarize(res)
    assert m["preemptions"] == 1 and m["preemptions_per_job"] == 0.5


def test_spread_gang_runs_slower_single_node_does_not() -> None:
    tr = trace(tj("spread", 0, 100, 4), tj("local", 200, 100, 2))
    res = simulate(tr, ClusterSpec.from_flags(4, 2), "fifo", options=SimOptions(spread_slowdown=1.5))
    recs = by_id(res.records)
    assert recs["spread"].end_s == 150
    assert recs["local"].end_s == 300


def test_round_length_delays_decisions_to_round_boundaries() -> None:
    tr = trace(tj("a", 10, 100, 4), tj("b", 70, 10, 4), tj("c", 400, 5, 1))
    res = simulate(tr, ClusterSpec.from_flags(4, 4), "fifo", options={"round_s": 60})
    recs = by_id(res.records)
    assert (recs["a"].first_start_s, recs["a"].end_s) == (60, 160)
    assert (recs["b"].first_start_s, recs["b"].end_s) == (180, 190)
    assert (recs["c"].first_start_s, recs["c"].end_s) == (420, 425)
    event = simulate(tr, ClusterSpec.from_flags(4, 4), "fifo")
    assert by_id(event.records)["a"].first_start_s == 10 and by_id(event.records)["b"].first_start_s == 110


def test_jobs_that_never_fit_are_rejected_up_front() -> None:
    tr = trace(tj("ok", 0, 10, 4), tj("huge", 1, 10, 16), tj("typed", 2, 10, 1, gpu_types=("T4",)))
    res = simulate(tr, ClusterSpec.from_flags(8, 4), "fifo")
    assert [r.job_id for r in res.records] == ["ok"]
    reasons = dict(res.rejected)
    assert set(reasons) == {"huge", "typed"}
    assert "never schedulable" in reasons["huge"] and "gpu_type=T4" in reasons["typed"]
    assert summarize(res)["rejected"] == 2


def test_gpu_type_constraints_place_on_matching_nodes() -> None:
    spec = ClusterSpec(
        node_groups=[
            NodeGroup(count=1, gpus=4, cpus=8, memory_mb=1000, gpu_type="V100", name="v"),
            NodeGroup(count=1, gpus=4, cpus=8, memory_mb=1000, gpu_type="T4", name="t"),
        ]
    )
    tr = trace(
        tj("t4", 0, 10, 4, gpu_types=("T4",), single_node=True),
        tj("any-of", 0, 10, 4, gpu_types=("P100", "V100"), single_node=True),
        tj("t4-again", 0, 10, 1, gpu_types=("T4",), single_node=True),
    )
    recs = by_id(simulate(tr, spec, "backfill").records)
    assert recs["t4"].first_start_s == 0 and recs["any-of"].first_start_s == 0
    assert recs["t4-again"].first_start_s == 10


def test_fractional_gpus_share_a_gpu() -> None:
    tr = trace(tj("p1", 0, 100, 0.5, single_node=True), tj("p2", 0, 100, 0.5, single_node=True), tj("p3", 0, 10, 0.5))
    recs = by_id(simulate(tr, ClusterSpec.from_flags(1, 1), "fifo").records)
    assert recs["p1"].first_start_s == recs["p2"].first_start_s == 0
    assert recs["p3"].first_start_s == 100


class Recorder(Policy):
    """FIFO that records the snapshots it sees."""

    name = "recorder"

    def __init__(self) -> None:
        self.inner = get_policy("fifo")
        self.snaps: list[Snapshot] = []

    def decide(self, snapshot: Snapshot) -> Decision:
        self.snaps.append(snapshot)
        return self.inner.decide(snapshot)


@pytest.mark.parametrize("known", [False, True])
def test_duration_estimates_only_when_known(known: bool) -> None:
    tr = trace(tj("a", 0, 100, 4), tj("b", 1, 30, 4), known=known)
    rec = Recorder()
    simulate(tr, ClusterSpec.from_flags(4, 4), rec)
    estimates = {j.job_id: j.duration_estimate_s for s in rec.snaps for j in s.queue}
    assert estimates == ({"a": 100.0, "b": 30.0} if known else {"a": None, "b": None})
    rec2 = Recorder()
    simulate(tr, ClusterSpec.from_flags(4, 4), rec2, options={"durations_known": not known})
    assert all((j.duration_estimate_s is not None) == (not known) for s in rec2.snaps for j in s.queue)


def test_snapshots_match_the_live_controllers_view() -> None:
    rec = Recorder()
    tr = load_philly(DATA / "philly-sample.csv", max_jobs=80)
    res = simulate(tr, ClusterSpec.from_flags(16, 8), rec)
    assert len(rec.snaps) == res.decisions > 0
    for s in rec.snaps:
        assert [j.submit_time for j in s.queue] == sorted(j.submit_time for j in s.queue)
        held = sum(r.request.gpus for r in s.running)
        assert held + s.cluster.free().gpu == pytest.approx(16)
        assert all(j.enqueue_time is not None for j in s.queue)


def test_job_request_gangs_and_pods() -> None:
    gang = job_request(tj("g", 5, 10, 4, cpus=8, memory_mb=400), duration_known=False)
    assert len(gang.bundles) == 4 and gang.bundles[0].gpu == 1 and gang.bundles[0].cpu == 2
    assert gang.strategy == "PACK" and gang.duration_estimate_s is None and gang.submit_time == 5
    pod = job_request(tj("p", 0, 10, 8, single_node=True, gpu_types=("T4",)), duration_known=True)
    assert len(pod.bundles) == 1 and pod.bundles[0].gpu == 8 and pod.duration_estimate_s == 10
    assert dict(pod.label_selector) == {"gpu_type": "T4"}


@pytest.mark.parametrize("policy", available_policies())
def test_same_trace_same_result(policy: str) -> None:
    tr = load_philly(DATA / "philly-sample.csv")
    spec = ClusterSpec.from_flags(32, 8)
    a = simulate(tr, spec, policy, options={"restart_cost_s": 60, "spread_slowdown": 1.2})
    b = simulate(tr, spec, policy, options={"restart_cost_s": 60, "spread_slowdown": 1.2})
    assert a.records == b.records and a.decisions == b.decisions
    assert all(r.end_s is not None for r in a.records) and not a.unfinished


class Overcommit(Policy):
    name = "overcommit"

    def decide(self, snapshot: Snapshot) -> Decision:
        node = snapshot.cluster.nodes[0].node_id
        return Decision(starts=tuple((j.job_id, Placement((node,) * len(j.bundles))) for j in snapshot.queue))


class Never(Policy):
    name = "never"

    def decide(self, snapshot: Snapshot) -> Decision:
        return Decision(reasons={j.job_id: "not today" for j in snapshot.queue})


def test_bad_policies_are_caught_and_stuck_queues_end() -> None:
    tr = trace(tj("a", 0, 10, 4), tj("b", 0, 10, 4))
    with pytest.raises(SimulationError, match="over-committed"):
        simulate(tr, ClusterSpec.from_flags(8, 4), Overcommit())
    res = simulate(tr, ClusterSpec.from_flags(8, 4), Never())
    assert dict(res.unfinished) == {"a": "not today", "b": "not today"}
    assert summarize(res)["unfinished"] == 2 and summarize(res)["avg_jct_s"] is None


def test_options_and_policy_names_are_validated() -> None:
    tr = trace(tj("a", 0, 10))
    with pytest.raises(UnknownPolicyError, match="expected one of: fifo"):
        simulate(tr, ClusterSpec.from_flags(4, 4), "sjf")
    with pytest.raises(SimulationError, match="spread_slowdown"):
        simulate(tr, ClusterSpec.from_flags(4, 4), "fifo", options={"spread_slowdown": 0.5})
    with pytest.raises(SimulationError, match="round_len"):
        simulate(tr, ClusterSpec.from_flags(4, 4), "fifo", options={"round_len": 1})
    with pytest.raises(SimulationError, match="duplicate job ids"):
        simulate(trace(tj("a", 0, 1), tj("a", 1, 1)), ClusterSpec.from_flags(4, 4), "fifo")


def test_decision_latency_comes_only_from_the_injected_timer() -> None:
    tr = trace(tj("a", 0, 10), tj("b", 5, 10))
    assert simulate(tr, ClusterSpec.from_flags(4, 4), "fifo").decision_latencies_s == ()
    ticks = itertools.count()
    res = simulate(tr, ClusterSpec.from_flags(4, 4), "fifo", timer=lambda: float(next(ticks)))
    assert res.decision_latencies_s == (1.0,) * res.decisions
    assert summarize(res)["decision_latency_p50_ms"] == 1000.0


def test_progress_reports_finished_jobs() -> None:
    seen: list[tuple[int, int]] = []
    tr = load_philly(DATA / "philly-sample.csv", max_jobs=50)
    simulate(tr, ClusterSpec.from_flags(16, 8), "fifo", on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (50, 50) and all(t == 50 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_results_do_not_depend_on_the_process_hash_seed() -> None:
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from raypipe.scheduler.cluster_spec import ClusterSpec, NodeGroup\n"
        "from raypipe.scheduler.simulator import simulate\n"
        "from raypipe.scheduler.traces import load_alibaba\n"
        "spec = ClusterSpec(node_groups=[NodeGroup(count=2, gpus=8, cpus=128, memory_mb=1e6, gpu_type='G2'),\n"
        "                                NodeGroup(count=2, gpus=2, cpus=32, memory_mb=2e5, gpu_type='T4')])\n"
        f"tr = load_alibaba({str(DATA / 'alibaba-sample')!r}, max_duration_s=3600).with_load(0.9, spec.total_gpus)\n"
        "res = {p: simulate(tr, spec, p) for p in ('las', 'backfill', 'fair_share')}\n"
        "assert res['las'].records and sum(r.preemptions for r in res['las'].records) > 0  # contention\n"
        "out = {p: [r.to_dict() for r in x.records] for p, x in res.items()}\n"
        "print(json.dumps(out))\n"
    )
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]
