"""The benchmark's steady decision loop applies each decision as a controller would."""

from __future__ import annotations

import pytest

from benchmarks._sched_workload import steady_latencies
from raypipe.resources import Resources
from raypipe.scheduler import Snapshot, TeamConfig, available_policies, get_policy

TEAMS = {"research": TeamConfig(quota=Resources.of(gpu=40)), "prod": TeamConfig(weight=2.0, priority=1)}


@pytest.mark.parametrize("name", sorted(available_policies()))
def test_every_decision_is_applied_and_the_next_snapshot_is_consistent(name: str) -> None:
    policy = get_policy(name)
    seen: list[Snapshot] = []
    decide = policy.decide

    def recording(snap: Snapshot) -> object:
        seen.append(snap)
        return decide(snap)

    policy.decide = recording  # type: ignore[method-assign]
    times, acts = steady_latencies(20, 60, policy, TEAMS, 40, gc_freeze=False)
    assert len(times) == len(seen) == len(acts) == 40 and all(t >= 0 for t in times)
    started, preempted = sum(a for a, _ in acts), sum(b for _, b in acts)
    assert started > 0
    for before, after in zip(seen, seen[1:], strict=False):
        # Snapshot() already refused duplicate ids and jobs both queued and running; free
        # capacity never goes negative (NodeView refuses it) and matches what runs there.
        assert after.now == before.now + 1.0
        for node in after.cluster.nodes:
            held = sum(
                b.gpu
                for r in after.running
                for b, n in zip(r.request.bundles, r.placement.bundle_nodes, strict=True)
                if n == node.node_id
            )
            assert node.free.gpu == pytest.approx(node.total.gpu - held)
    if name == "las":
        assert preempted > 0  # the synthetic start holds queue-1 jobs that new queue-0 jobs preempt


def test_the_controller_step_benchmark_runs_the_controller_on_its_in_memory_backend() -> None:
    """``controller_steps`` (scheduler_overhead part 5): submissions admitted, steps decided by
    the policy (its decision timed inside each step), on a small cluster."""
    from benchmarks._sched_workload import controller_steps

    for policy in ("fifo", "fair_share"):
        out = controller_steps(6, 40, policy, steps=2)
        assert set(out) == {"submit_ms", "step_ms", "decision_ms"}
        assert 0 < out["decision_ms"] <= out["step_ms"] and out["submit_ms"] > 0
