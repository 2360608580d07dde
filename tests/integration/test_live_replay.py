"""Live replay of a small trace through the real controller, against the simulator and plain Ray."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from raypipe.bench.live import LiveCluster, LiveReplayError, replay_live, replay_plain_ray
from raypipe.scheduler.cluster_spec import ClusterSpec
from raypipe.scheduler.metrics import summarize
from raypipe.scheduler.placement_settings import PlacementSettings
from raypipe.scheduler.simulator import SimOptions, simulate
from raypipe.scheduler.traces import synthetic_philly

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def small() -> tuple:
    cluster = ClusterSpec.from_flags(8, 4)
    trace = synthetic_philly(jobs=16, total_gpus=8, load=0.9, seed=3)
    span = max(j.submit_s + j.duration_s for j in trace.jobs)
    return cluster, trace, span / 6.0  # the replay lasts about 6 s of wall time


@pytest.fixture(scope="module")
def live_cluster(small: tuple) -> Iterator[LiveCluster]:
    """One local 8-node Ray for every replay of the module (each replay gets its own controller)."""
    import ray

    ray.shutdown()  # a Ray of another module
    cluster, trace, _ = small
    with LiveCluster(cluster, trace) as lc:
        yield lc


#: The live controller takes the simulator's placement settings and spread slowdown.
STRICT = SimOptions(placement=PlacementSettings(consolidation="strict", node_choice="first_fit"), spread_slowdown=1.5)


@pytest.mark.parametrize(
    ("policy", "options"), [("fifo", None), ("las", None), ("fifo", STRICT)], ids=["fifo", "las", "fifo-strict"]
)
def test_live_replay_finishes_every_job_and_never_beats_the_bounds(
    small: tuple, live_cluster: LiveCluster, policy: str, options: SimOptions | None
) -> None:
    cluster, trace, scale = small
    live = replay_live(trace, cluster, policy, scale, options=options, on=live_cluster)
    assert live.mode == "ray" and not live.rejected and not live.unfinished
    assert {r.job_id for r in live.records} == {j.job_id for j in trace.jobs}
    for r in live.records:
        assert r.first_start_s is not None and r.end_s is not None
        assert r.first_start_s >= r.submit_s - 1e-6 * scale
        assert r.run_s >= r.duration_s * 0.95, "a job held its grant for (at least about) its duration"
        # every preemption ends a run, except one granted and preempted between two watches,
        # which never started (raypipe/bench/live.py counts it and records no run)
        assert 1 <= len(r.runs) <= r.preemptions + 1
    assert live.decisions > 0 and live.decision_latencies_s
    got, sim = summarize(live), summarize(simulate(trace, cluster, policy, options=options))
    assert got["avg_jct_s"] >= got["jct_lower_bound_s"] * 0.95
    assert got["makespan_s"] >= got["makespan_lower_bound_s"] * 0.95
    assert sim["finished"] == got["finished"] == len(trace.jobs)
    if options is not None:
        assert live.extra["placement"] == options.placement.describe()  # type: ignore[union-attr]


def test_plain_ray_baseline_runs_the_same_jobs(small: tuple, live_cluster: LiveCluster) -> None:
    cluster, trace, scale = small
    plain = replay_plain_ray(trace, cluster, scale, on=live_cluster)
    assert {r.job_id for r in plain.records} == {j.job_id for j in trace.jobs}
    assert all(r.end_s is not None and r.end_s > r.first_start_s for r in plain.records)


def test_too_many_nodes_is_a_clear_error() -> None:
    trace = synthetic_philly(jobs=4, total_gpus=8, seed=0)
    with pytest.raises(LiveReplayError, match="nodes"):
        replay_live(trace, ClusterSpec.from_flags(64, 4), "fifo", 3600.0)
    with pytest.raises(LiveReplayError, match="time-scale"):
        replay_live(trace, ClusterSpec.from_flags(8, 4), "fifo", 0.0)


def test_a_live_cluster_refuses_a_replay_of_another_shape(small: tuple, live_cluster: LiveCluster) -> None:
    _, trace, scale = small
    with pytest.raises(LiveReplayError, match="another cluster"):
        replay_live(trace, ClusterSpec.from_flags(4, 4), "fifo", scale, on=live_cluster)
