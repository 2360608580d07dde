"""The rollout commands on a connected Ray: what ``raypipe rollout start|status|abort`` do,
given the metadata store (the rollout itself runs in the controller actor of
:mod:`raypipe.serving.rollout.controller`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.serving.rollout.controller import (
    find_controller,
    start_controller,
)
from raypipe.serving.rollout.run import ACTIVE, status_from_events
from raypipe.serving.rollout.settings import RolloutPlan, RolloutSpec, new_rollout_id
from raypipe.serving.state import controller_name
from raypipe.serving.variants import app_view, production_variant, ray_get, resolve_variant, set_weights
from raypipe.store.metadata import MetadataStore, current_actor
from raypipe.store.platform import PlatformStore
from raypipe.store.rollouts import TERMINAL, RolloutStore

_log = logging.getLogger(__name__)


def rollout_start(
    spec: RolloutSpec, meta: MetadataStore, notify: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Resolve ``spec`` against the app and the registry, start the app's controller actor and
    its first step; returns the controller's status.  ``notify``: who hears of its promotion or
    rollback (default: the platform config's ``notify``)."""
    import ray

    view = app_view(spec.app)
    candidate = resolve_variant(spec.candidate, view, meta, "candidate")
    baseline: str | None
    if spec.baseline:
        baseline = resolve_variant(spec.baseline, view, meta, "baseline")
    else:
        baseline = production_variant(meta, view) or max(
            (k for k in view.weights if k != candidate), key=lambda k: view.weights[k], default=None
        )
        if baseline is None:
            raise RaypipeError(f"app {spec.app!r} has no variant besides {candidate} to compare it with")
    if baseline == candidate:
        raise RaypipeError(f"candidate and baseline are both {candidate}; roll out a different version")
    others = {k: w for k, w in view.weights.items() if w > 0 and k not in (baseline, candidate)}
    if others:
        listed = ", ".join(f"{k} ({w:g}%)" for k, w in others.items())
        raise RaypipeError(
            f"app {spec.app!r} also sends traffic to {listed}; a rollout splits between {baseline} and {candidate} "
            "only: set those weights to 0 first"
        )
    handle = find_controller(spec.app)
    if handle is not None:
        try:
            live = ray_get(handle.status.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - a dead or broken controller is replaced below
            live = None
        if live and live.get("state") in ACTIVE:
            raise RaypipeError(
                f"rollout {live['rollout_id']} of app {spec.app!r} is {live['state']} (step {live['step']}, "
                f"{live['candidate']} at {live['percent']:g}%); abort it first: raypipe rollout abort {spec.app}"
            )
        ray.kill(handle, no_restart=True)
        _wait_gone(spec.app)
    plan = RolloutPlan(
        rollout_id=new_rollout_id(spec.app),
        app=spec.app,
        model=view.model,
        baseline=baseline,
        candidate=candidate,
        steps=spec.steps,
        interval_s=spec.interval_s,
        guardrails=spec.guardrails,
        spec=spec.model_dump(mode="json"),
        started_by=current_actor(),
        notify=[dict(n) for n in notify] if notify is not None else platform_notify(meta),
    )
    handle = start_controller(spec.app, meta.url)
    st: dict[str, Any] = ray_get(handle.start.remote(plan.model_dump(mode="json")), timeout=120)
    detail = {"rollout_id": plan.rollout_id, "baseline": baseline, "candidate": candidate, "steps": plan.steps}
    meta.record_audit("rollout.start", spec.app, detail)
    return st


def platform_notify(meta: MetadataStore) -> list[dict[str, Any]]:
    """The platform config's ``notify`` entries (the admins' default), as JSON; none when the
    store cannot say (notifications never stop what they report on)."""
    try:
        stored = PlatformStore(meta).latest()
    except Exception as e:  # noqa: BLE001 - e.g. a store of an older schema
        _log.warning("raypipe: the platform config's notify not read: %s", e)
        return []
    return [s.model_dump(mode="json") for s in stored.config.notify] if stored is not None else []


def _wait_gone(app: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while find_controller(app) is not None:
        if time.monotonic() > deadline:
            raise RaypipeError(f"the old rollout controller {controller_name(app)} did not exit")
        time.sleep(0.1)


def _state_from_events(events: list[Any]) -> str:
    st = status_from_events([e.to_dict() for e in events])
    return st["state"] if st else "unknown"


def rollout_status(app: str, meta: MetadataStore, *, live_ok: bool = True) -> dict[str, Any]:
    """The app's latest rollout: the controller's live status (if it runs) and the recorded events."""
    import ray

    store = RolloutStore(meta)
    live = None
    note = None
    if live_ok and ray.is_initialized():
        handle = find_controller(app)
        if handle is not None:
            try:
                live = ray_get(handle.status.remote(), timeout=30)
            except Exception as e:  # noqa: BLE001 - the record still answers
                note = f"the rollout controller did not answer: {e}"
    rid = (live or {}).get("rollout_id") or store.latest_rollout_id(app)
    if rid is None:
        raise RaypipeError(
            f"no rollout of app {app!r} is recorded in {meta.location}; start one: raypipe rollout start {app} --candidate vN"
        )
    events = store.events(app, rid)
    state = live["state"] if live else (_state_from_events(events) if events else "unknown")
    if live is None and state not in TERMINAL and note is None:
        note = "no rollout controller is running for this app (the cluster restarted?); abort it to reset weights"
    return {
        "app": app,
        "rollout_id": rid,
        "state": state,
        "live": live,
        "events": [e.to_dict() for e in events],
        "rollouts": store.rollouts(app),
        "note": note,
    }


def rollout_abort(app: str, meta: MetadataStore, reason: str = "") -> dict[str, Any]:
    """Candidate weight 0 and an ``aborted`` event, by the controller (or by the driver if it
    is gone); audited ``rollout.abort``."""
    reason = reason or "aborted by the user"
    st = _abort(app, meta, reason)
    meta.record_audit("rollout.abort", app, {"rollout_id": st.get("rollout_id"), "reason": reason})
    return st


def _abort(app: str, meta: MetadataStore, reason: str) -> dict[str, Any]:
    handle = find_controller(app)
    if handle is not None:
        live = ray_get(handle.status.remote(), timeout=30)
        if live and (live.get("state") in ACTIVE):
            out: dict[str, Any] = ray_get(handle.abort.remote(reason), timeout=120)
            return out
    store = RolloutStore(meta)
    rid = store.latest_rollout_id(app)
    events = store.events(app, rid) if rid else []
    if not events or events[-1].event in TERMINAL:
        last = f" (the last one, {rid}, is {events[-1].event})" if events else ""
        raise RaypipeError(f"no rollout of app {app!r} is running{last}")
    plan = RolloutPlan.model_validate(events[0].detail["plan"])
    weights = {plan.baseline: 100.0, plan.candidate: 0.0}
    set_weights(app, weights)
    store.record(
        app,
        plan.rollout_id,
        "aborted",
        {"reason": reason, "weights": weights, "note": "no controller was running: aborted by the driver"},
    )
    return {"rollout_id": plan.rollout_id, "app": app, "state": "aborted", "weights": weights, "end_reason": reason}
