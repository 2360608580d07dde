"""The controller as a Ray actor: named, detached, restarted by Ray after a crash.

:class:`ControllerActor` is the thin asyncio shell around
:class:`~raypipe.scheduler.controller.ControllerCore`.  What crosses its
boundary is plain data: job views in their dict form
(:meth:`~raypipe.scheduler.jobs.JobView.to_dict`), stats as a dict.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe.scheduler.access import act
from raypipe.scheduler.controller import ControllerCore, ControllerStats, SchedulerSettings
from raypipe.scheduler.errors import SchedulingError
from raypipe.scheduler.exporter import SchedulerExporter
from raypipe.scheduler.jobs import JobState, JobView
from raypipe.scheduler.ray_backend import RayBackend

__all__ = ["ControllerActor"]

_log = logging.getLogger(__name__)


def _wire(views: Mapping[str, JobView]) -> dict[str, dict[str, Any]]:
    return {jid: v.to_dict() for jid, v in views.items()}


class ControllerActor:
    """The named, detached Ray actor around :class:`ControllerCore` (asyncio).

    Owners call ``submit``/``poll``/``release``/``requeue``; ``watch`` returns as
    soon as one of the given jobs changes state, so owners wait without polling.
    People's operations on a job (``raypipe queue release|requeue|cancel``) go through
    ``act``, which checks who asks.
    A background task runs :meth:`ControllerCore.step` every ``tick_s``.
    """

    def __init__(self, settings: dict[str, Any] | None = None, tick_s: float = 0.5, backend: str | None = None) -> None:
        """``backend``: ``"module:Class"`` of a :class:`~raypipe.scheduler.backend.Backend` to use
        instead of ``RayBackend`` (tests use one whose ``request_resources`` stands in for an autoscaler)."""
        if backend:
            module, _, name = backend.partition(":")
            be = getattr(importlib.import_module(module), name)()
        else:
            be = RayBackend()
        self.core = ControllerCore(be, SchedulerSettings(**settings) if settings else None)
        self.metrics = SchedulerExporter()  # Prometheus, through Ray's metrics
        self.metrics.prime(self.core.jobs)
        self.tick_s = tick_s
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    def _ensure_loop(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                if self.core.step():
                    self._notify()
            except Exception as e:  # noqa: BLE001 - the loop must survive a bad tick
                _log.warning("raypipe scheduler: tick failed: %s: %s", type(e).__name__, e)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick_s)
            except asyncio.TimeoutError:
                pass

    def _notify(self) -> None:
        try:
            self.metrics.observe(self.core.jobs, self.core.settings.teams)
        except Exception as e:  # noqa: BLE001 - metrics never stop the scheduler
            _log.warning("raypipe scheduler: metrics: %s: %s", type(e).__name__, e)
        self._changed.set()
        self._changed = asyncio.Event()

    def _kick(self) -> None:
        """Schedule now (an event: submit, release, requeue) and wake watchers."""
        self.core.schedule()
        self._notify()

    async def ping(self) -> ControllerStats:
        self._ensure_loop()
        return self.core.stats()

    async def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Apply ``settings`` (see :meth:`ControllerCore.configure`): ``{"applied", "version"}``,
        the platform config version in force after."""
        self._ensure_loop()
        applied = self.core.configure(SchedulerSettings(**settings))
        if applied:
            self._kick()
        return {"applied": applied, "version": self.core.settings.version}

    async def act(self, action: str, job_id: str, caller: dict[str, Any]) -> dict[str, Any]:
        """A person's ``release``, ``requeue`` or ``cancel`` of a job, checked against its
        principal (:mod:`raypipe.scheduler.access`): ``{"job": view}`` or ``{"error": why}``."""
        self._ensure_loop()
        try:
            with self.core.batch():
                view = act(self.core, action, job_id, caller)
                self._kick()
        except SchedulingError as e:
            return {"error": str(e)}
        return {"job": view.to_dict()}

    async def submit(self, requests: Sequence[dict[str, Any]], owner: str) -> list[dict[str, Any]]:
        self._ensure_loop()
        with self.core.batch():
            views = [self.core.submit(r, owner) for r in requests]
            self._kick()
        return [self.core.jobs[v.job_id].view().to_dict() for v in views]

    async def release(self, job_ids: Sequence[str]) -> None:
        self._ensure_loop()
        with self.core.batch():
            for jid in job_ids:
                self.core.release(jid)
            self._kick()

    async def requeue(self, job_id: str) -> dict[str, Any] | None:
        self._ensure_loop()
        with self.core.batch():
            self.core.requeue(job_id)
            self._kick()
        job = self.core.jobs.get(job_id)
        return job.view().to_dict() if job else None

    async def poll(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        self._ensure_loop()
        return _wire(self.core.poll(job_ids))

    async def watch(self, versions: dict[str, int], timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """Wait until a job's version differs from ``versions`` (or ``timeout_s``); return views."""
        self._ensure_loop()
        deadline = time.monotonic() + timeout_s
        while True:
            views = self.core.poll(versions)
            if any(jid not in views or views[jid].version != v for jid, v in versions.items()):
                return _wire(views)
            left = deadline - time.monotonic()
            if left <= 0:
                return _wire(views)
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))
            except asyncio.TimeoutError:
                pass

    async def refresh(self, job_ids: Sequence[str], wait_s: float = 0.0) -> dict[str, dict[str, Any]]:
        """Re-read the nodes now (up to ``wait_s`` until one of the jobs is ``lost``); return views.

        Owners call this when their work died of a system error, to tell a lost
        node (requeue, no retry spent) from a failure of the work itself."""
        self._ensure_loop()
        deadline = time.monotonic() + wait_s
        while True:
            if self.core.refresh_nodes():
                self._notify()
            views = self.core.poll(job_ids)
            if any(v.state is JobState.LOST for v in views.values()) or time.monotonic() >= deadline:
                return _wire(views)
            await asyncio.sleep(0.25)

    async def decision_latencies(self) -> dict[str, Any]:
        """Wall seconds of the last (up to 2,000) ``Policy.decide`` calls, and the count of all."""
        return {"latencies_s": list(self.core.decision_s), "decisions": self.core.decisions}

    async def metrics_snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """The metrics this controller exported, as its registry keeps them."""
        return self.metrics.registry.snapshot()

    async def queue(self) -> list[dict[str, Any]]:
        self._ensure_loop()
        return [v.to_dict() for v in self.core.queue()]

    async def stats(self) -> ControllerStats:
        self._ensure_loop()
        return self.core.stats()
