"""Served apps: deploy, split, status, shutdown; A/B reports, canary rollouts, drift monitors and closed loops."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe import identity
from raypipe.api.admin import _metadata_or_none, acting, acting_in
from raypipe.api.pipelines import load, metadata_url, open_metadata
from raypipe.exceptions import RaypipeError
from raypipe.loop import arming
from raypipe.loop import status as loops
from raypipe.loop.core import LOOP_SERIES
from raypipe.loop.status import stop_loop
from raypipe.monitoring import monitor as monitors
from raypipe.runner.ray_session import connect_existing
from raypipe.serving import app as serving
from raypipe.serving.abtest import report as ab_reports
from raypipe.serving.app import AppStatus
from raypipe.serving.rollout import ops as rollout_ops
from raypipe.serving.rollout.settings import build_spec, load_rollout_file
from raypipe.serving.spec import ServeSpec, load_spec, read_yaml
from raypipe.store.artifacts import resolve_root
from raypipe.store.metadata import MetadataStore, resolve_db
from raypipe.store.rollouts import LoopStore

# --------------------------------------------------------------------------- A/B reports and canary rollouts


def _serve_session(address: str | None) -> None:
    """Join the running cluster whose Serve apps are asked (flag, $RAY_ADDRESS, or ``ray start``'s)."""

    connect_existing(address)


def ab_report(
    app: str,
    *,
    since_s: float | None = None,
    control: str | None = None,
    metric: str = "auto",
    min_samples: int = 100,
    alpha: float = 0.05,
    db: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """The A/B statistics of a deployed app: per-variant counts, rates and latency, each variant
    against the control (default: the ``production`` variant, else the lowest version), the
    sample-ratio-mismatch check; over the last ``since_s`` seconds (default: everything)."""
    ab_reports.check_report_args(since_s, metric, min_samples, alpha)
    _serve_session(address)
    meta = _metadata_or_none(db)
    try:
        return ab_reports.ab_report(
            app, meta, since_s=since_s, control=control, metric=metric, min_samples=min_samples, alpha=alpha
        )
    finally:
        if meta is not None:
            meta.close()


def rollout_spec(
    app: str,
    *,
    candidate: str | None = None,
    baseline: str | None = None,
    steps: Sequence[float] | None = None,
    interval_s: float | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Any:
    """A validated :class:`~raypipe.serving.rollout.controller.RolloutSpec` from a rollout YAML file and/or flags
    (flags win); checked before Ray is touched."""

    given = {
        "candidate": candidate,
        "baseline": baseline,
        "steps": None if steps is None else list(steps),
        "interval_s": interval_s,
    }
    flags = {k: v for k, v in given.items() if v is not None}
    if config is not None:
        spec = load_rollout_file(config, flags)
        if spec.app != app:
            raise RaypipeError(f"{config}: rolls out app {spec.app!r}, but the command names app {app!r}")
        return spec
    if candidate is None:
        raise RaypipeError("rollout start: give --candidate (e.g. v4 or digits@candidate) or --config FILE")
    return build_spec({"app": app, **flags}, where="rollout start")


def rollout_start(spec: Any, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Start a canary rollout (a detached controller actor: it goes on without this driver; it
    acts for the caller)."""
    with acting_in(db) as meta:
        _serve_session(address)
        return rollout_ops.rollout_start(spec, meta)


def rollout_status(app: str, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The app's latest rollout: live state (step, weights, last decision) and its recorded events."""
    meta = open_metadata(db)
    try:
        live_ok = True
        try:
            _serve_session(address)
        except RaypipeError:
            live_ok = False  # no cluster to ask: the record alone
        return rollout_ops.rollout_status(app, meta, live_ok=live_ok)
    finally:
        meta.close()


def rollout_abort(app: str, *, reason: str = "", db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Stop the app's rollout: candidate weight 0, an ``aborted`` event."""
    with acting_in(db) as meta:
        _serve_session(address)
        return rollout_ops.rollout_abort(app, meta, reason)


# --------------------------------------------------------------------------- drift monitoring


def monitor_status(app: str, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The drift monitor of a served app (``raypipe-monitor-<app>``): per-feature statistics and
    thresholds, the last windows per variant, events, the debouncer and memory; an app without a
    monitor is a RaypipeError."""

    connect_existing(address)
    st = monitors.monitor_status(app)
    try:
        meta = open_metadata(db)
    except RaypipeError:
        return st  # no store: the monitor's own view
    try:
        loop = loops.loop_status(app, meta)
        st["loop"] = {"state": loop.get("state"), "cycles": len(loop.get("cycles") or [])}
    except RaypipeError:
        st["loop"] = None  # no closed loop recorded for the app
    finally:
        meta.close()
    return st


def loop_status(app: str, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The app's closed loop: live state (if its controller runs) and the timeline of its cycles
    (drift, retraining run, gate, canary steps, promotion or rollback), from the metadata store."""
    meta = open_metadata(db)
    try:
        try:
            _serve_session(address)
        except RaypipeError:
            pass  # no cluster to ask: the record alone
        return loops.loop_status(app, meta)
    finally:
        meta.close()


def loop_stop(app: str, *, db: str | None = None, address: str | None = None) -> bool:
    """Disarm the app's closed loop and stop a retraining run in flight (its driver records it
    ``stopped``); the stop is recorded in the loop's timeline in the metadata store."""

    with acting(db) as (meta, who):
        connect_existing(address)
        if not stop_loop(app):
            raise RaypipeError(f"app {app!r} has no closed loop running")
        if meta is None:
            return True  # no store to record it in: the loop is stopped all the same
        LoopStore(meta).record(app, LOOP_SERIES, "stopped", {"by": "raypipe loop stop", "actor": who.name})
        meta.record_audit("loop.stop", app)
    return True


# ---------------------------------------------------------------------- serving
def _connect_serving(address: str | None) -> None:
    try:
        connect_existing(address)
    except RaypipeError as e:
        raise RaypipeError(
            f"{e}; serving needs a Ray cluster that outlives this command: start one with "
            "`ray start --head` and pass --address (or set RAY_ADDRESS)"
        ) from None


def deploy(source: str | os.PathLike[str], *, db: str | None = None, address: str | None = None) -> list[AppStatus]:
    """Deploy what ``source`` describes: an app spec YAML (``app``, ``model``, ``variants``...,
    see :class:`raypipe.serving.spec.ServeSpec`) or a pipeline YAML, whose ``deploy`` stages are
    deployed with the pipeline's metadata store (the other stages are not run).  Joins a
    running Ray cluster (``address``, the pipeline's ``ray.address``, ``$RAY_ADDRESS`` or the
    one ``ray start`` left on this machine); returns each app's status once it serves."""

    data = read_yaml(source)
    specs: list[ServeSpec]
    if "stages" in data:
        plan = load(source)
        specs = [ps.kind.params for ps in plan.stages.values() if ps.spec.kind == "deploy"]  # type: ignore[misc]
        if not specs:
            raise RaypipeError(
                f"{source}: pipeline {plan.config.name!r} has no `deploy` stage; add one or give an app spec "
                "(app, model, variants)"
            )
        db = metadata_url(plan.config, db)
        address = address or plan.config.ray.address
        pipeline: dict[str, Any] | None = {
            **plan.config.model_dump(mode="json"),
            "storage": resolve_root(plan.config.storage),
        }
    else:
        specs = [load_spec(source)]
        pipeline = None
    meta = MetadataStore(resolve_db(db))
    try:
        with identity.acting_for(meta):  # who deploys (before Ray): the loop it arms acts for them
            _connect_serving(address)
            return [arming.deploy(spec, db=db, pipeline=pipeline) for spec in specs]
    finally:
        meta.close()


def split(
    app: str, weights: Mapping[str, float] | Sequence[str], *, address: str | None = None, db: str | None = None
) -> AppStatus:
    """Change a served app's traffic split live (``["v3=50", "v4=50"]`` or ``{"v3": 50, ...}``);
    audited ``serve.split`` in the metadata store (``db``), when there is one."""

    with acting(db) as (meta, _):
        _connect_serving(address)
        st = serving.set_weights(app, weights)
        if meta is not None:
            meta.record_audit("serve.split", app, {"weights": dict(st.weights)})
        return st


def serve_status(app: str | None = None, *, address: str | None = None) -> list[AppStatus]:
    """The status of one served app (or of every app raypipe deployed on the cluster)."""

    _connect_serving(address)
    return [serving.status(name) for name in ([app] if app else serving.apps())]


def serve_shutdown(app: str, *, address: str | None = None) -> None:
    """Stop a served app: its Serve deployments, its resource reservation and its metrics."""

    _connect_serving(address)
    arming.shutdown(app)
