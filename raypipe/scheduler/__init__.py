"""raypipe's scheduler core: pure value types, placement and policies.

The pure core (types, placement, policy, policies) never imports ``ray``,
reads a clock or sleeps; the same policy objects drive the live controller and
the simulator.
"""

from __future__ import annotations

from raypipe.scheduler.errors import InvalidRequestError, PolicyConfigError, SchedulingError, UnknownPolicyError
from raypipe.scheduler.placement import FreeLedger, explain_wait, feasible_ever, place
from raypipe.scheduler.policies import available_policies, get_policy
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import (
    ClusterView,
    Decision,
    JobRequest,
    NodeView,
    Placement,
    RunningJob,
    Snapshot,
    Strategy,
    TeamConfig,
)

__all__ = [
    "ClusterView",
    "Decision",
    "FreeLedger",
    "InvalidRequestError",
    "JobRequest",
    "NodeView",
    "Placement",
    "Policy",
    "PolicyConfigError",
    "RunningJob",
    "SchedulingError",
    "Snapshot",
    "Strategy",
    "TeamConfig",
    "UnknownPolicyError",
    "available_policies",
    "explain_wait",
    "feasible_ever",
    "get_policy",
    "place",
]
