"""The ``Policy`` contract: a pure function from a ``Snapshot`` to a ``Decision``."""

from __future__ import annotations

import abc
from typing import ClassVar

from raypipe.scheduler.index import DecisionIndex
from raypipe.scheduler.types import Decision, Snapshot


class Policy(abc.ABC):
    """A scheduling policy.

    Preconditions and guarantees of :meth:`decide`:

    * It must be pure and deterministic: the same snapshot gives the same
      decision.  It never imports ``ray``, never reads a clock (``snapshot.now``
      is the time), never sleeps, and keeps no state between calls that could
      change a decision: the only state it keeps is its
      :class:`~raypipe.scheduler.index.DecisionIndex` (:meth:`index`), whose
      entries check their inputs on every use (a fresh policy object decides
      the same).
    * ``snapshot.queue`` is in submit order; ``free`` of each node in
      ``snapshot.cluster`` is authoritative (running jobs already subtracted).
    * The decision never over-commits a node (counting capacity released by its
      own preemptions), never places a gang partially, starts only queued jobs,
      preempts only running ``preemptible`` jobs, and never exceeds a team's
      quota except with starts listed in ``Decision.borrowed``.
    * Every queued job that does not start gets a human-readable reason.

    Subclasses set ``name`` (the registry key) and implement ``decide``,
    usually on a :class:`~raypipe.scheduler.context.DecisionContext`.  A
    policy that starts jobs above their team's quota (listing them in
    ``Decision.borrowed``) sets ``borrows_idle_quota = True``: the controller
    and the simulator then admit a request whose demand exceeds its team's
    quota, as long as it fits the cluster.

    Adding a policy: a module in ``raypipe/scheduler/policies/`` with the
    subclass, and one line in ``policies/registry.py``'s ``POLICIES``.
    """

    #: The registry key.
    name: ClassVar[str] = ""
    #: Starts jobs above their team's quota on idle capacity (marked borrowed).
    borrows_idle_quota: ClassVar[bool] = False

    def index(self) -> DecisionIndex:
        """The indexes this policy object keeps across decisions (created on first use)."""
        idx: DecisionIndex | None = self.__dict__.get("_decision_index")
        if idx is None:
            idx = self.__dict__["_decision_index"] = DecisionIndex()
        return idx

    @abc.abstractmethod
    def decide(self, snapshot: Snapshot) -> Decision:
        """What to start and preempt now.  Must be pure and deterministic."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
