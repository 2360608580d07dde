"""Policy registry: name -> lazy import path (like Ray Tune's scheduler registry).

Registering a policy is one line in :data:`POLICIES`; everything else (the
class names ``raypipe.scheduler.policies`` exports, which policies borrow idle
quota, the CLI's default list) is derived from it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from raypipe.scheduler.errors import PolicyConfigError, UnknownPolicyError
from raypipe.scheduler.policy import Policy

#: ``(name, "module:Class")`` of every policy, in the order listings show them.
POLICIES: tuple[tuple[str, str], ...] = (
    ("fifo", "raypipe.scheduler.policies.fifo:FifoPolicy"),
    ("priority", "raypipe.scheduler.policies.priority:PriorityPolicy"),
    ("backfill", "raypipe.scheduler.policies.backfill:BackfillPolicy"),
    ("fair_share", "raypipe.scheduler.policies.fair_share:FairSharePolicy"),
    ("las", "raypipe.scheduler.policies.las:LasPolicy"),
)


def policy_names() -> tuple[str, ...]:
    """Registered policy names, in registry order (e.g. a CLI's default list of policies to compare)."""
    return tuple(name for name, _ in POLICIES)


def available_policies() -> tuple[str, ...]:
    """Registered policy names, in registry order (same as :func:`policy_names`)."""
    return policy_names()


def class_names() -> dict[str, str]:
    """Class name -> registry name of every registered policy (``{"FifoPolicy": "fifo", ...}``)."""
    return {path.partition(":")[2]: name for name, path in POLICIES}


def get_policy_class(name: str) -> type[Policy]:
    """Import and return the policy class registered as ``name``.

    Raises ``UnknownPolicyError`` (a ``RaypipeError``) listing the valid names.
    """
    path = dict(POLICIES).get(name)
    if path is None:
        raise UnknownPolicyError(f"unknown scheduling policy {name!r}; expected one of: {', '.join(policy_names())}")
    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"{path} is not a Policy subclass")
    return cls


def borrowing_policies() -> tuple[str, ...]:
    """Names of the registered policies that start jobs above their team's quota (``borrows_idle_quota``)."""
    return tuple(name for name in policy_names() if get_policy_class(name).borrows_idle_quota)


def get_policy(name: str, **kwargs: Any) -> Policy:
    """A new policy instance: ``get_policy("priority", aging_s=300, preempt=True)``.

    Unknown names raise ``UnknownPolicyError``; arguments the policy does not
    accept raise ``PolicyConfigError`` listing the accepted ones (never dropped).
    """
    cls = get_policy_class(name)
    sig = inspect.signature(cls)
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        accepted = ", ".join(p for p in sig.parameters) or "none"
        raise PolicyConfigError(f"policy {name!r}: {e}; accepted arguments: {accepted}") from None
    try:
        return cls(**kwargs)
    except PolicyConfigError:
        raise
    except (TypeError, ValueError) as e:  # an argument of the wrong type (a string for a number...)
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise PolicyConfigError(f"policy {name!r}: invalid argument ({given}): {e}") from None
