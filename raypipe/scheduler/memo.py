"""``WaitMemo``: why a class of waiting jobs did not start, valid until capacity or their team changes.

Kept by a :class:`~raypipe.scheduler.context.DecisionContext` (``ctx.memo()``), which
invalidates it on starts and preemptions.
"""

from __future__ import annotations

from typing import Any

from raypipe.scheduler.types import Blocked, JobRequest

__all__ = ["WaitMemo"]


class WaitMemo:
    """What a class of waiting jobs got, per team, valid until capacity or that team changes.

    :meth:`remember` stores why a job did not start under its team and shape
    (``JobRequest.shape_key``); :meth:`recall` returns it for any later job of
    the same team and shape.  Within a decision free capacity only shrinks
    between preemptions and a team's usage only changes when it starts or
    loses a job, so the outcome holds until the context invalidates it:
    starting a job forgets its team (only when the team has a quota, for a memo
    made with ``team_usage=False``), a preemption forgets everything.  A
    policy whose reasons depend on more than team and shape (a queue index, a
    reservation) keeps one memo per value of that.

    In a policy's loop, :meth:`DecisionContext.recall` looks a job up and
    records the reason found for it in one step.
    """

    __slots__ = ("_teams", "team_usage")

    def __init__(self, *, team_usage: bool = True) -> None:
        self._teams: dict[str, dict[str, Blocked]] = {}
        #: Reasons depend on a team's usage beyond its quota: a start of any team forgets it
        #: (``False``: only a start of a team with a quota does; see ``DecisionContext.memo``).
        self.team_usage = team_usage

    def recall(self, job: JobRequest) -> Blocked | None:
        """What an earlier job of ``job``'s team and shape got, or ``None``."""
        seen = self._teams.get(job.team)
        return None if seen is None else seen.get(job.shape_key)

    def remember(self, job: JobRequest, blocked: Blocked) -> None:
        """Record why ``job`` did not start, for later jobs of its team and shape."""
        seen = self._teams.get(job.team)
        if seen is None:
            self._teams[job.team] = {job.shape_key: blocked}
        else:
            seen[job.shape_key] = blocked

    def forget_team(self, team: str) -> None:
        """Drop what was recorded for ``team`` (its usage changed)."""
        self._teams.pop(team, None)

    def clear(self) -> None:
        """Drop everything (capacity grew)."""
        self._teams.clear()


class _Forgetful(dict[str, dict[str, Blocked]]):
    """Teams of a memo that never hits: ``get`` finds nothing."""

    def get(self, key: str, default: Any = None) -> Any:
        return default


class _NoMemo(WaitMemo):
    """A memo that never hits (tests compare decisions with and without memos)."""

    __slots__ = ()

    def __init__(self) -> None:
        self._teams = _Forgetful()
        self.team_usage = True
