"""A run's notifications (``notify:``): ``run_failed``, ``run_succeeded`` and ``gate_failed``
at its end, ``stage_waiting`` when a stage has waited its sinks' ``waiting_minutes`` for
resources; sent by a :class:`~raypipe.notify.Notifier` in the background, so a slow or dead
receiver never slows or fails the run (its end waits at most the flush bound)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from raypipe.failures import GATE
from raypipe.notify import Notification, Notifier, effective_sinks
from raypipe.runner.events import RunResult, StageEvent
from raypipe.runner.states import RunStatus, StageEventKind

#: Stage events after which a stage no longer waits for its grant.
_NOT_WAITING = frozenset(
    {
        StageEventKind.STARTED,
        StageEventKind.SUCCEEDED,
        StageEventKind.FAILED,
        StageEventKind.SKIPPED,
        StageEventKind.CACHED,
        StageEventKind.REUSED,
        StageEventKind.RETRYING,
    }
)


class RunNotifier:
    """The notifications of one run (``notifier`` None: none configured; every method is then a no-op)."""

    def __init__(
        self,
        notifier: Notifier | None,
        pipeline: str,
        run_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.pipeline = pipeline
        self.run_id = run_id
        self.clock = clock
        #: Stage -> when it started waiting for its grant (queued, or requeued).
        self.queued_at: dict[str, float] = {}

    @classmethod
    def of(cls, own: Sequence[Any] | None, platform: Sequence[Any] | None, pipeline: str, run_id: str) -> RunNotifier:
        """The run's notifier: the pipeline's ``notify``, else the platform config's."""
        sinks = effective_sinks(own, platform)
        return cls(Notifier(sinks) if sinks else None, pipeline, run_id)

    def _base(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "run_id": self.run_id}

    def on_event(self, e: StageEvent) -> None:
        if self.notifier is None:
            return
        now = self.clock()
        if e.status in (StageEventKind.QUEUED, StageEventKind.REQUEUED):
            self.queued_at[e.stage] = now
        elif e.status in _NOT_WAITING:
            self.queued_at.pop(e.stage, None)
        elif e.status == StageEventKind.WAITING and e.stage in self.queued_at:
            since = self.queued_at[e.stage]
            waited = now - since
            text = (
                f"raypipe: stage {e.stage} of run {self.run_id} ({self.pipeline}) has waited "
                f"{waited / 60:.0f} min for resources: {e.message or 'no grant yet'}"
            )
            detail = {**self._base(), "stage": e.stage, "attempt": e.attempt, "waited_s": round(waited, 1)}
            detail["reason"] = e.message
            key = f"{e.stage}:{e.attempt}:{since}"
            self.notifier.notify(Notification("stage_waiting", text, detail, waited_s=waited, key=key))

    def ended(self, result: RunResult) -> None:
        """The run's end: a ``gate_failed`` per missed gate, then ``run_failed`` or ``run_succeeded``."""
        if self.notifier is None:
            return
        base = {**self._base(), "status": str(result.status), "wall_s": round(result.wall_s, 1)}
        for stage, failure in result.failures.items():
            if failure.category == GATE:
                text = f"raypipe: gate {stage} of run {self.run_id} ({self.pipeline}) failed: {failure.message}"
                self.notifier.notify(
                    Notification("gate_failed", text, {**base, "stage": stage, "message": failure.message})
                )
        if result.status == RunStatus.FAILED:
            errors = {s: (result.failures[s].message if s in result.failures else m) for s, m in result.errors.items()}
            lines = "; ".join(f"{s}: {m}" for s, m in errors.items())
            text = f"raypipe: run {self.run_id} ({self.pipeline}) failed: {lines}"
            categories = {s: f.category for s, f in result.failures.items()}
            self.notifier.notify(Notification("run_failed", text, {**base, "errors": errors, "categories": categories}))
        elif result.status == RunStatus.SUCCEEDED:
            text = f"raypipe: run {self.run_id} ({self.pipeline}) succeeded in {result.wall_s:.0f}s"
            stages = {s: str(st) for s, st in result.stages.items()}
            self.notifier.notify(Notification("run_succeeded", text, {**base, "stages": stages}))

    def close(self, timeout: float | None = None) -> None:
        """Wait at most the flush bound for what is in flight."""
        if self.notifier is not None:
            self.notifier.close(timeout)
