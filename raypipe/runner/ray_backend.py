"""The executor's backend on a Ray cluster: stage attempts are Ray tasks.

Ray is imported when a method first needs it, so a run that is all cache hits never
imports it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from raypipe.runner.backend import Handle, StageTask, TaskFailed
from raypipe.runner.task import execute_stage
from raypipe.scheduler.client import grant_strategy


class RayExecutorBackend:
    """Stage attempts run as Ray tasks (``ObjectRef`` handles); time is the wall clock."""

    def launch(self, task: StageTask) -> Handle:
        opts: dict[str, Any] = {"name": task.name, "max_retries": 0, "retry_exceptions": False}
        if task.grant is not None:
            opts["scheduling_strategy"] = grant_strategy(task.grant)
        return _remote_execute().options(**opts, **task.resources.to_ray_options()).remote(task.payload)

    def wait(self, handles: Sequence[Handle], timeout_s: float) -> list[Handle]:
        import ray

        if not handles:
            time.sleep(timeout_s)
            return []
        ready, rest = ray.wait(list(handles), num_returns=1, timeout=timeout_s)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return list(ready)

    def result(self, handle: Handle, timeout_s: float | None = None) -> Any:
        import ray

        try:
            return ray.get(handle, timeout=timeout_s)
        except ray.exceptions.RayTaskError as e:
            raise TaskFailed(e) from e

    def cancel(self, handle: Handle) -> None:
        import ray

        ray.cancel(handle, force=True)

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@lru_cache(maxsize=1)
def _remote_execute() -> Any:
    """``execute_stage`` as a Ray remote function, made once per process."""
    import ray

    return ray.remote(execute_stage)
