"""Scheduling policies, one per module, and the name -> policy registry.

Policy classes are imported lazily on first access (``from
raypipe.scheduler.policies import FifoPolicy`` or ``get_policy("fifo")``).
"""

from __future__ import annotations

from typing import Any

from raypipe.scheduler.policies.registry import (
    POLICIES,
    available_policies,
    get_policy,
    get_policy_class,
)

_CLASSES = {
    "FifoPolicy": "fifo",
    "PriorityPolicy": "priority",
    "BackfillPolicy": "backfill",
    "FairSharePolicy": "fair_share",
    "LasPolicy": "las",
}

__all__ = [
    "POLICIES",
    "BackfillPolicy",
    "FairSharePolicy",
    "FifoPolicy",
    "LasPolicy",
    "PriorityPolicy",
    "available_policies",
    "get_policy",
    "get_policy_class",
]


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return get_policy_class(_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
