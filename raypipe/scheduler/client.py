"""How work reaches the scheduler: find or start the controller actor, submit, watch, release."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.resources import Resources
from raypipe.scheduler.backend import pg_from_id
from raypipe.scheduler.controller import ControllerActor

CONTROLLER_NAME = "raypipe-scheduler"
NAMESPACE = "raypipe"


def get_controller(settings: Mapping[str, Any] | None = None, *, create: bool = True, tick_s: float = 0.5) -> Any:
    """The cluster's one controller actor; started (detached, restartable) if absent.

    ``settings`` (policy, policy_args, teams, lease_s) are applied when given; a
    controller shared by several pipelines keeps the last settings applied.
    """
    import ray

    try:
        handle = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        if not create:
            raise RaypipeError("no raypipe scheduler is running on this Ray cluster") from None
        handle = (
            ray.remote(ControllerActor)
            .options(
                name=CONTROLLER_NAME,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                max_restarts=-1,
                max_task_retries=-1,
                num_cpus=0,
                # On the head node, like Serve's controller: worker nodes come and go.
                resources={"node:__internal_head__": 0.001},
                max_concurrency=10_000,
            )
            .remote(dict(settings) if settings else None, tick_s)
        )
    if settings:
        ray.get(handle.configure.remote(dict(settings)))
    else:
        ray.get(handle.ping.remote())
    return handle


class SchedulerClient:
    """One owner's (a driver's) view of the controller."""

    def __init__(self, handle: Any, owner: str | None = None) -> None:
        """``owner`` names the work (e.g. a run id); the driver's Ray job id is appended after
        ``@`` so the controller frees this owner's grants as soon as the driver exits."""
        import ray

        self.handle = handle
        name = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.owner = f"{name}@{ray.get_runtime_context().get_job_id()}"

    @staticmethod
    def new_job_id(prefix: str) -> str:
        return f"{prefix}:{uuid.uuid4().hex[:8]}"

    def submit(
        self,
        job_id: str,
        bundles: Sequence[Resources],
        *,
        priority: int = 0,
        team: str = "default",
        preemptible: bool = True,
        strategy: str = "PACK",
        duration_estimate_s: float | None = None,
        label_selector: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        import ray

        req = {
            "job_id": job_id,
            "bundles": [
                {"cpu": b.cpu, "gpu": b.gpu, "memory_mb": b.memory_mb, "custom": b.custom_dict} for b in bundles
            ],
            "priority": priority,
            "team": team,
            "preemptible": preemptible,
            "strategy": strategy,
            "duration_estimate_s": duration_estimate_s,
            "label_selector": dict(label_selector or {}),
        }
        return ray.get(self.handle.submit.remote([req], self.owner))[0]

    def watch(self, versions: Mapping[str, int], timeout_s: float = 10.0) -> Any:
        """An ObjectRef that resolves to job views once one of them changes."""
        return self.handle.watch.remote(dict(versions), timeout_s)

    def refresh(self, job_ids: Sequence[str], wait_s: float = 0.0) -> dict[str, dict[str, Any]]:
        import ray

        return ray.get(self.handle.refresh.remote(list(job_ids), wait_s))

    def release(self, job_ids: Sequence[str]) -> Any:
        return self.handle.release.remote(list(job_ids))

    def requeue(self, job_id: str) -> dict[str, Any] | None:
        import ray

        return ray.get(self.handle.requeue.remote(job_id))

    def queue(self) -> list[dict[str, Any]]:
        import ray

        return ray.get(self.handle.queue.remote())


def scheduling_strategy(pg_id: str) -> Any:
    """Run inside the granted placement group (bundle 0), children captured."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(
        pg_from_id(pg_id), placement_group_bundle_index=0, placement_group_capture_child_tasks=True
    )
