"""Finding, stopping and reporting an app's closed loop."""

from __future__ import annotations

import time
from typing import Any

from raypipe._ray.actors import find_actor
from raypipe.exceptions import RaypipeError
from raypipe.loop.actor import loop_name, read_config, write_config
from raypipe.store.rollouts import LoopStore, RolloutStore


def find_loop(app: str) -> Any | None:
    return find_actor(loop_name(app))


def stop_loop(app: str, *, forget: bool = True) -> bool:
    """Stop the app's loop controller and a retraining run in flight (its driver records it
    ``stopped``); ``forget``: also drop its configuration.  False if it had none."""
    import ray

    handle = find_loop(app)
    if handle is not None:
        try:
            ray.get(handle.stop.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - it is killed next anyway
            pass
        ray.kill(handle, no_restart=True)
        deadline = time.monotonic() + 30
        while find_loop(app) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    had = read_config(app) is not None
    if forget:
        write_config(app, None)
    return handle is not None or had


def loop_status(app: str, meta: Any) -> dict[str, Any]:
    """The loop's live state (if its controller runs) and its timeline: loop events with the
    events of each cycle's rollout, oldest first."""
    import ray

    store = LoopStore(meta)
    events = [e.to_dict() for e in store.all_events(app)]
    if not events:
        raise RaypipeError(f"app {app!r} has no closed loop recorded in {meta.location}; deploy it with `retrain:`")
    live = None
    note = None
    handle = find_loop(app) if ray.is_initialized() else None
    if handle is not None:
        try:
            live = ray.get(handle.status.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - the record still answers
            note = f"the loop controller did not answer: {exc}"
    rollouts = RolloutStore(meta)
    timeline = [{"source": "loop", **e} for e in events]
    for e in events:
        if e["event"] == "canary_started":
            rid = e["detail"].get("rollout_id")
            timeline += [
                {"source": "rollout", "cycle_id": e["cycle_id"], **r.to_dict()} for r in rollouts.events(app, rid)
            ]
    timeline.sort(key=lambda e: (e["at"], e["source"] != "loop"))
    return {
        "app": app,
        "live": live,
        "note": note,
        "cycles": store.series(app),
        "timeline": timeline,
    }
