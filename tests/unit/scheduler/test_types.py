"""Value types: validation, derived values, immutable cluster updates."""

from __future__ import annotations

import dataclasses

import pytest
from sched_helpers import gpu, job, node, running, snapshot

from raypipe.exceptions import RaypipeError
from raypipe.resources import Resources
from raypipe.scheduler import ClusterView, Decision, InvalidRequestError, JobRequest, Placement, TeamConfig


def test_demand_is_sum_of_bundles_and_selector_is_frozen() -> None:
    j = JobRequest("a", (gpu(2, cpu=4), gpu(2, cpu=4)), label_selector={"gpu_type": "A100"})
    assert j.demand == Resources.of(cpu=8, gpu=4)
    assert j.gpus == 4
    assert j.label_selector == (("gpu_type", "A100"),)
    hash(j)
    with pytest.raises(dataclasses.FrozenInstanceError):
        j.priority = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bundles": ()},
        {"bundles": (Resources.of(gpu=-1),)},
        {"bundles": (gpu(1),), "strategy": "RANDOM"},
        {"bundles": (gpu(1),), "duration_estimate_s": -5.0},
    ],
)
def test_invalid_requests_raise_raypipe_errors(kwargs: dict) -> None:
    with pytest.raises(InvalidRequestError) as err:
        JobRequest("bad", **kwargs)
    assert isinstance(err.value, RaypipeError)


def test_cluster_totals_skip_dead_nodes() -> None:
    c = ClusterView((node("a", 8, 2), node("b", 8), node("c", 8, alive=False)))
    assert c.total() == gpu(16)
    assert c.free() == gpu(10)
    assert c.node("b").total == gpu(8)
    with pytest.raises(InvalidRequestError):
        c.node("zzz")


def test_with_allocation_and_release_are_immutable_round_trip() -> None:
    c = ClusterView((node("a"), node("b")))
    p = Placement(("a", "a", "b"))
    bundles = (gpu(2), gpu(2), gpu(3))
    c2 = c.with_allocation(p, bundles)
    assert c.node("a").free == gpu(8)
    assert c2.node("a").free == gpu(4) and c2.node("b").free == gpu(5)
    assert c2.with_release(p, bundles) == c
    with pytest.raises(InvalidRequestError):
        c2.with_allocation(Placement(("b",)), (gpu(6),))


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(InvalidRequestError):
        ClusterView((node("a"), node("a")))
    a = job("a", 1)
    with pytest.raises(InvalidRequestError):
        snapshot([node("n")], queue=[a], run=[running(job("a", 1), "n")])


def test_running_job_end_estimate_and_attained_service() -> None:
    r = running(job("a", 2, 2, duration_estimate_s=100.0, attained_service=50.0), "n", "n", start=10.0)
    assert r.end_estimate == 110.0
    assert r.attained_at(20.0) == 50.0 + 4 * 10.0
    assert running(job("b", 1), "n", start=0.0, end=7.0).end_estimate == 7.0
    assert running(job("c", 1), "n").end_estimate is None


def test_team_config_validation_and_decision_defaults() -> None:
    with pytest.raises(InvalidRequestError):
        TeamConfig(weight=0)
    d = Decision(starts=[("a", Placement(["n"]))], reasons={"b": "why"})  # type: ignore[arg-type]
    assert d.started_ids == ("a",)
    with pytest.raises(TypeError):
        d.reasons["c"] = "x"  # type: ignore[index]


def test_from_ray_drops_placement_group_and_node_resources() -> None:
    pg = "0ba7fb514fc0ad625c59de24afd901000000"
    r = Resources.from_ray(
        {
            "CPU": 2.0,
            "GPU": 1.0,
            "memory": 2 * 1024**3,
            "object_store_memory": 1e9,
            "node:10.0.0.1": 1.0,
            f"CPU_group_{pg}": 1.0,
            f"CPU_group_0_{pg}": 1.0,
            f"bundle_group_0_{pg}": 1000.0,
            "my_group_resource": 3.0,
        }
    )
    assert r == Resources.of(cpu=2, gpu=1, memory_mb=2048, custom={"my_group_resource": 3.0})


def test_a_replaced_view_keeps_its_total_only_while_no_node_total_or_liveness_changed() -> None:
    """``total()`` is computed once per view and handed on by ``replace_nodes`` while only free
    capacity changed; a node that died or changed size makes the new view sum it again."""
    view = ClusterView((node("n1", 8), node("n2", 4)))
    assert view.total() == gpu(12)
    freed = view.replace_nodes([node("n1", 8, free=3)])
    assert freed.total() is view.total()  # handed on, not summed again
    dead = freed.replace_nodes([node("n2", 4, alive=False)])
    bigger = freed.replace_nodes([node("n2", 6)])
    for derived, nodes in (
        (dead, (node("n1", 8, free=3), node("n2", 4, alive=False))),
        (bigger, (node("n1", 8, free=3), node("n2", 6))),
    ):
        assert derived.total() == ClusterView(nodes).total()
    assert dead.total() == gpu(8) and bigger.total() == gpu(14)
    fresh = ClusterView((node("n1", 8),)).replace_nodes([node("n1", 8, free=1)])
    assert fresh.total() == gpu(8)  # the source never summed: the new view sums itself
