"""Per-variant serving metrics: one named, detached ``MetricsCollector`` actor per app.

Contract (the A/B report and the canary controller read it):

- Actor name ``raypipe-serve-metrics-<app>`` (:func:`collector_name`), namespace ``raypipe``;
  :func:`get_collector` finds it.  Every ingress replica batches its per-request
  events and sends them every ~0.1 s.
- ``record(events: list[dict]) -> int``: an event is ``{"request_id", "variant", "ok",
  "status", "latency_ms", "ts", "shadow": bool, "key"}`` (``key``: the sticky key, or None
  when the request had none; the ingress also adds ``"forced": bool``).  Served events
  remember request id -> variant for feedback (the last ``max_ids``, default 1M).
- ``feedback(request_id: str, outcome: float | None, label: bool = False) -> bool``:
  False for an unknown (or forgotten) id.  ``outcome`` is the request's business result
  (``/feedback``'s ``outcome``; None: none given): it counts for the variant that served
  the request, in the time bucket of the feedback's arrival; an outcome again for the same
  id replaces the earlier one.  ``label``: the body also carried a true label (which the
  ingress sends to the drift monitor, not here): counted in ``labels``, once per request
  id.  A label is never an outcome: a label-only feedback leaves ``outcomes`` alone.
- ``variant_of(request_id: str) -> str | None``: the variant that served the request.
- ``snapshot(since: float | None = None) -> dict[str, dict]``: per variant::

      {"requests", "errors", "shadow_requests", "shadow_errors",
       "latency_ms": {"buckets": [upper bounds, last inf], "counts": [...],
                      "p50", "p95", "p99"},
       "outcomes": {"n", "sum", "sumsq", "positives"},
       "labels": true labels fed back (for performance drift; not outcomes),
       "unseen_categories": values of categories the model never saw (served as "other")}

  counting only what happened at ``ts >= since`` (whole seconds: buckets are per
  second).  ``requests``/``errors`` are routed (served) requests; a shadow copy counts in
  ``shadow_requests``/``shadow_errors``; ``latency_ms`` covers both (a variant is
  normally either served or shadow).  ``errors`` are 5xx answers of the variant; requests
  refused with 4xx before reaching a variant are not counted.  Percentiles are read off
  the histogram (linear within a bucket).  Per-second buckets are kept for
  ``retain_s`` (default 1 h); older ones fold into an all-time remainder that only
  ``since=None`` includes.  Memory is bounded by ``retain_s`` and ``max_ids``.

The same counts are exported through ``ray.util.metrics`` (Prometheus, scraped from
Ray's metrics endpoint): ``raypipe_serve_requests`` and ``raypipe_serve_errors``
(counters), ``raypipe_serve_latency_ms`` (histogram), ``raypipe_serve_feedback`` and
``raypipe_serve_feedback_positive`` (counters of outcomes), ``raypipe_serve_labels``
(counter of true labels), tagged ``app``, ``variant`` and ``shadow``
(Ray prefixes the exported names with ``ray_``).

The collector also keeps the app's scheduler reservation alive: it polls the
controller for the reservation job every few seconds (the controller releases jobs
whose owner stops polling).  A collector restarted by Ray starts from zero counts.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from raypipe._ray.actors import find_actor, get_or_create
from raypipe.exceptions import RaypipeError
from raypipe.scheduler.client import CONTROLLER_NAME
from raypipe.serving.state import collector_name

#: Upper bounds (ms) of the latency histogram: 0.25 ms to ~30 s, x1.25 apart, then inf.
LATENCY_BUCKETS_MS: tuple[float, ...] = tuple(float(f"{0.25 * 1.25**i:.3g}") for i in range(53)) + (math.inf,)
#: Coarser bounds for the Prometheus histogram.
PROMETHEUS_BUCKETS_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0]
LEASE_POLL_S = 5.0

# Per-bucket counters: requests, errors, shadow requests, shadow errors, outcome n, sum, sumsq, positives,
# values of categories the model never saw (encoded as "other"), true labels fed back.
_REQ, _ERR, _SREQ, _SERR, _ON, _OSUM, _OSQ, _OPOS, _UNSEEN, _LN = range(10)


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram (linear within the bucket; the open last bucket
    reports its lower bound)."""
    total = sum(counts)
    if total == 0:
        return None
    target = q * total
    seen = 0.0
    for i, c in enumerate(counts):
        if c and seen + c >= target:
            lo = bounds[i - 1] if i > 0 else 0.0
            hi = bounds[i]
            if math.isinf(hi):
                return lo
            return lo + (hi - lo) * ((target - seen) / c)
        seen += c
    return bounds[-2]


class _Bucket:
    __slots__ = ("c", "h")

    def __init__(self, nbins: int) -> None:
        self.c = [0, 0, 0, 0, 0, 0.0, 0.0, 0, 0, 0]
        self.h = [0] * nbins

    def add(self, other: _Bucket) -> None:
        for i, v in enumerate(other.c):
            self.c[i] += v
        for i, v in enumerate(other.h):
            if v:
                self.h[i] += v


class MetricsCollector:
    """Windowed per-variant counts, latency histograms and business outcomes of one app."""

    def __init__(
        self,
        app: str,
        retain_s: float = 3600.0,
        max_ids: int = 1_000_000,
        reservation: str | None = None,
        export: bool = True,
    ) -> None:
        self.app = app
        self.retain_s = retain_s
        self.max_ids = max_ids
        self.bounds = LATENCY_BUCKETS_MS
        self._buckets: dict[str, dict[int, _Bucket]] = {}
        self._old: dict[str, _Bucket] = {}
        #: request id -> [variant, outcome or None, second the outcome was counted in, labelled]
        self._ids: dict[str, list[Any]] = {}
        self._pruned_at = 0.0
        self.reservation = reservation
        self._lease_task: asyncio.Task[None] | None = None
        self._prom: dict[str, Any] | None = self._make_prometheus() if export else None

    # ------------------------------------------------------------------ prometheus
    @staticmethod
    def _make_prometheus() -> dict[str, Any] | None:
        try:
            from ray.util import metrics
        except ImportError:  # pragma: no cover - Ray always has it
            return None
        tags = ("app", "variant", "shadow")
        return {
            "requests": metrics.Counter("raypipe_serve_requests", "Requests answered by a variant.", tag_keys=tags),
            "errors": metrics.Counter("raypipe_serve_errors", "Requests a variant failed (5xx).", tag_keys=tags),
            "latency": metrics.Histogram(
                "raypipe_serve_latency_ms",
                "Ingress-measured latency of a variant's answers (ms).",
                boundaries=PROMETHEUS_BUCKETS_MS,
                tag_keys=tags,
            ),
            "feedback": metrics.Counter(
                "raypipe_serve_feedback", "Outcomes reported by POST /feedback.", tag_keys=tags
            ),
            "unseen": metrics.Counter(
                "raypipe_serve_unseen_categories",
                "Feature values of categories the model never saw (served as 'other').",
                tag_keys=tags,
            ),
            "positives": metrics.Counter(
                "raypipe_serve_feedback_positive", "Outcomes > 0 reported by POST /feedback.", tag_keys=tags
            ),
            "labels": metrics.Counter(
                "raypipe_serve_labels", "True labels reported by POST /feedback (performance drift).", tag_keys=tags
            ),
        }

    def _export(self, events: Iterable[Mapping[str, Any]]) -> None:
        if self._prom is None:
            return
        counts: dict[tuple[str, str], list[int]] = {}
        for e in events:
            tags_key = (str(e["variant"]), "true" if e.get("shadow") else "false")
            c = counts.setdefault(tags_key, [0, 0, 0])
            c[0] += 1
            c[1] += 0 if e.get("ok") else 1
            c[2] += int(e.get("unseen") or 0)
            self._prom["latency"].observe(
                float(e.get("latency_ms") or 0.0),
                tags={"app": self.app, "variant": tags_key[0], "shadow": tags_key[1]},
            )
        for (variant, shadow), (n, errs, unseen) in counts.items():
            tags = {"app": self.app, "variant": variant, "shadow": shadow}
            self._prom["requests"].inc(n, tags=tags)
            if errs:
                self._prom["errors"].inc(errs, tags=tags)
            if unseen:
                self._prom["unseen"].inc(unseen, tags=tags)

    # ------------------------------------------------------------------ recording
    def _bucket(self, variant: str, sec: int) -> _Bucket:
        per = self._buckets.get(variant)
        if per is None:
            per = self._buckets[variant] = {}
        b = per.get(sec)
        if b is None:
            b = per[sec] = _Bucket(len(self.bounds))
        return b

    def record(self, events: list[dict[str, Any]]) -> int:
        """Count a batch of request events; returns how many were counted."""
        n = 0
        for e in events:
            try:
                variant = str(e["variant"])
                sec = int(float(e.get("ts") or time.time()))
                lat = float(e.get("latency_ms") or 0.0)
            except (KeyError, TypeError, ValueError):
                continue
            b = self._bucket(variant, sec)
            shadow = bool(e.get("shadow"))
            ok = bool(e.get("ok"))
            if shadow:
                b.c[_SREQ] += 1
                b.c[_SERR] += 0 if ok else 1
            else:
                b.c[_REQ] += 1
                b.c[_ERR] += 0 if ok else 1
                b.c[_UNSEEN] += int(e.get("unseen") or 0)
                rid = e.get("request_id")
                if rid:
                    self._remember(str(rid), variant)
            b.h[bisect.bisect_left(self.bounds, lat)] += 1
            n += 1
        self._export(events)
        self._maybe_prune()
        return n

    def _remember(self, rid: str, variant: str) -> None:
        ids = self._ids
        if rid not in ids:
            while len(ids) >= self.max_ids:
                del ids[next(iter(ids))]
        ids[rid] = [variant, None, None, False]

    def variant_of(self, request_id: str) -> str | None:
        """The variant that served ``request_id`` (None: unknown or forgotten)."""
        entry = self._ids.get(request_id)
        return None if entry is None else str(entry[0])

    def feedback(self, request_id: str, outcome: float | None = None, label: bool = False) -> bool:
        """Attribute a business ``outcome`` (None: none) to the variant that served
        ``request_id``, and count a true ``label`` fed back for it (once per id)."""
        entry = self._ids.get(request_id)
        if entry is None:
            return False
        if outcome is not None:
            outcome = float(outcome)
            if not math.isfinite(outcome):
                return False
        variant = entry[0]
        tags = {"app": self.app, "variant": variant, "shadow": "false"}
        if label and not entry[3]:
            entry[3] = True
            self._bucket(variant, int(time.time())).c[_LN] += 1
            if self._prom is not None:
                self._prom["labels"].inc(1, tags=tags)
        if outcome is None:
            return True
        old, old_sec = entry[1], entry[2]
        if old is not None:
            prev = self._buckets.get(variant, {}).get(old_sec) or self._old.get(variant)
            if prev is not None:
                prev.c[_ON] -= 1
                prev.c[_OSUM] -= old
                prev.c[_OSQ] -= old * old
                prev.c[_OPOS] -= 1 if old > 0 else 0
        sec = int(time.time())
        b = self._bucket(variant, sec)
        b.c[_ON] += 1
        b.c[_OSUM] += outcome
        b.c[_OSQ] += outcome * outcome
        b.c[_OPOS] += 1 if outcome > 0 else 0
        entry[1], entry[2] = outcome, sec
        if self._prom is not None:
            self._prom["feedback"].inc(1, tags=tags)
            if outcome > 0:
                self._prom["positives"].inc(1, tags=tags)
        return True

    def _maybe_prune(self) -> None:
        now = time.time()
        if now - self._pruned_at < 10.0:
            return
        self._pruned_at = now
        cutoff = int(now - self.retain_s)
        for variant, per in self._buckets.items():
            old = [s for s in per if s < cutoff]
            if old:
                rest = self._old.setdefault(variant, _Bucket(len(self.bounds)))
                for s in old:
                    rest.add(per.pop(s))

    # ------------------------------------------------------------------ reading
    def snapshot(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Per-variant counts of events at ``ts >= since`` (all retained time and the
        folded remainder when ``since`` is None)."""
        start = None if since is None else int(math.floor(float(since)))
        out: dict[str, dict[str, Any]] = {}
        for variant in sorted(set(self._buckets) | set(self._old)):
            total = _Bucket(len(self.bounds))
            for sec, b in self._buckets.get(variant, {}).items():
                if start is None or sec >= start:
                    total.add(b)
            if start is None and variant in self._old:
                total.add(self._old[variant])
            c, h = total.c, total.h
            out[variant] = {
                "requests": c[_REQ],
                "errors": c[_ERR],
                "shadow_requests": c[_SREQ],
                "shadow_errors": c[_SERR],
                "latency_ms": {
                    "buckets": [b if math.isfinite(b) else "inf" for b in self.bounds],
                    "counts": list(h),
                    "p50": quantile(self.bounds, h, 0.50),
                    "p95": quantile(self.bounds, h, 0.95),
                    "p99": quantile(self.bounds, h, 0.99),
                },
                "outcomes": {"n": c[_ON], "sum": c[_OSUM], "sumsq": c[_OSQ], "positives": c[_OPOS]},
                "labels": c[_LN],
                "unseen_categories": c[_UNSEEN],
            }
        return out

    def known_ids(self) -> int:
        return len(self._ids)

    def ping(self) -> str:
        return self.app


class MetricsCollectorActor(MetricsCollector):
    """The collector as an asyncio Ray actor that also keeps the app's reservation leased."""

    async def record(self, events: list[dict[str, Any]]) -> int:  # type: ignore[override]
        self._ensure_lease()
        return MetricsCollector.record(self, events)

    async def feedback(  # type: ignore[override]
        self, request_id: str, outcome: float | None = None, label: bool = False
    ) -> bool:
        return MetricsCollector.feedback(self, request_id, outcome, label)

    async def variant_of(self, request_id: str) -> str | None:  # type: ignore[override]
        return MetricsCollector.variant_of(self, request_id)

    async def snapshot(self, since: float | None = None) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        self._ensure_lease()
        return MetricsCollector.snapshot(self, since)

    async def set_reservation(self, job_id: str | None) -> None:
        self.reservation = job_id
        self._ensure_lease()

    async def ping(self) -> str:  # type: ignore[override]
        self._ensure_lease()
        return self.app

    def _ensure_lease(self) -> None:
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.get_running_loop().create_task(self._keep_lease())

    async def _keep_lease(self) -> None:
        """Poll the scheduler for the reservation job: its lease never lapses while the app lives."""
        handle = None
        while True:
            job = self.reservation
            if job:
                try:
                    if handle is None:
                        handle = find_actor(CONTROLLER_NAME)
                    if handle is not None:
                        await handle.poll.remote([job])
                except Exception:  # noqa: BLE001 - the controller may be restarting; try again
                    handle = None
            await asyncio.sleep(LEASE_POLL_S)


def get_collector(app: str, *, create: bool = False, reservation: str | None = None) -> Any:
    """The app's collector actor (created detached and restartable if ``create``)."""

    def missing() -> None:
        raise RaypipeError(f"no metrics collector for serving app {app!r} (is it deployed?)")

    return get_or_create(
        collector_name(app),
        MetricsCollectorActor,
        (app,),
        {"reservation": reservation},
        on_missing=None if create else missing,
        max_task_retries=-1,
        max_concurrency=1000,
    )
