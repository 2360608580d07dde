"""What a run tells its caller: stage events as they happen, the result at the end, and
the stop requests a caller (a signal handler) leaves for the run loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from raypipe import failures
from raypipe.failures import Failure
from raypipe.runner.states import RunStatus, StageEventKind, StageStatus
from raypipe.store.artifacts import ArtifactRef


@dataclass(frozen=True)
class StageEvent:
    """One thing that happened to a stage, for progress displays."""

    stage: str
    status: StageEventKind
    attempt: int = 0
    duration_s: float | None = None
    message: str = ""


@dataclass
class RunResult:
    run_id: str
    status: RunStatus
    stages: dict[str, StageStatus] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    outputs: dict[str, dict[str, ArtifactRef]] = field(default_factory=dict)
    #: Stage -> its failure as the user reads it (the whole message, its category); filled by the api.
    failures: dict[str, Failure] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED


_STOP: list[str] = []


def request_stop(why: str) -> None:
    """Ask the running executor(s) of this process to stop: the run loop raises
    :class:`~raypipe.exceptions.RunStopped` at its next turn (within ``poll_s``), cancels
    its stages and records the run ``stopped``.  Safe to call from a signal handler (it
    only records the request: raising inside Ray's own calls would corrupt them)."""
    _STOP.append(why)


def take_stop_request() -> str | None:
    """The reason of the latest stop request not taken yet (and forget it), or None."""
    return _STOP.pop() if _STOP else None


def short_error(exc: BaseException) -> str:
    """The user's exception as one line: ``ValueError: bad value``."""
    return failures.short(exc)


def tee(*hooks: Callable[[StageEvent], None] | None) -> Callable[[StageEvent], None]:
    """One event hook calling each of ``hooks`` (``None``s skipped) in order."""
    calls = [h for h in hooks if h is not None]

    def each(e: StageEvent) -> None:
        for h in calls:
            h(e)

    return each
