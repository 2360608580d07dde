"""Detached, named actors in raypipe's namespace: options, get-or-create and lookup."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: The Ray namespace of every named actor and KV key raypipe owns.
NAMESPACE = "raypipe"

#: Resource that pins an actor to the head node (it opens files that live there).
HEAD_RESOURCE = {"node:__internal_head__": 0.001}


def singleton_options(
    name: str,
    *,
    head: bool = False,
    max_concurrency: int | None = None,
    max_task_retries: int = 0,
    runtime_env: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Options of a named detached actor in namespace ``raypipe`` (get-or-create), restarted
    forever, holding no CPU; ``head``: pinned to the head node; ``runtime_env``: its own (a
    restarted actor gets it again)."""
    opts: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": max_task_retries,
        "num_cpus": 0,
    }
    if head:
        opts["resources"] = dict(HEAD_RESOURCE)
    if max_concurrency is not None:
        opts["max_concurrency"] = max_concurrency
    if runtime_env:
        opts["runtime_env"] = dict(runtime_env)
    return opts


def find_actor(name: str) -> Any | None:
    """The handle of raypipe's actor ``name``, or None when it does not exist."""
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def get_or_create(
    name: str,
    cls: type,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    on_missing: Callable[[], None] | None = None,
    **options: Any,
) -> Any:
    """The actor ``name`` if it exists, else ``cls(*args, **kwargs)`` started as a singleton
    with :func:`singleton_options` (``options`` go there).  ``on_missing``: called instead
    of creating when given (it raises, for lookups that must not create)."""
    import ray

    handle = find_actor(name)
    if handle is not None:
        return handle
    if on_missing is not None:
        on_missing()
    return ray.remote(cls).options(**singleton_options(name, **options)).remote(*args, **dict(kwargs or {}))


def kill_actor(name: str) -> bool:
    """Kill raypipe's actor ``name`` (no restart); False when there was none."""
    import ray

    handle = find_actor(name)
    if handle is None:
        return False
    try:
        ray.kill(handle, no_restart=True)
    except ValueError:
        return False
    return True
