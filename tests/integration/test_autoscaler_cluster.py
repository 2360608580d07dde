"""Autoscaler awareness on a real (small) Ray cluster: a stage too big for the cluster waits
for the autoscaler, which this test plays by adding a node when asked."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import raypipe
from raypipe.store.metadata import MetadataStore
from tests.conftest import reset_scheduler, wait_for
from tests.integration.autoscale_funcs import requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

GPU_WORKER = {"CPU": 2, "GPU": 2}


@pytest.fixture(scope="module")
def head_only() -> Iterator[Any]:
    """A Ray cluster of one head node (2 CPUs, no GPU); the test adds workers."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    ray.init(address=cluster.address, logging_level="ERROR")
    yield cluster
    reset_scheduler()
    ray.shutdown()
    cluster.shutdown()


def test_a_stage_too_big_for_the_cluster_waits_for_the_autoscaler_then_runs(tmp_path: Path, head_only: Any) -> None:
    import ray

    from raypipe.scheduler.client import SchedulerClient, get_controller

    reset_scheduler()
    get_controller(backend="tests.integration.autoscale_funcs:FakeAutoscalerBackend")
    autoscaler = {"node_types": {"gpu_worker": {"resources": GPU_WORKER, "max_workers": 1}}}
    cfg = raypipe.PipelineConfig(
        name="autoscale",
        storage=str(tmp_path / "store"),
        scheduler={"autoscaler": autoscaler},
        stages=[
            raypipe.StageConfig(
                name="gpu_stage",
                kind="python",
                params={"function": "tests.integration.funcs:sleep", "args": {"seconds": 0.2}},
                resources={"cpu": 1, "gpu": 2},
            )
        ],
    )
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(res=raypipe.run(cfg, use_cache=False)))
    t.start()
    asked = wait_for(lambda: [r for r in requests() if r], what="a request to the autoscaler")
    assert asked[0] == [{"CPU": 1.0, "GPU": 2.0}]
    handle = get_controller(create=False)
    (job,) = [j for j in ray.get(handle.queue.remote()) if j["state"] == "queued"]
    assert job["reason"] == "waiting for the autoscaler: requested 1 x {CPU: 1, GPU: 2}"

    node = head_only.add_node(num_cpus=GPU_WORKER["CPU"], num_gpus=GPU_WORKER["GPU"])  # the "autoscaler"
    t.join(timeout=90)
    res = out["res"]
    assert res.ok, res.errors
    meta = MetadataStore(str(tmp_path / "store" / "raypipe.db"))
    assert [s.status for s in meta.stage_runs(res.run_id)] == ["succeeded"]
    wait_for(lambda: requests()[-1] == [], what="the request to be cleared")
    assert all(r in ([], [{"CPU": 1.0, "GPU": 2.0}]) for r in requests())

    # At the maximum size (one 2-GPU worker, up now) a 4-GPU stage can never fit: rejected at once.
    client = SchedulerClient(handle, owner="autoscale-test")
    view = client.submit("wide", [raypipe.Resources.of(cpu=1, gpu=4)])
    assert view["state"] == "rejected"
    assert (
        "even at the cluster's maximum size: needs 1 CPU, 4 GPU on one node; largest node has 2 GPU" in view["reason"]
    )
    assert "head + up to 1 x gpu_worker {CPU: 2, GPU: 2}" in view["reason"]
    stats = ray.get(handle.stats.remote())
    assert stats["nodes"] == 2 and stats["autoscaler"]["requested"] == "nothing"
    head_only.remove_node(node)
