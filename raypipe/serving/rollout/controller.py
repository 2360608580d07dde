"""The rollout controller: the named detached actor (``raypipe-rollout-<app>``, namespace
``raypipe``, on the head node, restartable) that runs a
:class:`~raypipe.serving.rollout.run.RolloutRun` on a thread, with the real ports: the
serving core's ``set_weights``, the app's metrics collector, the model registry (the
``production`` alias) and ``rollout_events`` in the metadata store.  A restarted controller
resumes the unfinished rollout at its last step from the recorded events.  Killing the
driver does not stop a rollout."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from raypipe._ray.actors import NAMESPACE, find_actor, get_or_create
from raypipe.exceptions import RaypipeError
from raypipe.notify import Notification, Notifier
from raypipe.principal import Principal, set_process_principal
from raypipe.secrets import actor_env, actor_url, redact
from raypipe.serving import app as serve_app
from raypipe.serving.rollout.run import ACTIVE, Ports, RolloutRun, tick_seconds
from raypipe.serving.rollout.settings import RolloutPlan
from raypipe.serving.state import collector_name, controller_name
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from raypipe.store.rollouts import TERMINAL, RolloutStore

# --------------------------------------------------------------------------- the actor

#: Rollout events the controller decides on its own, and their audit actions.
_AUDITED = {"promoted": "rollout.promote", "rolled_back": "rollout.rollback"}
_AUDIT_KEYS = ("reason", "weights", "production", "previous_production", "guardrail", "observed", "allowed")


class RolloutController:
    """The rollout of one app, as a named detached Ray actor (see :func:`start_controller`).

    On (re)start it reads the app's latest rollout from ``rollout_events``; an
    unfinished one is resumed at its last step.  ``start`` begins a new rollout when
    none is active; ``status`` and ``abort`` may be called at any time (the actor runs
    methods on several threads; one lock guards the rollout)."""

    def __init__(self, app: str, db_path: str) -> None:
        self.app = app
        self.meta = MetadataStore(actor_url(db_path, os.environ))
        self.store = RolloutStore(self.meta)
        self.registry = ModelRegistry(self.meta)
        self.lock = threading.RLock()
        self.run: RolloutRun | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        events = self.store.events(app)
        if events and events[0].event == "started" and events[-1].event not in TERMINAL:
            plan = RolloutPlan.model_validate(events[0].detail["plan"])
            steps = [e for e in events if e.event == "step"]
            index = int(steps[-1].detail.get("step_index", 0)) if steps else 0
            self.run = RolloutRun(plan, self._ports(plan))
            try:
                self.run.resume(index, events[0].at, "the rollout controller restarted")
            except Exception as e:  # noqa: BLE001 - retried by the loop
                self._error(f"resuming: {e}")
                self.run.state = "running"
                self.run.step_index = index
                self.run.step_started_at = time.time()
            self._start_thread()
        elif events and events[0].event == "started":
            plan = RolloutPlan.model_validate(events[0].detail["plan"])
            self.run = RolloutRun(plan, self._ports(plan))
            self.run.state = events[-1].event
            self.run.started_at, self.run.ended_at = events[0].at, events[-1].at
            self.run.weights = dict(events[-1].detail.get("weights") or {})
            self.run.end_reason = events[-1].detail.get("reason")

    # ------------------------------------------------------------------ ports
    def _ports(self, plan: RolloutPlan) -> Ports:
        def set_weights(weights: dict[str, float]) -> Any:
            return serve_app.set_weights(plan.app, weights)

        def snapshot(since: float) -> Mapping[str, Mapping[str, Any]]:
            import ray

            # Any: Ray types ActorHandle.__getattr__ (the actor's methods) as Never.
            collector: Any = ray.get_actor(collector_name(plan.app), namespace=NAMESPACE)
            return ray.get(collector.snapshot.remote(since), timeout=30)

        def set_production(version: int, reason: str) -> int | None:
            assert plan.model is not None
            ev = self.registry.set_alias(plan.model, version, "production", reason=reason)
            if ev is None:
                return version
            return ev.old_version

        notifier = Notifier(plan.notify, source=f"rollout {plan.rollout_id}: ") if plan.notify else None

        def record(event: str, detail: dict[str, Any]) -> Any:
            out = self.store.record(plan.app, plan.rollout_id, event, detail)
            if event in _AUDITED:  # the controller's own decisions; start and abort: by whoever asked
                keep = {k: detail[k] for k in _AUDIT_KEYS if k in detail}
                self.meta.record_audit(_AUDITED[event], plan.app, {"rollout_id": plan.rollout_id, **keep})
                if notifier is not None:
                    notifier.notify(rollout_notification(plan, event, keep))
            return out

        set_process_principal(Principal(plan.started_by, source="delegated") if plan.started_by else None)
        return Ports(set_weights, snapshot, set_production, record)

    # ------------------------------------------------------------------ methods
    def ping(self) -> str:
        return "ok"

    def start(self, plan: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.run is not None and (self.run.state in ACTIVE or self.run._pending_stop is not None):
                raise RaypipeError(
                    f"rollout {self.run.plan.rollout_id} of app {self.app} is {self.run.state} "
                    f"(step {self.run.step_index + 1}); abort it first: raypipe rollout abort {self.app}"
                )
            p = RolloutPlan.model_validate(plan)
            run = RolloutRun(p, self._ports(p))
            self.run = run
            try:
                run.begin()
            except Exception as e:  # noqa: BLE001 - any port failure: recorded, then raised as the reason
                if run.state == "pending":
                    run.state = "failed"
                    run.ended_at = time.time()
                    run.end_reason = f"could not set the first step's weights: {e}"
                    try:
                        run.ports.record("failed", {"reason": run.end_reason})
                    except Exception:  # noqa: BLE001 - the original error matters more
                        pass
                raise RaypipeError(f"rollout of app {self.app} did not start: {e}") from None
            self._start_thread()
            return run.status()

    def status(self) -> dict[str, Any] | None:
        # A tick may hold the lock for as long as Serve takes to apply new weights: then
        # answer from the fields as they are (each is replaced whole, never half-written).
        locked = self.lock.acquire(timeout=2.0)
        try:
            if self.run is None:
                return None
            st = self.run.status()
            st["last_error"] = self._last_error
            return st
        finally:
            if locked:
                self.lock.release()

    def abort(self, reason: str = "aborted by the user") -> dict[str, Any]:
        with self.lock:
            if self.run is None:
                raise RaypipeError(f"no rollout of app {self.app} to abort")
            self.run.abort(reason)
            return self.run.status()

    # ------------------------------------------------------------------ the loop
    def _start_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._loop, name=f"rollout-{self.app}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                run = self.run
                every = tick_seconds(run.plan.interval_s) if run is not None else 1.0
                if run is None or (run.state not in ACTIVE and run._pending_stop is None):
                    return
                try:
                    run.tick()
                    self._last_error = None
                except Exception as e:  # noqa: BLE001 - a port failed: record once, retry next tick
                    self._error(str(e))
            self._stop.wait(every)

    def _error(self, message: str) -> None:
        if message == self._last_error:
            return
        self._last_error = message
        if self.run is not None:
            try:
                self.run.ports.record("error", {"error": message[:2000], "step_index": self.run.step_index})
            except Exception:  # noqa: BLE001 - the store itself failed; the status still shows it
                pass


def rollout_notification(plan: RolloutPlan, event: str, detail: Mapping[str, Any]) -> Notification:
    """``rollout_promoted`` or ``rollout_rolled_back``, from the controller's own decision."""
    what = "promoted" if event == "promoted" else "rolled back"
    text = f"raypipe: rollout {plan.rollout_id} of app {plan.app}: {plan.candidate} {what}"
    if detail.get("reason"):
        text += f": {detail['reason']}"
    info = {"app": plan.app, "rollout_id": plan.rollout_id, "model": plan.model, "baseline": plan.baseline}
    info |= {"candidate": plan.candidate, **detail}
    return Notification("rollout_promoted" if event == "promoted" else "rollout_rolled_back", text, info)


def find_controller(app: str) -> Any | None:
    return find_actor(controller_name(app))


def start_controller(app: str, db_path: str) -> Any:
    """The app's controller actor: detached, restartable, on the head node, no CPU.  A password
    written as it is in ``db_path`` goes to its environment, not into its arguments."""
    env = actor_env(db_path)
    return get_or_create(
        controller_name(app),
        RolloutController,
        (app, redact(db_path)),
        head=True,
        max_concurrency=8,
        runtime_env={"env_vars": env} if env else None,
    )
