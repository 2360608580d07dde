"""Pure job-lifecycle rules shared by the live controller and the simulator.

Both sides move a job between "queued" and "holding a grant" the same way; the
rules that decide what a requeued request looks like, and which policies may
lend capacity above a team's quota, live here so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import replace

from raypipe.scheduler.policies.registry import get_policy_class, policy_names
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import JobRequest


def borrowing_allowed(policy: str | Policy) -> bool:
    """True when ``policy`` (a registry name or an instance) may lend capacity above a team's quota.

    Such a request is feasible if it fits the cluster, whatever its team's quota
    (the controller and the simulator reject a request up front only when it can
    never run).  The policy class says so with ``Policy.borrows_idle_quota``; an
    unknown name does not borrow.
    """
    if isinstance(policy, Policy):
        return type(policy).borrows_idle_quota
    return policy in policy_names() and get_policy_class(policy).borrows_idle_quota


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
