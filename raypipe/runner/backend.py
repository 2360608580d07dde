"""What the executor needs from the outside: somewhere to run stage tasks, a clock, and grants.

:class:`~raypipe.runner.executor.Executor` runs stage tasks through an
:class:`ExecutorBackend` (:class:`~raypipe.runner.ray_backend.RayExecutorBackend` on a
cluster, a fake in unit tests) and asks a :class:`GrantScheduler` for their resources
(:class:`~raypipe.scheduler.client.SchedulerClient` on a cluster).  Nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from raypipe.resources import Resources

#: An opaque reference to a launched task or a pending scheduler answer (under Ray, an
#: ``ObjectRef``).  Hashable: the executor keys its running attempts by their handles.
Handle = Any


class TaskFailed(Exception):
    """Raised by :meth:`ExecutorBackend.result` when the stage's own code raised.

    ``error`` is the exception as the backend has it (under Ray, the ``RayTaskError``
    whose ``cause`` is the stage's exception): :mod:`raypipe.failures` reads both.
    Any other exception out of ``result`` is a system failure (a worker or node died)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class StageTask:
    """One attempt of a stage, ready to run."""

    #: The task's name, for people (Ray's dashboard): ``raypipe:PIPELINE:STAGE``.
    name: str
    #: The argument of :func:`raypipe.runner.task.execute_stage`: plain data only.
    payload: dict[str, Any]
    #: What the task itself takes (the rest of its grant is left to the work it starts).
    resources: Resources
    #: The scheduler's view of the granted job, saying where the task runs; None: anywhere.
    grant: Mapping[str, Any] | None = None


class ExecutorBackend(Protocol):
    """Runs stage tasks and keeps time for the executor."""

    def launch(self, task: StageTask) -> Handle:
        """Start the task (never retried by the backend); return its handle at once."""
        ...

    def wait(self, handles: Sequence[Handle], timeout_s: float) -> list[Handle]:
        """Block until at least one of ``handles`` is finished or ``timeout_s`` passed;
        return every finished one (empty on timeout)."""
        ...

    def result(self, handle: Handle, timeout_s: float | None = None) -> Any:
        """The value of a finished handle; :class:`TaskFailed` if the stage's code raised,
        any other exception for a system failure (or when ``timeout_s`` passed)."""
        ...

    def cancel(self, handle: Handle) -> None:
        """Stop the task now (it may not have a chance to clean up)."""
        ...

    def now(self) -> float:
        """Seconds since the epoch, on the clock that timeouts, backoffs and waits use."""
        ...

    def sleep(self, seconds: float) -> None: ...


class GrantScheduler(Protocol):
    """The executor's view of the scheduler (:class:`~raypipe.scheduler.client.SchedulerClient`).

    Views are the controller's dicts of one job: ``state`` (``queued``, ``running``,
    ``preempting``, ``lost``, ``done``, ``rejected``), ``version``, ``reason``, and for a
    grant ``grant``, ``nodes`` and ``pg_id``."""

    def new_job_id(self, prefix: str) -> str: ...

    def submit(
        self,
        job_id: str,
        bundles: Sequence[Resources],
        *,
        priority: int = 0,
        team: str = "default",
        preemptible: bool = True,
        strategy: str = "PACK",
        duration_estimate_s: float | None = None,
        label_selector: Mapping[str, str] | None = None,
        grant: str = "pg",
    ) -> Mapping[str, Any]: ...

    def watch(self, versions: Mapping[str, int], timeout_s: float = 10.0) -> Handle:
        """A handle the executor backend waits on: it resolves to the jobs' views once the
        version of one of them differs from ``versions`` (or after ``timeout_s``)."""
        ...

    def refresh(self, job_ids: Sequence[str], wait_s: float = 0.0) -> Mapping[str, Mapping[str, Any]]: ...

    def release(self, job_ids: Sequence[str]) -> Handle:
        """Give the jobs' grants back; the handle resolves once the controller has."""
        ...

    def poll(self, job_ids: Sequence[str]) -> Mapping[str, Mapping[str, Any]]: ...

    def requeue(self, job_id: str) -> Mapping[str, Any] | None: ...
