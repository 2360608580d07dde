"""The A/B report and the rollout commands on a connected Ray: what ``raypipe ab report``
and ``raypipe rollout start|status|abort`` do, given the metadata store.

Reads the app through the serving core (``raypipe.serve.app.status``: variants with
their versions and weights, the model name) and its metrics collector (the named
actor ``raypipe-serve-metrics-<app>``, ``snapshot(since)``); the rollout itself runs
in the controller actor of :mod:`raypipe.serve.rollout`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raypipe.exceptions import ModelNotFoundError, RaypipeError
from raypipe.serve import abstats
from raypipe.serve.rollout import (
    ACTIVE,
    NAMESPACE,
    RolloutPlan,
    RolloutSpec,
    controller_name,
    find_controller,
    metrics_actor_name,
    new_rollout_id,
    start_controller,
    status_from_events,
)
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry, parse_ref
from raypipe.store.rollouts import TERMINAL, RolloutStore

_LABEL = re.compile(r"^v?(\d+)$")


# --------------------------------------------------------------------------- the app, through the serving core


@dataclass(frozen=True)
class AppView:
    """What the A/B report and rollouts need of an app's status."""

    app: str
    model: str | None
    #: variant label (``v3``) -> weight (percent)
    weights: dict[str, float]
    url: str | None
    #: alias -> variant label, as the app saw them when deployed
    aliases: dict[str, str]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def app_view(app: str) -> AppView:
    """The app's variants and weights via ``raypipe.serve.app.status``; an unknown app is a RaypipeError."""
    try:
        from raypipe.serve import app as serve_app
    except ImportError as e:  # pragma: no cover - the serving core ships with raypipe
        raise RaypipeError(f"the serving core (raypipe.serve.app) is not available: {e}") from None
    st = serve_app.status(app)
    variants = _get(st, "variants") or {}
    items = variants.items() if isinstance(variants, Mapping) else ((_get(v, "label"), v) for v in variants)
    weights: dict[str, float] = {}
    for label, v in items:
        version = _get(v, "version")
        label = label or (f"v{version}" if version is not None else None)
        if label is None:
            continue
        weights[str(label)] = float(_get(v, "weight", 0.0) or 0.0)
    aliases = {str(k): str(v) for k, v in (_get(st, "aliases") or {}).items()}
    return AppView(app, _get(st, "model"), weights, _get(st, "url"), aliases)


def set_weights(app: str, weights: Mapping[str, float]) -> Any:
    from raypipe.serve import app as serve_app

    return serve_app.set_weights(app, dict(weights))


def collector(app: str) -> Any:
    import ray

    try:
        return ray.get_actor(metrics_actor_name(app), namespace=NAMESPACE)
    except ValueError:
        raise RaypipeError(
            f"app {app!r} has no metrics collector ({metrics_actor_name(app)} in namespace {NAMESPACE}); "
            "is it deployed (raypipe deploy)?"
        ) from None


def _ray_get(ref: Any, timeout: float = 60.0) -> Any:
    """``ray.get`` that turns a RaypipeError raised inside an actor back into a RaypipeError."""
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, RaypipeError):
            raise RaypipeError(str(cause)) from None
        raise


def production_variant(meta: MetadataStore | None, view: AppView) -> str | None:
    """The variant serving ``MODEL@production`` (the registry's alias now, else the app's
    record of it at deploy time), if that version is deployed."""
    label = None
    if meta is not None and view.model:
        try:
            label = f"v{ModelRegistry(meta).get(f'{view.model}@production').version}"
        except ModelNotFoundError:
            label = None
    if label is None:
        label = view.aliases.get("production")
    return label if label in view.weights else None


def resolve_variant(ref: str, view: AppView, meta: MetadataStore | None, what: str = "candidate") -> str:
    """``v4`` | ``4`` | ``MODEL:4`` | ``MODEL@ALIAS`` -> the variant label ``v4``, deployed in the app."""
    ref = ref.strip()
    m = _LABEL.match(ref)
    if m:
        label = f"v{int(m.group(1))}"
    else:
        name, version, alias = parse_ref(ref)
        if view.model and name != view.model:
            raise RaypipeError(f"{what} {ref!r}: app {view.app!r} serves model {view.model!r}, not {name!r}")
        if version is None:
            if meta is None:
                raise RaypipeError(f"{what} {ref!r}: resolving an alias needs the metadata store (--db)")
            version = ModelRegistry(meta).get(ref).version
        label = f"v{version}"
    if label not in view.weights:
        have = ", ".join(f"{k} ({w:g}%)" for k, w in view.weights.items()) or "none"
        raise RaypipeError(
            f"{what} {ref!r} ({label}) is not a variant of app {view.app!r} (variants: {have}); "
            "deploy it first (at weight 0)"
        )
    return label


# --------------------------------------------------------------------------- A/B report


def check_report_args(since_s: float | None, metric: str, min_samples: int, alpha: float) -> None:
    """The report's options, checked before Ray is touched."""
    if since_s is not None and not since_s > 0:
        raise RaypipeError(f"--since {since_s:g}: expected a number of seconds > 0")
    if metric not in ("auto", "conversion", "mean_outcome"):
        raise RaypipeError(f"--metric {metric!r}: expected auto, conversion or mean_outcome")
    try:
        abstats.check_settings(min_samples, alpha)
    except ValueError as e:
        raise RaypipeError(f"{e}") from None


def ab_report(
    app: str,
    meta: MetadataStore | None,
    *,
    since_s: float | None = None,
    control: str | None = None,
    metric: str = "auto",
    min_samples: int = abstats.DEFAULT_MIN_SAMPLES,
    alpha: float = abstats.DEFAULT_ALPHA,
) -> dict[str, Any]:
    """The app's A/B report as a JSON-able dict (see :func:`raypipe.serve.abstats.ab_report`)."""
    check_report_args(since_s, metric, min_samples, alpha)
    view = app_view(app)
    handle = collector(app)
    now = time.time()
    since = now - since_s if since_s else None
    snaps = _ray_get(handle.snapshot.remote(since))
    chosen = resolve_variant(control, view, meta, "control") if control else production_variant(meta, view)
    try:
        rep = abstats.ab_report(
            snaps, view.weights, control=chosen, metric=metric, min_samples=min_samples, alpha=alpha
        )
    except ValueError as e:
        raise RaypipeError(str(e)) from None
    return {
        "app": app,
        "model": view.model,
        "url": view.url,
        "since": since,
        "window_s": since_s,
        "generated_at": now,
        **rep.to_dict(),
    }


# --------------------------------------------------------------------------- rollouts


def rollout_start(spec: RolloutSpec, meta: MetadataStore) -> dict[str, Any]:
    """Resolve ``spec`` against the app and the registry, start the app's controller actor and
    its first step; returns the controller's status."""
    import ray

    view = app_view(spec.app)
    candidate = resolve_variant(spec.candidate, view, meta, "candidate")
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
            live = _ray_get(handle.status.remote(), timeout=30)
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
    )
    handle = start_controller(spec.app, meta.url)
    return _ray_get(handle.start.remote(plan.model_dump(mode="json")), timeout=120)


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
                live = _ray_get(handle.status.remote(), timeout=30)
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
    """Candidate weight 0 and an ``aborted`` event, by the controller (or by the driver if it is gone)."""
    reason = reason or "aborted by the user"
    handle = find_controller(app)
    if handle is not None:
        live = _ray_get(handle.status.remote(), timeout=30)
        if live and (live.get("state") in ACTIVE):
            return _ray_get(handle.abort.remote(reason), timeout=120)
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
