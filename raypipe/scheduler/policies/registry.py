"""Policy registry: name -> lazy import path (like Ray Tune's scheduler registry)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from raypipe.scheduler.errors import PolicyConfigError, UnknownPolicyError
from raypipe.scheduler.policy import Policy

POLICIES: tuple[tuple[str, str], ...] = (
    ("fifo", "raypipe.scheduler.policies.fifo:FifoPolicy"),
    ("priority", "raypipe.scheduler.policies.priority:PriorityPolicy"),
    ("backfill", "raypipe.scheduler.policies.backfill:BackfillPolicy"),
    ("fair_share", "raypipe.scheduler.policies.fair_share:FairSharePolicy"),
    ("las", "raypipe.scheduler.policies.las:LasPolicy"),
)


def available_policies() -> tuple[str, ...]:
    """Registered policy names, in registry order."""
    return tuple(name for name, _ in POLICIES)


def get_policy_class(name: str) -> type[Policy]:
    """Import and return the policy class registered as ``name``.

    Raises ``UnknownPolicyError`` (a ``RaypipeError``) listing the valid names.
    """
    path = dict(POLICIES).get(name)
    if path is None:
        raise UnknownPolicyError(
            f"unknown scheduling policy {name!r}; expected one of: {', '.join(available_policies())}"
        )
    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"{path} is not a Policy subclass")
    return cls


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
