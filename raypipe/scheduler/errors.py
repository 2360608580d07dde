"""Errors raised by the scheduler's pure core."""

from __future__ import annotations

from raypipe.exceptions import RaypipeError


class SchedulingError(RaypipeError):
    """Base class of scheduler errors caused by user input (bad snapshot, bad policy name...)."""


class InvalidRequestError(SchedulingError, ValueError):
    """A job request, node, snapshot or allocation is malformed or inconsistent."""


class UnknownPolicyError(SchedulingError, KeyError):
    """``get_policy`` was given a name that is not registered; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class PolicyConfigError(SchedulingError, TypeError):
    """A policy was constructed with an argument it does not accept or a bad value."""


class TraceError(SchedulingError):
    """A job trace cannot be read: missing file or columns, or bad rows (listed with ``file:line``)."""


class ClusterSpecError(SchedulingError):
    """A simulated cluster description is invalid; the message names the field."""


class SimulationError(SchedulingError):
    """The simulator was given inconsistent input (e.g. a policy decision that over-commits a node)."""
