"""How work reaches the scheduler: find or start the controller actor, submit, watch, release.

Job views come back as :class:`~raypipe.scheduler.jobs.JobView` (typed
attributes; also a read-only mapping with the keys of the actor's dict form).
``watch`` returns an ``ObjectRef`` of the dict form: :meth:`SchedulerClient.views`
turns its result into views.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe._ray.actors import NAMESPACE, get_or_create
from raypipe.exceptions import RaypipeError
from raypipe.resources import Resources
from raypipe.scheduler.actor import ControllerActor
from raypipe.scheduler.backend import NODE_ID_LABEL
from raypipe.scheduler.jobs import Grant, JobState, JobView
from raypipe.scheduler.ray_backend import pg_from_id

CONTROLLER_NAME = "raypipe-scheduler"


def get_controller(
    settings: Mapping[str, Any] | None = None, *, create: bool = True, tick_s: float = 0.5, backend: str | None = None
) -> Any:
    """The cluster's one controller actor; started (detached, restartable) if absent.

    ``settings`` (policy, policy_args, teams, lease_s, autoscaler) are applied when
    given; a controller shared by several pipelines keeps the last settings applied.
    ``backend`` (tests): ``"module:Class"`` of the controller's backend when it starts.
    """
    import ray

    def missing() -> None:
        raise RaypipeError("no raypipe scheduler is running on this Ray cluster")

    # On the head node, like Serve's controller: worker nodes come and go.
    handle = get_or_create(
        CONTROLLER_NAME,
        ControllerActor,
        (dict(settings) if settings else None, tick_s, backend),
        on_missing=None if create else missing,
        head=True,
        max_task_retries=-1,
        max_concurrency=10_000,
    )
    if settings:
        configure_controller(handle, settings)
    else:
        ray.get(handle.ping.remote())
    return handle


def configure_controller(handle: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Send ``settings`` to the controller: ``{"applied": bool, "version": the platform config
    version in force}``.  A platform config's settings (with ``version``) replace older ones; once
    one is in force a pipeline's (no ``version``) are not applied."""
    import ray

    out: dict[str, Any] = ray.get(handle.configure.remote(dict(settings)))
    return out


def platform_version(handle: Any) -> int | None:
    """The platform config version the controller follows (None: none)."""
    import ray

    version = ray.get(handle.stats.remote()).get("platform_version")
    return None if version is None else int(version)


class SchedulerClient:
    """One owner's (a driver's) view of the controller."""

    def __init__(self, handle: Any, owner: str | None = None, principal: str | None = None) -> None:
        """``owner`` names the work (e.g. a run id); the driver's Ray job id is appended after
        ``@`` so the controller frees this owner's grants as soon as the driver exits.
        ``principal``: the user the jobs are submitted for (who may release or requeue them)."""
        import ray

        self.handle = handle
        self.principal = principal
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
        grant: str = "pg",
    ) -> JobView:
        """Queue one job.  ``grant="pg"``: run inside the placement group of the grant
        (:func:`scheduling_strategy`).  ``grant="ledger"``: for a library that makes its
        own groups (Ray Train, Tune); pin its workers with :func:`ledger_label_selectors`."""
        import ray

        req = {
            "job_id": job_id,
            "bundles": [b.to_dict() for b in bundles],
            "priority": priority,
            "team": team,
            "preemptible": preemptible,
            "strategy": strategy,
            "duration_estimate_s": duration_estimate_s,
            "label_selector": dict(label_selector or {}),
            "grant": grant,
            "principal": self.principal,
        }
        return JobView.from_dict(ray.get(self.handle.submit.remote([req], self.owner))[0])

    def watch(self, versions: Mapping[str, int], timeout_s: float = 10.0) -> Any:
        """An ObjectRef that resolves to job views (dict form, see :meth:`views`) once one of them changes."""
        return self.handle.watch.remote(dict(versions), timeout_s)

    @staticmethod
    def views(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, JobView]:
        """Job views from the actor's dict form (e.g. ``ray.get`` of :meth:`watch`)."""
        return {jid: JobView.from_dict(v) for jid, v in raw.items()}

    def refresh(self, job_ids: Sequence[str], wait_s: float = 0.0) -> dict[str, JobView]:
        import ray

        return self.views(ray.get(self.handle.refresh.remote(list(job_ids), wait_s)))

    def release(self, job_ids: Sequence[str]) -> Any:
        return self.handle.release.remote(list(job_ids))

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobView]:
        import ray

        return self.views(ray.get(self.handle.poll.remote(list(job_ids))))

    def requeue(self, job_id: str) -> JobView | None:
        import ray

        raw = ray.get(self.handle.requeue.remote(job_id))
        return None if raw is None else JobView.from_dict(raw)

    def queue(self) -> list[JobView]:
        import ray

        return [JobView.from_dict(v) for v in ray.get(self.handle.queue.remote())]


def grant_strategy(view: Mapping[str, Any]) -> Any:
    """Where the work of a granted job runs: inside its placement group (``pg`` grant),
    or pinned to the node of its single bundle (``ledger`` grant), whose capacity the
    controller keeps free for it.  ``view``: a :class:`JobView` or its dict form."""
    job = JobView.from_dict(view)
    if job.pg_id:
        return scheduling_strategy(job.pg_id)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    (node,) = set(ledger_label_selectors(job)[0].values())
    return NodeAffinitySchedulingStrategy(node, soft=False)


def scheduling_strategy(pg_id: str) -> Any:
    """Run inside the granted placement group (bundle 0), children captured."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(
        pg_from_id(pg_id), placement_group_bundle_index=0, placement_group_capture_child_tasks=True
    )


def ledger_label_selectors(view: Mapping[str, Any]) -> list[dict[str, str]]:
    """One label selector per bundle of a ledger grant, pinning it to its granted node
    (e.g. ``ScalingConfig(label_selector=...)`` for Ray Train's workers).  ``view``: a
    :class:`JobView` or its dict form."""
    job = JobView.from_dict(view)
    if job.grant is not Grant.LEDGER or not job.state.holds_grant:
        raise RaypipeError(f"job {job.job_id!r} holds no ledger grant (state {job.state.value!r})")
    return [{NODE_ID_LABEL: nid} for nid in job.nodes]


def job_state(job_id: str) -> JobState | None:
    """The state of one job (from inside its work, e.g. to notice preemption)."""
    import ray

    handle: Any = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    views: dict[str, dict[str, Any]] = ray.get(handle.poll.remote([job_id]))
    view = views.get(job_id)
    return None if view is None else JobState(view["state"])
