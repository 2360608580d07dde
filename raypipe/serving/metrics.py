"""Per-variant serving metrics: one named, detached ``MetricsCollector`` actor per app.

Contract (the A/B report and the canary controller read it):

- Actor name ``raypipe-serve-metrics-<app>`` (:func:`collector_name`), namespace ``raypipe``;
  :func:`get_collector` finds it.  Every ingress replica batches its per-request
  events and sends them every ~0.1 s.
- ``record(events: list[dict]) -> int``: an event is ``{"request_id", "variant", "ok",
  "status", "latency_ms", "ts", "shadow": bool, "forced": bool, "key"}`` (``key``: the
  sticky key, or None when the request had none; ``request_id``: the id the router issued,
  :mod:`raypipe.serving.auth`).  Served events (routed or forced) remember request id ->
  variant for feedback: the last ``max_ids`` (default 1M), none older than ``id_window_s``.
- ``lookup(request_id) -> {"variant", "forced", "outcome", "label"} | None``: who served
  it and whether an outcome or a label was fed back already.
- ``feedback(request_id, outcome=None, label=False, replace=False) -> {"status", ...}``:
  ``status`` is ``recorded``, ``replaced`` (a second outcome with ``replace``: the first is
  taken back from the sums), ``repeated`` (``"repeated": [fields]`` already fed back: an
  outcome again without ``replace``, or a label again: nothing recorded) or ``unknown``
  (never served, or forgotten); with ``variant`` and ``forced``.  ``outcome`` is the
  request's business result: it counts for the variant that served the request, in the
  time bucket of the feedback's arrival.  ``label``: the body also carried a true label
  (the ingress sends it to the drift monitor, not here): counted in ``labels``.  A label is
  never an outcome.
- ``snapshot(since: float | None = None) -> dict[str, dict]``: per variant::

      {"requests", "errors",
       "latency_ms": {"buckets": [upper bounds, last inf], "counts": [...], "p50", "p95", "p99"},
       "outcomes": {"n", "sum", "sumsq", "positives"},
       "labels": true labels fed back (for performance drift; not outcomes),
       "unseen_categories": values of categories the model never saw (served as "other"),
       "shadow_requests", "shadow_errors", "shadow_latency_ms": {"p50", "p95", "p99"},
       "forced_requests", "forced_errors", "forced_outcomes": {"n", "sum", "sumsq", "positives"}}

  counting only what happened at ``ts >= since`` (whole seconds: buckets are per
  second).  ``requests``, ``errors``, ``latency_ms``, ``outcomes`` and ``labels`` are
  *routed* requests only: what A/B statistics and rollout guardrails read.  Shadow copies
  (``shadow_*``) and requests forced to a variant by header (``forced_*``, their outcomes
  too) are counted apart and never there.  ``errors`` are 5xx answers of the variant;
  requests refused with 4xx before reaching a variant are not counted.  Percentiles are
  read off the histogram (linear within a bucket).  Per-second buckets are kept for
  ``retain_s`` (default 1 h); older ones fold into an all-time remainder that only
  ``since=None`` includes.  Memory is bounded by ``retain_s`` and ``max_ids``.

The same counts are exported through ``ray.util.metrics`` (Prometheus, scraped from
Ray's metrics endpoint): ``raypipe_serve_requests`` and ``raypipe_serve_errors``
(counters), ``raypipe_serve_latency_ms`` (histogram), ``raypipe_serve_feedback`` and
``raypipe_serve_feedback_positive`` (counters of outcomes), ``raypipe_serve_labels``
(counter of true labels), tagged ``app``, ``variant``, ``shadow`` and ``forced``
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

# Per-bucket counters: routed requests, errors, shadow requests, shadow errors, outcome n, sum, sumsq,
# positives, values of categories the model never saw (encoded as "other"), true labels fed back; then
# forced requests, their errors and their outcomes' n, sum, sumsq, positives.
_REQ, _ERR, _SREQ, _SERR, _ON, _OSUM, _OSQ, _OPOS, _UNSEEN, _LN = range(10)
_FREQ, _FERR, _FON, _FOSUM, _FOSQ, _FOPOS = range(10, 16)
#: Where an outcome goes: routed requests' counters, or forced ones'.
_OUTCOME_SLOTS = {False: (_ON, _OSUM, _OSQ, _OPOS), True: (_FON, _FOSUM, _FOSQ, _FOPOS)}
#: A remembered request id: [variant, outcome or None, second its outcome was counted in,
#: labelled, forced, second it was served].
_VARIANT, _OUTCOME, _OUTCOME_SEC, _LABELLED, _FORCED, _SERVED = range(6)


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
    """One second of one variant: the counters, the routed requests' latency histogram and
    the shadow copies' (made on the first one)."""

    __slots__ = ("c", "h", "hs")

    def __init__(self, nbins: int) -> None:
        self.c: list[float] = [0] * 16
        self.h = [0] * nbins
        self.hs: list[int] | None = None

    def shadow_hist(self) -> list[int]:
        if self.hs is None:
            self.hs = [0] * len(self.h)
        return self.hs

    def add(self, other: _Bucket) -> None:
        for i, v in enumerate(other.c):
            self.c[i] += v
        for i, v in enumerate(other.h):
            if v:
                self.h[i] += v
        if other.hs is not None:
            mine = self.shadow_hist()
            for i, v in enumerate(other.hs):
                if v:
                    mine[i] += v


def _latency(bounds: Sequence[float], counts: Sequence[int]) -> dict[str, float | None]:
    return {q: quantile(bounds, counts, f) for q, f in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))}


class MetricsCollector:
    """Windowed per-variant counts, latency histograms and business outcomes of one app."""

    def __init__(
        self,
        app: str,
        retain_s: float = 3600.0,
        max_ids: int = 1_000_000,
        reservation: str | None = None,
        export: bool = True,
        id_window_s: float = 86400.0,
    ) -> None:
        self.app = app
        self.retain_s = retain_s
        self.max_ids = max_ids
        self.id_window_s = id_window_s
        self.bounds = LATENCY_BUCKETS_MS
        self._buckets: dict[str, dict[int, _Bucket]] = {}
        self._old: dict[str, _Bucket] = {}
        #: request id -> [variant, outcome, outcome's second, labelled, forced, served second]
        self._ids: dict[str, list[Any]] = {}
        self._pruned_at = 0.0
        self.reservation = reservation
        self._lease_task: asyncio.Task[None] | None = None
        self._prom: dict[str, Any] | None = self._make_prometheus() if export else None

    def configure(self, reservation: str | None, id_window_s: float) -> None:
        """The app's (re)deploy: its reservation job and how long request ids are remembered."""
        self.reservation = reservation
        self.id_window_s = float(id_window_s)

    # ------------------------------------------------------------------ prometheus
    @staticmethod
    def _make_prometheus() -> dict[str, Any] | None:
        try:
            from ray.util import metrics
        except ImportError:  # pragma: no cover - Ray always has it
            return None
        tags = ("app", "variant", "shadow", "forced")
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

    def _tags(self, variant: str, shadow: bool = False, forced: bool = False) -> dict[str, str]:
        return {"app": self.app, "variant": variant, "shadow": str(shadow).lower(), "forced": str(forced).lower()}

    def _export(self, events: Iterable[Mapping[str, Any]]) -> None:
        if self._prom is None:
            return
        counts: dict[tuple[str, bool, bool], list[int]] = {}
        for e in events:
            key = (str(e["variant"]), bool(e.get("shadow")), bool(e.get("forced")))
            c = counts.setdefault(key, [0, 0, 0])
            c[0] += 1
            c[1] += 0 if e.get("ok") else 1
            c[2] += int(e.get("unseen") or 0)
            self._prom["latency"].observe(float(e.get("latency_ms") or 0.0), tags=self._tags(*key))
        for key, (n, errs, unseen) in counts.items():
            tags = self._tags(*key)
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
            ok = bool(e.get("ok"))
            slot = bisect.bisect_left(self.bounds, lat)
            if e.get("shadow"):
                b.c[_SREQ] += 1
                b.c[_SERR] += 0 if ok else 1
                b.shadow_hist()[slot] += 1
                n += 1
                continue
            forced = bool(e.get("forced"))
            if forced:
                b.c[_FREQ] += 1
                b.c[_FERR] += 0 if ok else 1
            else:
                b.c[_REQ] += 1
                b.c[_ERR] += 0 if ok else 1
                b.c[_UNSEEN] += int(e.get("unseen") or 0)
                b.h[slot] += 1
            rid = e.get("request_id")
            if rid:
                self._remember(str(rid), variant, forced, sec)
            n += 1
        self._export(events)
        self._maybe_prune()
        return n

    def _remember(self, rid: str, variant: str, forced: bool, sec: int) -> None:
        ids = self._ids
        if rid in ids:  # ids are unique (server-issued): a repeat is a retried event, not a new request
            return
        while len(ids) >= self.max_ids:
            del ids[next(iter(ids))]
        ids[rid] = [variant, None, None, False, forced, sec]

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        """Who served ``request_id`` and what was fed back for it (None: unknown or forgotten)."""
        e = self._ids.get(request_id)
        if e is None:
            return None
        return {
            "variant": str(e[_VARIANT]),
            "forced": bool(e[_FORCED]),
            "outcome": e[_OUTCOME] is not None,
            "label": bool(e[_LABELLED]),
        }

    def variant_of(self, request_id: str) -> str | None:
        """The variant that served ``request_id`` (None: unknown or forgotten)."""
        entry = self._ids.get(request_id)
        return None if entry is None else str(entry[_VARIANT])

    def feedback(
        self, request_id: str, outcome: float | None = None, label: bool = False, replace: bool = False
    ) -> dict[str, Any]:
        """Attribute a business ``outcome`` (None: none) to the variant that served
        ``request_id`` and count a true ``label`` fed back for it: each once per id (an outcome
        again replaces the first with ``replace``); nothing is recorded for a repeat."""
        entry = self._ids.get(request_id)
        if entry is None:
            return {"status": "unknown"}
        variant, forced = str(entry[_VARIANT]), bool(entry[_FORCED])
        out: dict[str, Any] = {"variant": variant, "forced": forced}
        if outcome is not None:
            outcome = float(outcome)
            if not math.isfinite(outcome):
                return {**out, "status": "invalid"}
        repeated = []
        if outcome is not None and entry[_OUTCOME] is not None and not replace:
            repeated.append("outcome")
        if label and entry[_LABELLED]:
            repeated.append("label")
        if repeated:
            return {**out, "status": "repeated", "repeated": repeated}
        tags = self._tags(variant, forced=forced)
        now = int(time.time())
        if label:
            entry[_LABELLED] = True
            self._bucket(variant, now).c[_LN] += 1
            if self._prom is not None:
                self._prom["labels"].inc(1, tags=tags)
        replaced = False
        if outcome is not None:
            n_i, sum_i, sq_i, pos_i = _OUTCOME_SLOTS[forced]
            old, old_sec = entry[_OUTCOME], entry[_OUTCOME_SEC]
            if old is not None:  # replace: the first outcome is taken back where it was counted
                prev = self._buckets.get(variant, {}).get(old_sec) or self._old.get(variant)
                if prev is not None:
                    prev.c[n_i] -= 1
                    prev.c[sum_i] -= old
                    prev.c[sq_i] -= old * old
                    prev.c[pos_i] -= 1 if old > 0 else 0
                replaced = True
            b = self._bucket(variant, now)
            b.c[n_i] += 1
            b.c[sum_i] += outcome
            b.c[sq_i] += outcome * outcome
            b.c[pos_i] += 1 if outcome > 0 else 0
            entry[_OUTCOME], entry[_OUTCOME_SEC] = outcome, now
            if self._prom is not None and not replaced:
                self._prom["feedback"].inc(1, tags=tags)
                if outcome > 0:
                    self._prom["positives"].inc(1, tags=tags)
        return {**out, "status": "replaced" if replaced else "recorded"}

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
        # ids past the feedback window: /feedback answers 410 for them anyway (oldest first)
        forget = now - self.id_window_s - 60.0
        ids = self._ids
        while ids:
            first = next(iter(ids))
            if ids[first][_SERVED] >= forget:
                break
            del ids[first]

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
                "latency_ms": {
                    "buckets": [b if math.isfinite(b) else "inf" for b in self.bounds],
                    "counts": list(h),
                    **_latency(self.bounds, h),
                },
                "outcomes": {"n": c[_ON], "sum": c[_OSUM], "sumsq": c[_OSQ], "positives": c[_OPOS]},
                "labels": c[_LN],
                "unseen_categories": c[_UNSEEN],
                "shadow_requests": c[_SREQ],
                "shadow_errors": c[_SERR],
                "shadow_latency_ms": _latency(self.bounds, total.hs or []),
                "forced_requests": c[_FREQ],
                "forced_errors": c[_FERR],
                "forced_outcomes": {"n": c[_FON], "sum": c[_FOSUM], "sumsq": c[_FOSQ], "positives": c[_FOPOS]},
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
        self, request_id: str, outcome: float | None = None, label: bool = False, replace: bool = False
    ) -> dict[str, Any]:
        return MetricsCollector.feedback(self, request_id, outcome, label, replace)

    async def lookup(self, request_id: str) -> dict[str, Any] | None:  # type: ignore[override]
        return MetricsCollector.lookup(self, request_id)

    async def variant_of(self, request_id: str) -> str | None:  # type: ignore[override]
        return MetricsCollector.variant_of(self, request_id)

    async def configure(self, reservation: str | None, id_window_s: float) -> None:  # type: ignore[override]
        MetricsCollector.configure(self, reservation, id_window_s)
        self._ensure_lease()

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
