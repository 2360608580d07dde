"""Pure job-lifecycle rules shared by the live controller and the simulator.

Both sides move a job between "queued" and "holding a grant" the same way; the
rules that decide what a requeued request looks like, and which policies may
lend capacity above a team's quota, live here so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import replace

from raypipe.scheduler.types import JobRequest

#: Policies that start jobs above their team's quota as *borrowed* capacity.
BORROWING_POLICIES: tuple[str, ...] = ("fair_share",)


def borrowing_allowed(policy: str) -> bool:
    """True when ``policy`` may lend capacity above a team's quota.

    Such a request is feasible if it fits the cluster, whatever its team's quota
    (the controller and the simulator reject a request up front only when it can
    never run).
    """
    return policy in BORROWING_POLICIES


def requeued_request(request: JobRequest, now: float, start_time: float | None) -> JobRequest:
    """``request`` as it re-enters the queue at ``now`` after holding a grant since ``start_time``.

    Its attained service grows by ``gpus x run time``, ``enqueue_time`` becomes
    ``now`` and ``last_run_s`` the length of the run that just ended (0 when it
    never started).
    """
    run_s = (now - start_time) if start_time is not None else 0.0
    return replace(
        request,
        attained_service=request.attained_service + request.gpus * max(0.0, run_s),
        enqueue_time=now,
        last_run_s=run_s,
    )
