"""The drift monitor of a served app as a Ray actor: one named detached actor per app
(``raypipe-monitor-<app>`` in raypipe's namespace) that the serving ingress logs sampled
rows and predictions into, and that tests each closed window against the training data's
profile.

* :class:`DriftMonitor` is the actor: :class:`~raypipe.monitoring.monitor_core.MonitorCore`
  (the whole monitor without Ray) plus metrics through ``ray.util.metrics``
  (:class:`RayMetrics`, exported with Ray's other metrics, e.g. to Prometheus).  ``log``
  never raises (the ingress calls it fire-and-forget): a bad batch is counted and its
  error kept in ``status()["errors"]``.
* :func:`start_monitor`, :func:`stop_monitor`, :func:`get_monitor`, :func:`monitor_status`:
  get-or-create, kill, look up, read.  The configuration (profile, spec, model, per-variant
  models) lives in Ray's KV (:func:`write_config`, :func:`read_config`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe._json import json_safe
from raypipe._ray import kv
from raypipe._ray.actors import NAMESPACE, find_actor, get_or_create, kill_actor
from raypipe.exceptions import RaypipeError
from raypipe.monitoring.detector import DriftDetector
from raypipe.monitoring.monitor_core import PREDICTION_TAG, MetricsSink, MonitorCore, NoMetrics
from raypipe.monitoring.reference import trimmed_profile
from raypipe.monitoring.results import PerformanceResult, WindowResult
from raypipe.monitoring.spec import MonitorSpec
from raypipe.notify import Notification, Notifier

__all__ = [
    "DriftMonitor",
    "RayMetrics",
    "get_monitor",
    "monitor_name",
    "monitor_status",
    "read_config",
    "start_monitor",
    "stop_monitor",
    "write_config",
]

MONITOR_PREFIX = "raypipe-monitor-"


def monitor_name(app: str) -> str:
    return MONITOR_PREFIX + app


# --------------------------------------------------------------------------- metrics


class RayMetrics:
    """The monitor's metrics through ``ray.util.metrics`` (created in the actor)."""

    def __init__(self, app: str) -> None:
        from ray.util import metrics

        self.app = app
        feat = ("app", "variant", "feature", "method")
        self.statistic = metrics.Gauge(
            "raypipe_drift_statistic", "Drift statistic of the last window (KS D, chi-square or PSI)", feat
        )
        self.p_value = metrics.Gauge("raypipe_drift_p_value", "p-value of the last window's test", feat)
        self.psi = metrics.Gauge("raypipe_drift_psi", "PSI of the last window", feat)
        self.drifted = metrics.Gauge(
            "raypipe_drift_feature_drifted", "1 if the feature drifted in the last window", feat
        )
        self.share = metrics.Gauge(
            "raypipe_drift_share", "Share of tested features that drifted in the last window", ("app", "variant")
        )
        self.windows = metrics.Counter(
            "raypipe_drift_windows_total", "Closed drift windows", ("app", "variant", "dataset_drifted")
        )
        self.events = metrics.Counter(
            "raypipe_drift_events_total", "Drift events (after debouncing)", ("app", "variant", "kind", "trigger")
        )
        self.rows_total = metrics.Counter("raypipe_drift_rows_total", "Rows logged after sampling", ("app", "variant"))
        self.perf = metrics.Gauge(
            "raypipe_drift_performance", "Metric of the last labelled window", ("app", "variant", "metric")
        )

    def rows(self, variant: str, n: int) -> None:
        if n:
            self.rows_total.inc(n, tags={"app": self.app, "variant": variant})

    def window(self, result: WindowResult) -> None:
        base = {"app": self.app, "variant": result.variant}
        items = list(result.features.items())
        if result.prediction is not None:
            items.append((PREDICTION_TAG, result.prediction))
        for name, r in items:
            tags = {**base, "feature": name, "method": r.method}
            if r.statistic is not None and math.isfinite(r.statistic):
                self.statistic.set(r.statistic, tags=tags)
            if r.p_value is not None:
                self.p_value.set(r.p_value, tags=tags)
            if r.psi is not None:
                self.psi.set(r.psi, tags=tags)
            if r.drifted is not None:
                self.drifted.set(float(r.drifted), tags=tags)
        if result.drift_share is not None:
            self.share.set(result.drift_share, tags=base)
        self.windows.inc(1, tags={**base, "dataset_drifted": str(result.dataset_drifted).lower()})

    def performance(self, result: PerformanceResult) -> None:
        if result.value is not None:
            self.perf.set(result.value, tags={"app": self.app, "variant": result.variant, "metric": result.metric})

    def event(self, event: Mapping[str, Any]) -> None:
        self.events.inc(
            1,
            tags={
                "app": self.app,
                "variant": str(event.get("variant")),
                "kind": str(event.get("kind")),
                "trigger": str(bool(event.get("trigger"))).lower(),
            },
        )


class NotifyingSink:
    """The monitor's metrics sink that also sends each debounced drift event to the app's
    ``notify`` receivers (``drift_event``; in the background, never slowing the monitor)."""

    def __init__(self, app: str, inner: MetricsSink, notifier: Notifier) -> None:
        self.app, self.inner, self.notifier = app, inner, notifier

    def rows(self, variant: str, n: int) -> None:
        self.inner.rows(variant, n)

    def window(self, result: WindowResult) -> None:
        self.inner.window(result)

    def performance(self, result: PerformanceResult) -> None:
        self.inner.performance(result)

    def event(self, event: Mapping[str, Any]) -> None:
        self.inner.event(event)
        detail = {"app": self.app, **json_safe(dict(event))}
        features = ", ".join(str(f) for f in event.get("drifted_features") or []) or str(event.get("kind"))
        text = f"raypipe: drift on app {self.app}, variant {event.get('variant')} ({event.get('kind')}): {features}"
        self.notifier.notify(Notification("drift_event", text, detail))


# --------------------------------------------------------------------------- the actor


class DriftMonitor:
    """The actor (see :func:`start_monitor`): :class:`MonitorCore` plus Ray metrics.
    Methods run one at a time (a plain actor), so no locks.  Its configuration (profile,
    spec, model, per-variant models) lives in Ray's internal KV, not in constructor
    arguments, so a restarted actor (``max_restarts=-1``) finds it after its creator is gone;
    the windows and events of the dead instance are lost."""

    def __init__(self, app: str) -> None:
        config = read_config(app)
        if config is None:
            raise RuntimeError(f"no monitor configuration for app {app!r} in Ray's KV ({_kv_key(app)!r})")
        try:
            sink: MetricsSink = RayMetrics(app)
        except Exception:  # noqa: BLE001 - metrics are optional
            sink = NoMetrics()
        if config.get("notify"):
            sink = NotifyingSink(app, sink, Notifier(config["notify"], source=f"app {app}: "))
        self.app = app
        self.config = config
        self.core = MonitorCore(
            app,
            config["profile"],
            config.get("spec"),
            config.get("model_meta"),
            reference_predictions=config.get("reference_predictions"),
            reference_metrics=config.get("reference_metrics"),
            sink=sink,
        )
        for variant, m in (config.get("variants") or {}).items():
            self.core.set_model(
                variant,
                m["model_meta"],
                reference_predictions=m.get("reference_predictions"),
                reference_metrics=m.get("reference_metrics"),
            )

    def ping(self) -> str:
        return "ok"

    def log(
        self,
        variant: str,
        rows: list[dict[str, Any]] | list[list[Any]],
        predictions: list[Any] | None = None,
        request_ids: list[str] | None = None,
        columns: list[str] | None = None,
        sampled: bool = False,
    ) -> int:
        """Fire-and-forget from the ingress: never raises; a bad batch is counted (-1).
        ``sampled``: the ingress sampled the rows already (they are all kept)."""
        try:
            return self.core.log(variant, rows, predictions, request_ids, columns, sampled)
        except Exception as e:  # noqa: BLE001
            self.core.counters["rejected_batches"] += 1
            self.core.last_error = f"log({variant!r}, {len(rows) if hasattr(rows, '__len__') else '?'} rows): {e}"
            return -1

    def label(self, request_id: str, label: Any, sampled: bool | None = None) -> bool:
        return self.core.label(request_id, label, sampled)

    def labels(self, items: list[tuple[str, Any]]) -> int:
        return self.core.labels(items)

    def set_model(
        self,
        variant: str,
        model_meta: dict[str, Any],
        reference_predictions: list[Any] | None = None,
        reference_metrics: dict[str, Any] | None = None,
    ) -> None:
        """``variant`` serves another model than the app's default (kept across restarts)."""
        self.core.set_model(
            variant, model_meta, reference_predictions=reference_predictions, reference_metrics=reference_metrics
        )
        self.config.setdefault("variants", {})[variant] = {
            "model_meta": model_meta,
            "reference_predictions": reference_predictions,
            "reference_metrics": reference_metrics,
        }
        write_config(self.app, self.config)

    def set_reference(
        self,
        profile: dict[str, Any],
        model_meta: dict[str, Any] | None = None,
        reference_predictions: list[Any] | None = None,
        reference_metrics: dict[str, Any] | None = None,
        retrained: bool = True,
        reference_id: str | None = None,
    ) -> dict[str, Any]:
        """Test against a new model's training profile from now on (kept across restarts)."""
        profile = trimmed_profile(profile, self.core.detector.features, model_meta)
        self.core.set_reference(
            profile,
            model_meta,
            reference_predictions=reference_predictions,
            reference_metrics=reference_metrics,
            retrained=retrained,
        )
        self.config.update(
            profile=profile,
            model_meta=model_meta,
            reference_predictions=reference_predictions,
            reference_metrics=reference_metrics,
            reference_id=reference_id,
            variants={},
        )
        write_config(self.app, self.config)
        return json_safe(self.core.debouncer.state(self.core.clock()))

    def flush(self, variant: str | None = None, force: bool = False) -> list[dict[str, Any]]:
        return json_safe(self.core.flush(variant, force=force))

    def status(self, recent: int = 20) -> dict[str, Any]:
        return self.core.status(recent)

    def events(self, since_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return json_safe(self.core.events_since(since_id, limit))

    def poll(self, since_id: int = 0, limit: int = 1000) -> dict[str, Any]:
        """Events after ``since_id`` and when this instance started (ids start again at 1 after
        a restart): the closed loop's poll."""
        return {"started_at": self.core.started_at, "events": json_safe(self.core.events_since(since_id, limit))}

    def windows(self, variant: str | None = None, since_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return json_safe(self.core.windows(variant, since_id, limit))

    def memory(self) -> dict[str, Any]:
        return self.core.memory()

    def begin_retraining(self, event_id: int | None = None, note: str = "") -> dict[str, Any]:
        return json_safe(self.core.begin_retraining(event_id, note))

    def end_retraining(self, ok: bool = True) -> dict[str, Any]:
        return json_safe(self.core.end_retraining(ok))


def start_monitor(
    app: str,
    profile: Mapping[str, Any],
    model_meta: Mapping[str, Any] | None = None,
    spec: MonitorSpec | Mapping[str, Any] | None = None,
    *,
    reference_predictions: Sequence[Any] | None = None,
    reference_metrics: Mapping[str, Any] | None = None,
    replace: bool = False,
    reference_id: str | None = None,
    notify: Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    """Get or create the app's monitor actor (detached, restartable, no CPU).  The spec,
    profile and model are checked here first, so mistakes raise on the caller.  An
    existing monitor is returned as it is, unless ``replace`` (a new spec): then it is
    killed and started again (its windows and events are lost).  ``reference_id`` names
    the model and profile (e.g. ``digits:3/<profile sha256>``): an existing monitor with
    another one switches to this reference in place (events kept).  ``notify``: the receivers
    of its drift events (``notify:`` entries, secrets as references; kept in its KV config)."""
    import ray

    try:
        spec_obj = spec if isinstance(spec, MonitorSpec) else MonitorSpec.model_validate(dict(spec or {}))
        det = DriftDetector(
            profile,
            spec_obj,
            model_meta,
            reference_predictions=reference_predictions,
            reference_metrics=reference_metrics,
        )
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise RaypipeError(f"drift monitor of app {app!r}: {e}") from None
    old = get_monitor(app)
    if old is not None:
        if not replace:
            current = (read_config(app) or {}).get("reference_id")
            if reference_id is not None and current != reference_id:
                ray.get(
                    old.set_reference.remote(
                        dict(profile),
                        dict(model_meta) if model_meta is not None else None,
                        list(reference_predictions) if reference_predictions is not None else None,
                        dict(reference_metrics) if reference_metrics is not None else None,
                        False,
                        reference_id,
                    )
                )
            return old
        kill_actor(monitor_name(app))
        _wait_gone(app)
    write_config(
        app,
        {
            "profile": trimmed_profile(profile, det.features, model_meta),
            "spec": spec_obj.model_dump(mode="json"),
            "model_meta": dict(model_meta) if model_meta is not None else None,
            "reference_predictions": list(reference_predictions) if reference_predictions is not None else None,
            "reference_metrics": dict(reference_metrics) if reference_metrics is not None else None,
            "reference_id": reference_id,
            "variants": {},
            "notify": [dict(n) for n in notify or ()],
        },
    )
    return get_or_create(monitor_name(app), DriftMonitor, (app,))


def stop_monitor(app: str) -> bool:
    """Kill the app's monitor and forget its configuration; False if it had none."""
    killed = kill_actor(monitor_name(app))
    if killed:
        _wait_gone(app)
    had = read_config(app) is not None
    kv.delete(_kv_key(app))
    return killed or had


def _kv_key(app: str) -> bytes:
    return (MONITOR_PREFIX + "config:" + app).encode()


def write_config(app: str, config: Mapping[str, Any]) -> None:
    """The monitor's configuration into Ray's KV (JSON)."""
    kv.put_json(_kv_key(app), json_safe(config))


def read_config(app: str) -> dict[str, Any] | None:
    return kv.get_json(_kv_key(app))


def _wait_gone(app: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while get_monitor(app) is not None:
        if time.monotonic() > deadline:
            raise RaypipeError(f"the old monitor of app {app!r} did not go away in {timeout_s:g} s")
        time.sleep(0.05)


def get_monitor(app: str) -> Any | None:
    """The app's monitor actor, or None."""
    return find_actor(monitor_name(app))


def monitor_status(app: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """``status()`` of the app's monitor (Ray must be connected); an app without one is a RaypipeError."""
    import ray

    handle = get_monitor(app)
    if handle is None:
        raise RaypipeError(
            f"app {app!r} has no drift monitor ({monitor_name(app)} in namespace {NAMESPACE}); "
            "is it deployed with monitoring on?"
        )
    try:
        return ray.get(handle.status.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RaypipeError(f"the drift monitor of app {app!r} did not answer in {timeout_s:g} s") from None
