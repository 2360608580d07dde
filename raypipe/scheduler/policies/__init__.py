"""Scheduling policies, one per module, and the name -> policy registry.

Policy classes are imported lazily on first access (``from
raypipe.scheduler.policies import FifoPolicy`` or ``get_policy("fifo")``);
the class names come from the registry's ``POLICIES``.
"""

from __future__ import annotations

from typing import Any

from raypipe.scheduler.policies.registry import (
    POLICIES,
    available_policies,
    borrowing_policies,
    class_names,
    get_policy,
    get_policy_class,
    policy_names,
)

__all__ = [
    "POLICIES",
    "available_policies",
    "borrowing_policies",
    "get_policy",
    "get_policy_class",
    "policy_names",
    *class_names(),
]


def __getattr__(name: str) -> Any:
    registered = class_names().get(name)
    if registered is not None:
        return get_policy_class(registered)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *class_names()})
