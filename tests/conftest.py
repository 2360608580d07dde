"""Shared fixtures.  One local Ray per test session for integration and e2e tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ray_local() -> Iterator[str]:
    """A local Ray with 2 CPUs shared by the tests of a module; yields its address."""
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[object]:
    """A 4-node Ray: a head with 2 CPUs and 3 workers with 4 CPUs and 4 (logical) GPUs each."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    for i in range(3):
        cluster.add_node(num_cpus=4, num_gpus=4, labels={"gpu_type": "A100" if i < 2 else "T4"})
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def reset_scheduler() -> None:
    """Kill the controller, forget its state and remove raypipe's placement groups."""
    import ray
    from ray.util.placement_group import placement_group_table

    from raypipe.scheduler.backend import PG_PREFIX, RayBackend, clear_state, pg_from_id
    from raypipe.scheduler.client import CONTROLLER_NAME, NAMESPACE

    try:
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=True)
    except ValueError:
        pass
    clear_state()
    for pid in RayBackend().live_pgs():
        ray.util.remove_placement_group(pg_from_id(pid))
    wait_for(
        lambda: not any(
            str(t.get("name", "")).startswith(PG_PREFIX) and t.get("state") != "REMOVED"
            for t in placement_group_table().values()
        ),
        what="raypipe placement groups to be removed",
    )


def wait_for(
    cond: Callable[[], object], timeout_s: float = 60.0, every_s: float = 0.1, what: str = "condition"
) -> object:
    """Poll ``cond`` until it returns something truthy (Ray's wait_for_condition, returning the value)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
