"""The states of runs, stages and stage events, as typed string enums (standard library only).

Each member equals the plain string stored in the metadata store's ``status`` columns
and shown by the CLI (``StageStatus.FAILED == "failed"``), so records written as
plain strings and records written from these enums are the same.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: members are strings, ``str()`` gives the value."""

        def __str__(self) -> str:
            return str(self.value)


class StageStatus(StrEnum):
    """A stage's state in a run (``RunResult.stages``) and a stage run's recorded status
    (``stage_runs.status``).  Some exist only in one of the two places, as noted."""

    #: Not started: its upstream stages are not done, or it waits to retry (in memory only).
    WAITING = "waiting"
    #: Waiting for the scheduler's grant of its resources.
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    #: Outputs taken from an earlier stage run with the same cache key.
    CACHED = "cached"
    #: Finished earlier in the same run, before a ``resume`` (in memory only).
    REUSED = "reused"
    FAILED = "failed"
    #: Not run: an upstream stage failed or was skipped.
    SKIPPED = "skipped"
    #: Ran longer than ``timeout_s``, or waited ``wait_timeout_s`` for its grant (recorded only).
    TIMEOUT = "timeout"
    #: The scheduler can never grant what it asks for (recorded only).
    REJECTED = "rejected"
    #: The scheduler took its grant back; the attempt was queued again (recorded only).
    PREEMPTED = "preempted"
    #: A node of its grant died; the attempt was queued again (recorded only).
    LOST = "lost"
    #: The driver stopped (or died) while the attempt ran or waited (recorded only).
    INTERRUPTED = "interrupted"


class RunStatus(StrEnum):
    """A run's status (``runs.status``, ``RunResult.status``)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Asked to stop (Ctrl-C, SIGTERM, ``loop stop``): its stages were cancelled.
    STOPPED = "stopped"
    #: Its driver died or raised without finishing the run; ``resume`` continues it.
    INTERRUPTED = "interrupted"


class StageEventKind(StrEnum):
    """What happened to a stage (``StageEvent.status``), for progress displays."""

    QUEUED = "queued"
    WAITING = "waiting"
    STARTED = "started"
    PREEMPTING = "preempting"
    SUCCEEDED = "succeeded"
    CACHED = "cached"
    #: A cache hit whose outputs are gone from storage: the stage runs again.
    STALE = "stale"
    REUSED = "reused"
    RETRYING = "retrying"
    REQUEUED = "requeued"
    FAILED = "failed"
    SKIPPED = "skipped"


#: A stage in one of these states is done within its run: its outputs are available.
DONE_STATES: tuple[StageStatus, ...] = (StageStatus.SUCCEEDED, StageStatus.CACHED, StageStatus.REUSED)
#: Recorded statuses of a stage run whose outputs are stored (cache hits and resumes read them).
FINISHED_RECORDS: tuple[StageStatus, ...] = (StageStatus.SUCCEEDED, StageStatus.CACHED)
#: Recorded statuses of a stage run that a live driver still owns.
ACTIVE_RECORDS: tuple[StageStatus, ...] = (StageStatus.RUNNING, StageStatus.QUEUED)
#: A stage in one of these states makes the stages after it ``skipped``.
BLOCKING_STATES: tuple[StageStatus, ...] = (StageStatus.FAILED, StageStatus.SKIPPED)
