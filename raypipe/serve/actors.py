"""Options of serving's singleton actors (monitor, rollout and loop controllers)."""

from __future__ import annotations

from typing import Any

NAMESPACE = "raypipe"


def singleton_options(name: str, *, head: bool = False, max_concurrency: int | None = None) -> dict[str, Any]:
    """A named detached actor in namespace ``raypipe`` (get-or-create), restarted forever, no
    CPU; ``head``: pinned to the head node (it opens the metadata store's file there)."""
    opts: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "num_cpus": 0,
    }
    if head:
        opts["resources"] = {"node:__internal_head__": 0.001}
    if max_concurrency is not None:
        opts["max_concurrency"] = max_concurrency
    return opts
