"""Who a process acts for: the :class:`Principal` of a call, and the one this thread (or process)
acts as, which every record of who did what reads (``runs.actor``, the ``audit`` table).

Shared and pure: no raypipe import, no I/O.  How a principal is established (a token, the
single-user default) is :mod:`raypipe.identity`'s business; this module only carries it.

A command sets its principal for the duration of the call (:func:`acting_as`, a context
variable: per thread, so concurrent calls in one process do not mix).  A long-lived process
that acts for someone else throughout (a rollout or loop controller actor, acting for whoever
started it) sets a process-wide one (:func:`set_process_principal`), which a thread without
its own falls back to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_TEAM", "Principal", "acting", "acting_as", "set_process_principal"]

#: The team every principal belongs to (see :mod:`raypipe.identity`).
DEFAULT_TEAM = "default"


@dataclass(frozen=True)
class Principal:
    """A user as raypipe knows it: its ``name``, its ``teams`` and whether it is an ``admin``.
    ``source`` says how it was established: ``token`` (a token the platform config maps to
    this user), ``single-user`` (no users configured: the OS user) or ``delegated`` (a process
    acting for the user who started it: a closed loop's retraining run, a rollout controller)."""

    name: str
    teams: tuple[str, ...] = field(default=(DEFAULT_TEAM,))
    admin: bool = False
    source: str = "single-user"

    def member_of(self, team: str) -> bool:
        """Whether the principal may run work as ``team``: an admin any team, a user its own and ``default``."""
        return self.admin or team == DEFAULT_TEAM or team in self.teams

    def caller(self) -> dict[str, Any]:
        """What crosses to the scheduler's controller with an operation on a job (plain data)."""
        return {"name": self.name, "admin": self.admin}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "teams": list(self.teams), "admin": self.admin, "source": self.source}


_ACTING: ContextVar[Principal | None] = ContextVar("raypipe_principal", default=None)
_PROCESS: list[Principal | None] = [None]


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[Principal | None]:
    """Within the block, this thread acts as ``principal`` (None: as whoever it acted as before)."""
    if principal is None:
        yield acting()
        return
    token = _ACTING.set(principal)
    try:
        yield principal
    finally:
        _ACTING.reset(token)


def set_process_principal(principal: Principal | None) -> None:
    """Every thread of this process without a principal of its own acts as ``principal``."""
    _PROCESS[0] = principal


def acting() -> Principal | None:
    """The principal this thread acts as (its own, else the process's), or None."""
    return _ACTING.get() or _PROCESS[0]
