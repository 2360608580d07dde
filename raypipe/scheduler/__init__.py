"""raypipe's scheduler core: pure value types, placement and policies.

The pure core (types, vec, placement, context, policy, policies) never imports
``ray``, reads a clock or sleeps; the same policy objects drive the live
controller and the simulator.

Writing a policy: subclass :class:`Policy`, build the decision on a
:class:`DecisionContext`, register it with one line in
``raypipe/scheduler/policies/registry.py``.
"""

from __future__ import annotations

from raypipe.scheduler.context import DecisionContext, WaitMemo
from raypipe.scheduler.errors import InvalidRequestError, PolicyConfigError, SchedulingError, UnknownPolicyError
from raypipe.scheduler.placement import FreeLedger, admission_block, explain_wait, feasible_ever, place
from raypipe.scheduler.policies import available_policies, get_policy, policy_names
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.types import (
    Blocked,
    BlockKind,
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
    "BlockKind",
    "Blocked",
    "ClusterView",
    "Decision",
    "DecisionContext",
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
    "WaitMemo",
    "admission_block",
    "available_policies",
    "explain_wait",
    "feasible_ever",
    "get_policy",
    "place",
    "policy_names",
]
