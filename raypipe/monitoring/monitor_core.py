"""The drift monitor of one app without Ray (unit-testable, clock injected): :class:`MonitorCore`.

Per-variant window buffers (fixed-size arrays, a reservoir past ``reservoir_size``),
windows closed by row count and/or age, the last ``history_windows`` results per variant,
a bounded request-id map for true labels arriving later (the ``label`` of ``/feedback``),
performance windows as running sums, the debouncer, and a bounded event history with
increasing ids (``events(since_id)`` is the poll API for retraining).  Metrics go to a
:class:`MetricsSink` (the actor's is Ray's, :class:`raypipe.monitoring.monitor.RayMetrics`).

Memory is bounded by the spec alone: ``max_variants`` x (window buffer of
``min(window_rows, reservoir_size)`` rows + ``history_windows`` results) +
``max_events`` events + ``max_pending_labels`` request ids (each with its variant and
reduced prediction: a class label or a number, never the row).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from raypipe._json import json_safe
from raypipe.models.classes import match_class, prediction_value
from raypipe.monitoring.debounce import DebounceDecision, Debouncer
from raypipe.monitoring.detector import DriftDetector
from raypipe.monitoring.results import FeatureResult, PerformanceResult, WindowResult
from raypipe.monitoring.sampling import keep_request
from raypipe.monitoring.spec import MonitorSpec
from raypipe.monitoring.windows import PerformanceWindow, WindowBuffer

__all__ = ["PREDICTION_TAG", "MetricsSink", "MonitorCore", "NoMetrics"]

#: The ``feature`` tag of the prediction-drift metrics.
PREDICTION_TAG = "__prediction__"

# --------------------------------------------------------------------------- metrics sink


class MetricsSink(Protocol):
    def rows(self, variant: str, n: int) -> None: ...
    def window(self, result: WindowResult) -> None: ...
    def performance(self, result: PerformanceResult) -> None: ...
    def event(self, event: Mapping[str, Any]) -> None: ...


class NoMetrics:
    """Metrics dropped (the core without an actor)."""

    def rows(self, variant: str, n: int) -> None:
        pass

    def window(self, result: WindowResult) -> None:
        pass

    def performance(self, result: PerformanceResult) -> None:
        pass

    def event(self, event: Mapping[str, Any]) -> None:
        pass


# --------------------------------------------------------------------------- the core


@dataclass
class _Pending:
    variant: str
    prediction: Any
    at: float


@dataclass
class _Variant:
    name: str
    buffer: WindowBuffer
    results: deque[WindowResult]
    perf_results: deque[PerformanceResult]
    perf: PerformanceWindow = field(default_factory=PerformanceWindow)
    logged: int = 0
    sampled: int = 0
    windows: int = 0
    perf_windows: int = 0
    #: Labels matched to this variant's logged predictions (every performance window).
    labels: int = 0
    last_seen: float = 0.0


class MonitorCore:
    """The monitor of one app (no Ray): see the module docstring."""

    def __init__(
        self,
        app: str,
        profile: Mapping[str, Any],
        spec: MonitorSpec | Mapping[str, Any] | None = None,
        model_meta: Mapping[str, Any] | None = None,
        *,
        reference_predictions: Sequence[Any] | None = None,
        reference_metrics: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        sink: MetricsSink | None = None,
    ) -> None:
        self.app = app
        self.spec = spec if isinstance(spec, MonitorSpec) else MonitorSpec.model_validate(dict(spec or {}))
        self.profile = profile
        self.clock = clock
        self.sink: MetricsSink = sink or NoMetrics()
        self.detector = DriftDetector(
            profile,
            self.spec,
            model_meta,
            reference_predictions=reference_predictions,
            reference_metrics=reference_metrics,
        )
        #: Variants serving another model than ``model_meta`` (see :meth:`set_model`).
        self.detectors: dict[str, DriftDetector] = {}
        self.variants: OrderedDict[str, _Variant] = OrderedDict()
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.events: deque[dict[str, Any]] = deque(maxlen=self.spec.max_events)
        self.debouncer = Debouncer(self.spec.consecutive, self.spec.reset_windows, self.spec.in_flight_timeout_s)
        self.next_window_id = 1
        #: Labelled (performance) windows are numbered on their own.
        self.next_perf_window_id = 1
        self.next_event_id = 1
        self.rng = np.random.default_rng(self.spec.seed)
        self.started_at = clock()
        self.counters = {
            "batches": 0,
            "rows_offered": 0,
            "rows_sampled": 0,
            "rejected_batches": 0,
            "variants_evicted": 0,
            "labels_matched": 0,
            "labels_not_sampled": 0,
            "labels_unknown": 0,
            "labels_unscorable": 0,
            "labels_outside_classes": 0,
            "pending_evicted": 0,
        }
        self.last_error: str | None = None

    # ------------------------------------------------------------------ variants
    def _detector(self, variant: str) -> DriftDetector:
        return self.detectors.get(variant, self.detector)

    def set_model(
        self,
        variant: str,
        model_meta: Mapping[str, Any],
        *,
        reference_predictions: Sequence[Any] | None = None,
        reference_metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """``variant`` serves another model (its classes, label and metrics): prediction and
        performance drift of that variant use it.  Features stay those of the spec/profile."""
        spec = self.spec
        if spec.features is None:
            spec = spec.model_copy(update={"features": list(self.detector.features)})
        self.detectors[variant] = DriftDetector(
            self.profile,
            spec,
            model_meta,
            reference_predictions=reference_predictions,
            reference_metrics=reference_metrics,
        )

    def _variant(self, name: str, now: float) -> _Variant:
        v = self.variants.get(name)
        if v is not None:
            self.variants.move_to_end(name)
            v.last_seen = now
            return v
        if len(self.variants) >= self.spec.max_variants:
            self.variants.popitem(last=False)  # the least recently logged
            self.counters["variants_evicted"] += 1
        v = _Variant(
            name=name,
            buffer=self._new_buffer(name),
            results=deque(maxlen=self.spec.history_windows),
            perf_results=deque(maxlen=self.spec.history_windows),
            last_seen=now,
        )
        self.variants[name] = v
        return v

    def _new_buffer(self, name: str) -> WindowBuffer:
        det = self._detector(name)
        numeric = [f for f in det.features if det.refs[f].kind == "numeric"]
        categorical = [f for f in det.features if det.refs[f].kind == "categorical"]
        s = self.spec
        cap = min(s.window_rows, s.reservoir_size) if s.window_rows is not None else s.reservoir_size
        seed = [s.seed & 0xFFFFFFFF, len(self.variants), self.next_window_id]
        days = [f for f in numeric if det.refs[f].encoding == "days"]
        return WindowBuffer(
            numeric, categorical, cap, seed=int(np.random.SeedSequence(seed).generate_state(1)[0]), days=days
        )

    # ------------------------------------------------------------------ logging
    def log(
        self,
        variant: str,
        rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
        predictions: Sequence[Any] | None = None,
        request_ids: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        sampled: bool = False,
    ) -> int:
        """Offer served rows of ``variant`` with their predictions and request ids (both
        optional, aligned with ``rows``).  A row is a dict of feature values, or a list of
        values named by ``columns`` (the ingress's rows in the model's feature order).  Rows are sampled at
        ``sample_rate``: by :func:`~raypipe.monitoring.sampling.keep_request` of the request id when
        given, else at random; ``sampled``: the caller sampled them already at ``sample_rate``
        (the serving router, by a keyed hash of the ids it issued), so every row is kept.
        Rows of one multi-row request share its id: kept or dropped together, and not matched
        to labels later.  Returns the rows kept; raises ValueError for a malformed batch."""
        if not isinstance(variant, str) or not variant:
            raise ValueError("log: variant must be a non-empty string")
        if predictions is not None and len(predictions) != len(rows):
            raise ValueError(f"log: {len(rows)} rows but {len(predictions)} predictions")
        if request_ids is not None and len(request_ids) != len(rows):
            raise ValueError(f"log: {len(rows)} rows but {len(request_ids)} request ids")
        now = self.clock()
        self.tick(now)  # a window whose time is up closes before these rows arrive
        self.counters["batches"] += 1
        self.counters["rows_offered"] += len(rows)
        v = self._variant(variant, now)
        v.logged += len(rows)
        classes = self._detector(variant).classes
        rate = 1.0 if sampled else self.spec.sample_rate
        kept = 0
        # A request of several rows has one id for all of them: sampled together, never
        # labelled (one label cannot be matched to several predictions).
        shared: set[str] = set()
        if request_ids is not None:
            once: set[str] = set()
            for r in request_ids:
                (shared if str(r) in once else once).add(str(r))
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                if columns is None or not isinstance(row, (list, tuple)) or len(row) != len(columns):
                    raise ValueError(
                        f"log: row {i} is a {type(row).__name__}; give dicts of feature values, "
                        "or lists as long as `columns`"
                    )
                row = dict(zip(columns, row, strict=True))
            rid = str(request_ids[i]) if request_ids is not None and request_ids[i] is not None else None
            if rid is not None:
                if not keep_request(rid, rate, self.app):
                    continue
            elif rate < 1.0 and self.rng.random() >= rate:
                continue
            pred = prediction_value(predictions[i], classes) if predictions is not None else None
            v.buffer.add(row, pred, now)
            kept += 1
            if rid is not None and rid not in shared and predictions is not None and self.spec.max_pending_labels > 0:
                self.pending[rid] = _Pending(variant, pred, now)
                self.pending.move_to_end(rid)
                while len(self.pending) > self.spec.max_pending_labels:
                    self.pending.popitem(last=False)
                    self.counters["pending_evicted"] += 1
            if self.spec.window_rows is not None and v.buffer.seen >= self.spec.window_rows:
                self._close(v, now)
        v.sampled += kept
        self.counters["rows_sampled"] += kept
        self._safe(lambda n: self.sink.rows(variant, n), kept)
        return kept

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Close windows that are old enough (``window_seconds``) and have ``min_window_rows``."""
        s = self.spec
        if s.window_seconds is None:
            return []
        now = self.clock() if now is None else now
        closed = []
        for v in list(self.variants.values()):
            b = v.buffer
            if b.opened_at is not None and now - b.opened_at >= s.window_seconds and b.seen >= s.min_window_rows:
                closed.append(self._close(v, now).to_dict())
        return closed

    def flush(self, variant: str | None = None, *, force: bool = False) -> list[dict[str, Any]]:
        """Close the open windows now (those with ``min_window_rows``, or any rows with ``force``)."""
        now = self.clock()
        out = []
        for name, v in list(self.variants.items()):
            if variant is not None and name != variant:
                continue
            if v.buffer.seen >= (1 if force else self.spec.min_window_rows):
                out.append(self._close(v, now).to_dict())
        return out

    def _close(self, v: _Variant, now: float) -> WindowResult:
        b = v.buffer
        preds = b.predictions()
        has_preds = any(p is not None for p in preds)
        wid = self.next_window_id
        self.next_window_id += 1
        result = self._detector(v.name).evaluate(
            b.columns(),
            preds if has_preds else None,
            window_id=wid,
            variant=v.name,
            opened_at=b.opened_at if b.opened_at is not None else now,
            closed_at=now,
            rows=b.seen,
        )
        b.reset()
        v.windows += 1
        v.results.append(result)
        self._safe(self.sink.window, result)
        judged = result.tested > 0 or (result.prediction is not None and result.prediction.drifted is not None)
        decision = self.debouncer.observe(f"{v.name}/data", result.drifted if judged else None, wid, now)
        if decision is not None:
            signals = [
                s for s, on in (("data", result.dataset_drifted), ("prediction", result.prediction_drifted)) if on
            ]
            self._event(
                decision,
                v.name,
                "data_drift",
                now,
                {
                    "signals": signals,
                    "drifted_features": sorted(f for f, r in result.features.items() if r.drifted),
                    "drift_share": result.drift_share,
                    "prediction_drifted": result.prediction_drifted,
                    "statistics": _statistics(result),
                },
            )
        return result

    # ------------------------------------------------------------------ reference
    def set_reference(
        self,
        profile: Mapping[str, Any],
        model_meta: Mapping[str, Any] | None = None,
        *,
        reference_predictions: Sequence[Any] | None = None,
        reference_metrics: Mapping[str, Any] | None = None,
        retrained: bool = True,
    ) -> None:
        """A new model serves now, trained on data described by ``profile``: later windows are
        tested against it.  Open windows, per-variant models and pending labels are dropped
        (they belong to the old reference); window results, events and counters are kept.
        ``retrained``: the retraining in flight ended well (every drift episode ends)."""
        self.detector = DriftDetector(
            profile,
            self.spec,
            model_meta,
            reference_predictions=reference_predictions,
            reference_metrics=reference_metrics,
        )
        self.profile = profile
        self.detectors.clear()
        for v in self.variants.values():
            v.buffer = self._new_buffer(v.name)
            v.perf = PerformanceWindow()
        self.pending.clear()
        if retrained:
            self.debouncer.end_retraining(True, self.clock())

    # ------------------------------------------------------------------ labels
    def label(self, request_id: str, label: Any, sampled: bool | None = None) -> bool:
        """The true label of a logged request (the ``label`` of ``/feedback``, never its
        ``outcome``); False when the request was not sampled, is unknown or was evicted from
        the pending map, or cannot be scored.  ``sampled``: whether the caller's sampling kept
        the request (None: this monitor's own, :func:`~raypipe.monitoring.sampling.keep_request`).  A classification label is matched to the
        model's classes as the ingress does (:func:`~raypipe.models.classes.match_class`:
        ``"3"`` and ``3.0`` are class 3, true/false classes 1/0); one that names none of
        them is scored as a wrong prediction and counted in ``labels_outside_classes``."""
        rid = str(request_id)
        entry = self.pending.pop(rid, None)
        if entry is None:
            kept = keep_request(rid, self.spec.sample_rate, self.app) if sampled is None else sampled
            key = "labels_unknown" if kept else "labels_not_sampled"
            self.counters[key] += 1
            return False
        now = self.clock()
        v = self.variants.get(entry.variant)
        if v is None:  # evicted since
            self.counters["labels_unknown"] += 1
            return False
        det = self._detector(entry.variant)
        outside = False
        if det.task == "classification" and det.classes and label is not None:
            found, label = match_class(label, det.classes)
            outside = not found
        if not v.perf.add(entry.prediction, label, det.task, now):
            self.counters["labels_unscorable"] += 1
            return False
        self.counters["labels_matched"] += 1
        self.counters["labels_outside_classes"] += int(outside)
        v.labels += 1
        if v.perf.n >= self.spec.performance.window_labels:
            self._close_performance(v, now)
        return True

    def labels(self, items: Sequence[tuple[str, Any]]) -> int:
        """Several ``(request_id, label)`` pairs; returns how many were matched."""
        return sum(1 for rid, y in items if self.label(rid, y))

    def _close_performance(self, v: _Variant, now: float) -> PerformanceResult:
        wid = self.next_perf_window_id
        self.next_perf_window_id += 1
        res = self._detector(v.name).evaluate_performance(v.perf, window_id=wid, variant=v.name, closed_at=now)
        v.perf = PerformanceWindow()
        v.perf_windows += 1
        v.perf_results.append(res)
        self._safe(self.sink.performance, res)
        if "performance" in self.spec.trigger_on:
            decision = self.debouncer.observe(f"{v.name}/performance", res.drifted, wid, now)
            if decision is not None:
                self._event(decision, v.name, "performance_drift", now, {"performance": res.to_dict()})
        return res

    # ------------------------------------------------------------------ events
    def _event(self, d: DebounceDecision, variant: str, kind: str, now: float, detail: dict[str, Any]) -> None:
        eid = self.next_event_id
        self.next_event_id += 1
        if d.trigger:
            self.debouncer.claim(eid, d.key, now)
        ev = {
            "event_id": eid,
            "at": now,
            "app": self.app,
            "variant": variant,
            "kind": kind,
            "windows": list(d.windows),
            "trigger": d.trigger,
            "note": d.note,
            **detail,
        }
        self.events.append(ev)
        self._safe(self.sink.event, ev)

    def events_since(self, since_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Events with ``event_id > since_id``, oldest first (the retraining loop's poll API)."""
        self.tick()
        return [dict(e) for e in self.events if e["event_id"] > since_id][: max(limit, 0)]

    def begin_retraining(self, event_id: int | None = None, note: str = "") -> dict[str, Any]:
        self.debouncer.begin_retraining(event_id, self.clock(), note)
        return self.debouncer.state(self.clock())

    def end_retraining(self, ok: bool = True) -> dict[str, Any]:
        self.debouncer.end_retraining(ok, self.clock())
        return self.debouncer.state(self.clock())

    # ------------------------------------------------------------------ reading
    def windows(self, variant: str | None = None, since_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Kept window results (newest last) with ``window_id > since_id``."""
        out = [
            r
            for name, v in self.variants.items()
            if variant is None or name == variant
            for r in v.results
            if r.window_id > since_id
        ]
        out.sort(key=lambda r: r.window_id)
        return [r.to_dict() for r in out[-max(limit, 0) :]] if limit else []

    def memory(self) -> dict[str, Any]:
        """What the monitor holds now (every number is bounded by the spec)."""
        return {
            "variants": len(self.variants),
            "buffer_rows": sum(v.buffer.size for v in self.variants.values()),
            "buffer_capacity": sum(v.buffer.capacity for v in self.variants.values()),
            "buffer_bytes": sum(v.buffer.nbytes() for v in self.variants.values()),
            "windows_kept": sum(len(v.results) + len(v.perf_results) for v in self.variants.values()),
            "events_kept": len(self.events),
            "pending_labels": len(self.pending),
        }

    def status(self, recent: int = 20) -> dict[str, Any]:
        """Per variant: counts, the open window, the last window's per-feature results with
        how often each feature drifted over the kept windows, performance; then events,
        the debouncer's state, label counters, memory and the last error."""
        now = self.clock()
        self.tick(now)
        ref = self.detector.describe()
        variants = {}
        for name, v in self.variants.items():
            last = v.results[-1] if v.results else None
            counts = {f: 0 for f in self._detector(name).features}
            pred_count = 0
            for r in v.results:
                for f, done in r.features.items():
                    counts[f] = counts.get(f, 0) + int(bool(done.drifted))
                pred_count += int(r.prediction_drifted)
            feats = {}
            for f in self._detector(name).features:
                fr: FeatureResult | None = last.features.get(f) if last else None
                feats[f] = {
                    "method": fr.method if fr else self._detector(name).methods[f],
                    "statistic": fr.statistic if fr else None,
                    "p_value": fr.p_value if fr else None,
                    "threshold": fr.threshold if fr else None,
                    "psi": fr.psi if fr else None,
                    "drifted": fr.drifted if fr else None,
                    "n": fr.n if fr else 0,
                    "stats": fr.stats if fr else {},
                    "note": fr.note if fr else None,
                    "drift_count": counts.get(f, 0),
                }
            det = self._detector(name)
            variants[name] = {
                "rows_logged": v.logged,
                "rows_sampled": v.sampled,
                "windows": v.windows,
                "open_window": {
                    "rows": v.buffer.seen,
                    "kept": v.buffer.size,
                    "age_s": (now - v.buffer.opened_at) if v.buffer.opened_at is not None else None,
                },
                "recent_windows": len(v.results),
                "features": feats,
                "prediction": {
                    **(last.prediction.to_dict() if last and last.prediction else {}),
                    "reference": det.prediction_source,
                    "drift_count": pred_count,
                },
                "last_window": last.to_dict() if last else None,
                "windows_brief": [
                    {
                        "window_id": r.window_id,
                        "closed_at": r.closed_at,
                        "rows": r.rows,
                        "drift_share": r.drift_share,
                        "dataset_drifted": r.dataset_drifted,
                        "prediction_drifted": r.prediction_drifted,
                        "drifted": r.drifted,
                        "features": {
                            f: {k: getattr(fr, k) for k in ("statistic", "p_value", "threshold", "drifted", "note")}
                            for f, fr in r.features.items()
                        },
                    }
                    for r in list(v.results)[-recent:]
                ],
                "performance": {
                    "metric": det.performance_metric,
                    "reference": det.performance_reference,
                    "labels": v.labels,
                    "labels_in_window": v.perf.n,
                    "windows": v.perf_windows,
                    "last": v.perf_results[-1].to_dict() if v.perf_results else None,
                    "drift_count": sum(1 for r in v.perf_results if r.drifted),
                },
            }
        return json_safe(
            {
                "app": self.app,
                "now": now,
                "started_at": self.started_at,
                "spec": self.spec.model_dump(mode="json"),
                "reference": ref,
                "variants": variants,
                "events": [dict(e) for e in list(self.events)[-recent:]],
                "events_total": self.next_event_id - 1,
                "debounce": self.debouncer.state(now),
                "counters": dict(self.counters),
                "memory": self.memory(),
                "last_error": self.last_error,
            }
        )

    def _safe(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Metrics never break monitoring."""
        try:
            fn(arg)
        except Exception as e:  # noqa: BLE001
            self.last_error = f"metrics: {e}"


def _statistics(result: WindowResult) -> dict[str, dict[str, Any]]:
    """Per tested feature (and ``__prediction__``): the numbers an event records."""
    items = list(result.features.items())
    if result.prediction is not None:
        items.append((PREDICTION_TAG, result.prediction))
    return {
        name: {
            "method": r.method,
            "statistic": r.statistic,
            "p_value": r.p_value,
            "threshold": r.threshold,
            "psi": r.psi,
            "drifted": r.drifted,
            "n": r.n,
            "mean": r.stats.get("mean"),
        }
        for name, r in items
        if r.drifted is not None
    }
