"""Serving's share of the scheduler's budget: one long-lived reservation per app.

Before Serve starts an app's replicas, :func:`reserve` submits one job to raypipe's
scheduler controller: one bundle per replica (the ingress replicas and every
variant's replicas; with autoscaling, ``max_replicas``), ``grant="ledger"``, not
preemptible.  Once granted, the controller books that capacity on the chosen nodes
for as long as the job lives, so pipeline stages (training, data) admitted by the
same controller never get it; the replicas are pinned to the granted nodes with a
``ray.io/node-id`` label selector, and Ray's own accounting of them is not counted
twice (the controller subtracts its grants from what Ray reports used).

The job outlives the process that deployed the app: its owner is ``serve:<app>``
(no driver job id, so the controller does not release it when that driver exits),
and the app's metrics collector actor polls it every few seconds to keep its lease.
``shutdown`` releases it; if the collector is gone, the lease lapses after the
controller's ``lease_s`` and the capacity returns.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.resources import Resources
from raypipe.scheduler.backend import NODE_ID_LABEL
from raypipe.scheduler.client import get_controller
from raypipe.store.metadata import current_actor


def owner(app: str) -> str:
    return f"serve:{app}"


def reserve(
    app: str, bundles: Sequence[Resources], *, timeout_s: float = 120.0, priority: int = 0, hint: str = ""
) -> dict[str, Any]:
    """Submit the reservation and wait until it is granted; returns the job's view
    (``job_id``, ``nodes``, ``demand``...).  Raises a RaypipeError with the scheduler's
    reason when it is rejected or not granted within ``timeout_s``."""
    import ray

    handle = get_controller()
    job_id = f"serve:{app}:{uuid.uuid4().hex[:8]}"
    req = {
        "job_id": job_id,
        "bundles": [b.to_dict() for b in bundles],
        "priority": priority,
        "team": "default",
        "preemptible": False,
        "strategy": "PACK",
        "duration_estimate_s": None,
        "label_selector": {},
        "grant": "ledger",
        "principal": current_actor(),
    }
    view = ray.get(handle.submit.remote([req], owner(app)))[0]
    deadline = time.monotonic() + timeout_s
    while True:
        state = view.get("state")
        if state == "running":
            return view
        if state == "rejected":
            raise RaypipeError(f"serving app {app!r} cannot be reserved {view.get('demand')}: {view.get('reason')}")
        if state not in ("queued",) or time.monotonic() >= deadline:
            release(job_id)
            why = view.get("reason") or state
            raise RaypipeError(
                f"serving app {app!r}: the scheduler did not grant {view.get('demand')} within {timeout_s:g}s "
                f"({why}){hint}"
            )
        time.sleep(0.25)
        view = ray.get(handle.poll.remote([job_id])).get(job_id) or {"state": "lost", "reason": "job vanished"}


def poll(job_id: str) -> dict[str, Any] | None:
    import ray

    try:
        handle = get_controller(create=False)
    except RaypipeError:
        return None
    return ray.get(handle.poll.remote([job_id])).get(job_id)


def release(job_id: str) -> None:
    import ray

    try:
        handle = get_controller(create=False)
    except RaypipeError:
        return
    ray.get(handle.release.remote([job_id]))


def selector(view: Mapping[str, Any]) -> dict[str, str]:
    """Label selector pinning replicas to the reservation's nodes."""
    nodes = sorted(set(view.get("nodes") or []))
    if not nodes:
        return {}
    return {NODE_ID_LABEL: nodes[0] if len(nodes) == 1 else f"in({','.join(nodes)})"}


def same_bundles(view: Mapping[str, Any] | None, bundles: Sequence[Resources]) -> bool:
    """Whether a held reservation already books exactly ``bundles``."""
    if not view or view.get("state") != "running":
        return False
    total = Resources()
    for b in bundles:
        total = total + b
    return view.get("bundles") == len(bundles) and view.get("demand") == str(total)
