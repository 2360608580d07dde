"""The Serve application of one served model: an HTTP ingress (``router``) and one
deployment per model version (``v<N>``), built by :func:`build_app` from plain args.

Serve deploys it from a config (``import_path: raypipe.serving.deployments:build_app``,
``args``: the resolved variants), so a later config that changes only the router's
``user_config`` (weights, shadow, aliases) is applied by ``reconfigure`` on the running
replicas: no replica restarts and no request is dropped.

HTTP API under the app's route prefix (bodies: :mod:`raypipe.serving.validation`):

- ``POST /predict``: ``{"features": {...}}`` or ``{"instances": [...]}`` ->
  ``{"request_id", "variant", "version", "prediction" | "predictions"}``.  The sticky key
  comes from the configured header or body field (absent: a random key); the
  ``X-Raypipe-Variant`` header (configurable) forces a variant; a body ``request_id`` (or
  else the ``X-Request-Id`` header, which Serve sets to its own id if the client does not)
  names the request, else a uuid4 is made.  400 malformed JSON or
  unknown forced variant, 413 a body over the app's ``max_body_bytes`` (default 1 MiB:
  refused before it is parsed), 422 invalid body, 500 the variant failed, 503 no replica
  of the variant could be reached.
- ``POST /feedback``: ``{"request_id", "outcome", "label"}`` with ``outcome`` (a business
  result: to the metrics collector, for A/B tests and guardrails), ``label`` (the true
  value, checked against the model of the variant that served the request: to the drift
  monitor, for performance drift) or both -> 200 ``{"request_id", "recorded", "received"}``
  (plus ``warnings`` for a label outside the model's classes), 404 (unknown id), 413, 422,
  503 (collector unavailable).
- ``GET /health``, ``GET /metadata`` (variants, versions, weights, aliases, shadow, key).

If the app has a drift monitor (``raypipe-monitor-<app>``, :mod:`raypipe.monitoring.monitor`),
the router sends it the served rows, predictions and request ids (sampled by request id
at the monitor's ``sample_rate``) with its metrics, and the ``label`` of ``/feedback``
(never its ``outcome``).

The router calls a variant again (up to twice) when its replica died under the call
(a Ray actor error: the prediction never ran or is lost); Serve routes the retry to a
live replica.  Model errors are not retried.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ray import serve

from raypipe._ray.actors import NAMESPACE
from raypipe.monitoring.monitor import get_monitor, read_config
from raypipe.monitoring.sampling import keep_request
from raypipe.serving.model_variant import VARIANT_ENV, ModelVariant, short_error
from raypipe.serving.routing import choose, random_key
from raypipe.serving.validation import (
    MAX_BODY_BYTES,
    Feedback,
    InputSchema,
    LabelSchema,
    LabelValue,
    RequestError,
    check_label,
    feedback_of,
    parse_json,
    read_body,
    rows_of,
)

ROUTER = "router"
FLUSH_S = 0.1
FLUSH_MAX = 512
#: Calls of a variant after its replica died under the first one.
ACTOR_RETRIES = 2
#: How often the router looks for the app's drift monitor (seconds).
MONITOR_CHECK_S = 5.0
#: Handle calls in flight per replica of a variant (more requests join the next call).
INFLIGHT_PER_REPLICA = 2
#: Serve's throughput-optimized settings for the router's replicas (its code is async and
#: never blocks for long): user code and the handles' router on the replica's own event
#: loop, saving two thread hand-offs per request.
ROUTER_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


class VariantError(RuntimeError):
    """A variant answered a request with an error (its model raised, or an injected failure)."""


def _response(status: int, doc: Mapping[str, Any]) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(doc, separators=(",", ":")).encode(), status_code=status, media_type="application/json")


class _Batcher:
    """Requests for one variant, sent as few handle calls as possible without waiting:
    a request goes out at once while fewer than ``max_inflight`` calls are in flight;
    otherwise it joins the next call, sent as soon as one returns.  One connection sees
    no added delay; under load, one call carries many requests (one forward pass)."""

    def __init__(self, handle: Any, max_inflight: int, max_batch: int = 64) -> None:
        self.handle = handle
        self.max_inflight = max(1, max_inflight)
        self.max_batch = max_batch
        self.queue: list[tuple[str, list[list[Any]], asyncio.Future[dict[str, Any]]]] = []
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request_id: str, rows: list[list[Any]]) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.queue.append((request_id, rows, fut))
        if self.inflight < self.max_inflight:
            self._dispatch()
        return await fut

    def _dispatch(self) -> None:
        batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
        if not batch:
            return
        self.inflight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[tuple[str, list[list[Any]], asyncio.Future[dict[str, Any]]]]) -> None:
        from ray.exceptions import RayActorError

        try:
            ids = [b[0] for b in batch]
            rows = [b[1] for b in batch]
            for attempt in range(ACTOR_RETRIES + 1):
                try:
                    results = await self.handle.predict_many.remote(ids, rows)
                    break
                except RayActorError:  # the replica died under the call: Serve picks a live one
                    if attempt == ACTOR_RETRIES:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
            for (_, _, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
        except Exception as e:  # noqa: BLE001 - every request of the call gets the error
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            self.inflight -= 1
            while self.queue and self.inflight < self.max_inflight:
                self._dispatch()


class Router:
    """The HTTP ingress: validate, pick a variant (sticky, weighted), call it, record metrics."""

    def __init__(self, config: Mapping[str, Any], **variants: Any) -> None:
        self.app = config["app"]
        self.model = config["model"]
        self.salt = config.get("salt", "")
        key = config.get("key") or {}
        self.key_header = (key.get("header") or "").lower() or None
        self.key_field = key.get("field")
        self.force_header = str(config.get("force_header") or "X-Raypipe-Variant").lower()
        self.max_body_bytes = int(config.get("max_body_bytes") or MAX_BODY_BYTES)
        self.info: dict[str, dict[str, Any]] = {k: dict(v) for k, v in config["variants"].items()}
        self.schemas = {
            k: InputSchema.of(
                v["features"], v.get("input_schema"), [f["name"] for f in v.get("inputs") or [] if f.get("optional")]
            )
            for k, v in self.info.items()
        }
        self.handles = dict(variants)
        self.batchers = {
            k: _Batcher(h, INFLIGHT_PER_REPLICA * int(self.info[k].get("replicas") or 1))
            for k, h in self.handles.items()
        }
        self.collector_name = config["collector"]
        self.weights: dict[str, float] = {k: 0.0 for k in self.info}
        self.shadow: str | None = None
        self.aliases: dict[str, str] = {}
        self._events: list[dict[str, Any]] = []
        self._collector: Any = None
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dropped_events = 0
        # The app's drift monitor (raypipe.monitoring.monitor), if one is running: served rows
        # sampled by request id go to it with the events; /feedback labels (never outcomes).
        self._monitor: Any = None
        #: Per variant, what a true label of its model is (asked of the variant once).
        self._label_schemas: dict[str, LabelSchema] = {}
        self._monitor_rate = 1.0
        self._monitor_checked = 0.0
        self._drift: dict[str, tuple[list[Any], list[Any], list[str]]] = {}

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """New weights / shadow / aliases, applied in place (Serve's user_config)."""
        weights = {k: float(v) for k, v in (user_config.get("weights") or {}).items() if k in self.info}
        self.weights = {k: weights.get(k, 0.0) for k in self.info}
        shadow = user_config.get("shadow")
        self.shadow = shadow if shadow in self.info else None
        self.aliases = dict(user_config.get("aliases") or {})

    # ------------------------------------------------------------------ metrics
    def _record(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        if len(self._events) >= FLUSH_MAX:
            self._spawn(self._flush())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self._flush()
            if time.monotonic() - self._monitor_checked > MONITOR_CHECK_S:
                self._monitor_checked = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, self._find_monitor)

    def _find_monitor(self) -> None:
        try:
            handle = get_monitor(self.app)
            if handle is not None and self._monitor is None:
                spec = (read_config(self.app) or {}).get("spec") or {}
                self._monitor_rate = float(spec.get("sample_rate", 1.0))
            self._monitor = handle
        except Exception:  # noqa: BLE001 - drift logging must never fail serving
            self._monitor = None

    def _log_drift(self, variant: str, request_id: str, rows: list[list[Any]], preds: list[Any]) -> None:
        if not keep_request(request_id, self._monitor_rate):
            return
        buf = self._drift.setdefault(variant, ([], [], []))
        buf[0].extend(rows)
        buf[1].extend(preds)
        buf[2].extend([request_id] * len(rows))

    def _flush_drift(self) -> None:
        batches, self._drift = self._drift, {}
        monitor = self._monitor
        if monitor is None:
            return
        for variant, (rows, preds, ids) in batches.items():
            try:
                monitor.log.remote(variant, rows, preds, ids, list(self.schemas[variant].features))
            except Exception:  # noqa: BLE001 - fire and forget
                self._monitor = None

    async def _flush(self) -> None:
        if self._drift:
            self._flush_drift()
        if not self._events:
            return
        batch, self._events = self._events, []
        try:
            if self._collector is None:
                import ray

                self._collector = ray.get_actor(self.collector_name, namespace=NAMESPACE)
            await self._collector.record.remote(batch)
        except Exception:  # noqa: BLE001 - metrics must never fail a request; counted
            self._collector = None
            self.dropped_events += len(batch)

    # ------------------------------------------------------------------ calls
    async def _call(self, variant: str, request_id: str, rows: list[list[Any]]) -> tuple[list[Any], int]:
        """The variant's predictions of ``rows`` and how many of their values were categories
        it never saw."""
        res = await self.batchers[variant].submit(request_id, rows)
        if not res.get("ok"):
            raise VariantError(res.get("error") or "failed")
        return res["p"], int(res.get("unseen") or 0)

    async def _shadow_call(self, variant: str, request_id: str, rows: list[list[Any]], key: str | None) -> None:
        t0 = time.perf_counter()
        ok, status = True, 200
        try:
            await self._call(variant, request_id, rows)
        except Exception:  # noqa: BLE001 - a shadow's failure is only recorded
            ok, status = False, 500
        self._record(
            {
                "request_id": request_id,
                "variant": variant,
                "ok": ok,
                "status": status,
                "latency_ms": (time.perf_counter() - t0) * 1e3,
                "ts": time.time(),
                "shadow": True,
                "key": key,
                "forced": False,
            }
        )

    # ------------------------------------------------------------------ HTTP
    async def __call__(self, request: Any) -> Any:
        scope = request.scope
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        path = path.rstrip("/") or "/"
        method = request.method
        if path == "/predict":
            return await self._predict(request) if method == "POST" else _response(405, {"error": "use POST"})
        if path == "/feedback":
            return await self._feedback(request) if method == "POST" else _response(405, {"error": "use POST"})
        if path == "/health" and method == "GET":
            return _response(200, {"status": "ok", "app": self.app})
        if path == "/metadata" and method == "GET":
            return _response(200, self.metadata())
        return _response(
            404,
            {"error": f"no route {method} {path}; routes: POST /predict, POST /feedback, GET /health, GET /metadata"},
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "model": self.model,
            "variants": {
                k: {
                    "version": v["version"],
                    "sha256": v["sha256"],
                    "weight": self.weights.get(k, 0.0),
                    "features": len(v["features"]),
                    "inputs": v.get("inputs")
                    or [{"name": f, "dtype": (v.get("input_schema") or {}).get(f)} for f in v["features"]],
                    "shadow": k == self.shadow,
                }
                for k, v in self.info.items()
            },
            "weights": dict(self.weights),
            "aliases": dict(self.aliases),
            "shadow": self.shadow,
            "key": {"header": self.key_header}
            if self.key_header
            else ({"field": self.key_field} if self.key_field else None),
            "force_header": self.force_header,
        }

    async def _body(self, request: Any) -> bytes:
        """The request's body, no more than ``max_body_bytes`` of it read (413 past that)."""
        return await read_body(request.headers.get("content-length"), request.stream(), self.max_body_bytes)

    async def _predict(self, request: Any) -> Any:
        t0 = time.perf_counter()
        headers = request.headers
        try:
            payload = parse_json(await self._body(request))
            key: str | None = None
            if self.key_header:
                key = headers.get(self.key_header)
            elif self.key_field and isinstance(payload, dict) and payload.get(self.key_field) is not None:
                raw = payload[self.key_field]
                if isinstance(raw, (dict, list)):
                    raise RequestError(422, [{"field": self.key_field, "reason": "expected a string or number key"}])
                key = str(raw)
            forced = headers.get(self.force_header)
            if forced:
                if forced not in self.info:
                    raise RequestError(
                        400,
                        [
                            {
                                "field": self.force_header,
                                "reason": f"unknown variant {forced!r}; variants: {', '.join(self.info)}",
                            }
                        ],
                        "unknown variant",
                    )
                variant = forced
            else:
                variant = choose(key if key is not None else random_key(), self.weights, self.salt)
            rows, single = rows_of(payload, self.schemas[variant], self.key_field)
        except RequestError as e:
            return _response(e.status, e.body())
        # The body's id first: Serve's proxy sets X-Request-Id on every request (its own id
        # when the client sends none), so the header alone would always hide the body's.
        rid = payload.get("request_id") or headers.get("x-request-id") or uuid.uuid4().hex
        rid = str(rid)[:128]
        if self.shadow is not None and self.shadow != variant:
            self._spawn(self._shadow_call(self.shadow, rid, rows, key))
        status, doc, unseen = 200, None, 0
        try:
            preds, unseen = await self._call(variant, rid, rows)
            if self._monitor is not None:
                self._log_drift(variant, rid, rows, preds)
            doc = {"request_id": rid, "variant": variant, "version": self.info[variant]["version"]}
            if single:
                doc["prediction"] = preds[0]
            else:
                doc["predictions"] = preds
        except Exception as e:  # noqa: BLE001 - the variant failed: a 5xx for the client, an error for metrics
            from ray.exceptions import RayActorError

            status = 503 if isinstance(e, RayActorError) else 500
            reason = "no replica could be reached" if status == 503 else short_error(e)
            doc = {"request_id": rid, "variant": variant, "error": f"variant {variant} failed: {reason}"}
        self._record(
            {
                "request_id": rid,
                "variant": variant,
                "ok": status < 500,
                "status": status,
                "latency_ms": (time.perf_counter() - t0) * 1e3,
                "ts": time.time(),
                "shadow": False,
                "key": key,
                "forced": bool(forced),
                "unseen": unseen,
            }
        )
        return _response(status, doc)

    async def _feedback(self, request: Any) -> Any:
        """``outcome`` to the collector only (A/B statistics, guardrails); ``label`` to the
        drift monitor only (performance windows), after checking it against the model of the
        variant that served the request; both for a body with both."""
        try:
            fb = feedback_of(parse_json(await self._body(request)))
        except RequestError as e:
            return _response(e.status, e.body())
        await self._flush()  # this replica's pending events first
        for wait in (0.0, 3 * FLUSH_S, 10 * FLUSH_S):  # another replica may still hold the event
            if wait:
                await asyncio.sleep(wait)
            try:
                collector = self._get_collector()
                if fb.label is None:
                    if await collector.feedback.remote(fb.request_id, fb.outcome):
                        return _response(200, {"request_id": fb.request_id, "recorded": True, "received": fb.fields})
                    continue
                variant = await collector.variant_of.remote(fb.request_id)
            except Exception as e:  # noqa: BLE001
                self._collector = None
                return _response(503, {"error": f"metrics collector unavailable: {short_error(e)}"})
            if variant is not None:
                return await self._feedback_with_label(fb, fb.label, str(variant))
        return _response(
            404, {"error": f"unknown request id {fb.request_id!r} (never served by this app, or forgotten)"}
        )

    def _get_collector(self) -> Any:
        if self._collector is None:
            import ray

            self._collector = ray.get_actor(self.collector_name, namespace=NAMESPACE)
        return self._collector

    async def _feedback_with_label(self, fb: Feedback, value: LabelValue, variant: str) -> Any:
        try:
            label, warning = check_label(value, await self._label_schema(variant))
        except RequestError as e:
            return _response(e.status, e.body())
        try:
            known = await self._get_collector().feedback.remote(fb.request_id, fb.outcome, True)
        except Exception as e:  # noqa: BLE001
            self._collector = None
            return _response(503, {"error": f"metrics collector unavailable: {short_error(e)}"})
        if not known:  # forgotten in between
            return _response(
                404, {"error": f"unknown request id {fb.request_id!r} (never served by this app, or forgotten)"}
            )
        if self._monitor is not None:
            try:
                self._monitor.label.remote(fb.request_id, label)  # for its performance windows
            except Exception:  # noqa: BLE001 - fire and forget, as the rows are
                self._monitor = None
        doc: dict[str, Any] = {"request_id": fb.request_id, "recorded": True, "received": fb.fields}
        if warning:
            doc["warnings"] = [warning]
        return _response(200, doc)

    async def _label_schema(self, variant: str) -> LabelSchema:
        """The label schema of ``variant``'s model, asked of one of its replicas once.  A
        variant this router does not serve (any more), or cannot reach now: unknown (the
        label is taken as it is; the monitor counts one it cannot score)."""
        schema = self._label_schemas.get(variant)
        if schema is not None:
            return schema
        handle = self.handles.get(variant)
        if handle is None:
            return LabelSchema()
        try:
            schema = LabelSchema.from_meta(await handle.label_schema.remote())
        except Exception:  # noqa: BLE001 - never fail feedback on it; try again next time
            return LabelSchema()
        self._label_schemas[variant] = schema
        return schema


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application from :func:`raypipe.serving.app` 's args (plain JSON)."""
    variants = {}
    for label, v in args["variants"].items():
        opts: dict[str, Any] = {
            "name": label,
            "ray_actor_options": {**v["ray_actor_options"], "runtime_env": {"env_vars": VARIANT_ENV}},
            "max_ongoing_requests": v["max_ongoing_requests"],
            # A replaced or removed replica drains its in-flight requests before it stops.
            "graceful_shutdown_timeout_s": 20.0,
            "graceful_shutdown_wait_loop_s": 0.5,
        }
        if v.get("autoscaling"):
            opts["autoscaling_config"] = v["autoscaling"]
        else:
            opts["num_replicas"] = v["replicas"]
        # serve.deployment()(cls), not serve.deployment(cls): the same Deployment, and the form Ray's stub types
        variants[label] = serve.deployment()(ModelVariant).options(**opts).bind(v["model"])
    ing = args["ingress"]
    router = serve.deployment()(Router).options(
        name=ROUTER,
        num_replicas=ing["replicas"],
        ray_actor_options={**ing["ray_actor_options"], "runtime_env": {"env_vars": ROUTER_ENV}},
        max_ongoing_requests=ing["max_ongoing_requests"],
        # A new router version (variants added or removed) replaces the replicas: the old one
        # keeps serving until the proxies route to the new one and its requests are answered
        # (5 s cut requests off mid-flight under load).
        graceful_shutdown_timeout_s=30.0,
        graceful_shutdown_wait_loop_s=0.5,
    )  # its user_config (weights, shadow, aliases) comes from the app config's deployments override
    return router.bind(args["router"], **variants)
