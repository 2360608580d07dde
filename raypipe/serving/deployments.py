"""The Serve application of one served model: an HTTP ingress (``router``) and, routed, one
deployment per model version (``v<N>``), built by :func:`build_app` from plain args;
colocated, the router's replicas load the versions themselves and call them in-process
(:mod:`raypipe.serving.colocation`: the same routing, metrics and feedback code).

Serve deploys it from a config (``import_path: raypipe.serving.deployments:build_app``,
``args``: the resolved variants), so a later config that changes only the router's
``user_config`` (weights, shadow, aliases, the auth record's revision) is applied by
``reconfigure`` on the running replicas: no replica restarts and no request is dropped.

HTTP API under the app's route prefix (bodies: :mod:`raypipe.serving.validation`; auth and
request ids: :mod:`raypipe.serving.auth`):

- ``POST /predict``: ``{"features": {...}}`` or ``{"instances": [...]}`` ->
  ``{"request_id", "client_id", "variant", "version", "prediction" | "predictions"}``.
  With ``auth.predict_tokens``: ``Authorization: Bearer <token>`` (401 without or
  malformed, 403 wrong).  The sticky key comes from the configured header or body field
  (absent: a random key).  ``request_id`` is made and signed by the router; a client's id
  (the body's ``request_id``, else the ``X-Request-Id`` header, which Serve sets to its own
  id if the client does not) is only echoed as ``client_id``.  The force-variant header is
  refused (403) unless the app's ``force_variant`` enables it, and then needs its token
  (401/403); forced requests are counted apart and never reach A/B statistics, guardrails
  or the drift monitor.  400 malformed JSON or unknown forced variant, 413 a body over
  the app's ``max_body_bytes`` (refused before it is parsed), 422 invalid body, 500 the
  variant failed, 503 no replica of the variant could be reached.
- ``POST /feedback``: :mod:`raypipe.serving.feedback_route` (401/403, 404, 409, 410, 422).
- ``GET /health`` (always open), ``GET /metadata`` (variants, versions, weights, aliases,
  shadow, key, force header).

If the app has a drift monitor (``raypipe-monitor-<app>``, :mod:`raypipe.monitoring.monitor`),
the router sends it the served rows, predictions and request ids of routed requests,
sampled once, here, at the monitor's ``sample_rate`` by a keyed hash of the id
(:meth:`raypipe.serving.auth.RequestIds.sample`): the monitor keeps every row it gets.

The router calls a variant again (up to twice) when its replica died under the call
(a Ray actor error: the prediction never ran or is lost); Serve routes the retry to a
live replica.  Model errors are not retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from ray import serve

from raypipe._ray.actors import NAMESPACE
from raypipe.monitoring.monitor import get_monitor, read_config
from raypipe.serving.auth import AuthError, RouterAuth
from raypipe.serving.batching import INFLIGHT_PER_REPLICA, Batcher
from raypipe.serving.colocation import COLOCATED, mode_of
from raypipe.serving.feedback_route import FLUSH_S, FeedbackRoutes, json_response
from raypipe.serving.model_variant import VARIANT_ENV, LocalVariant, ModelVariant, short_error
from raypipe.serving.routing import choose, random_key
from raypipe.serving.state import load_auth
from raypipe.serving.validation import (
    MAX_BODY_BYTES,
    InputSchema,
    LabelSchema,
    RequestError,
    parse_json,
    read_body,
    rows_of,
)

ROUTER = "router"
FLUSH_MAX = 512
#: How often the router looks for the app's drift monitor (seconds).
MONITOR_CHECK_S = 5.0
#: Serve's throughput-optimized settings for the router's replicas (its code is async and
#: never blocks for long): user code and the handles' router on the replica's own event
#: loop, saving two thread hand-offs per request.
ROUTER_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
#: The force-variant header when forcing is off (a request carrying it is refused).
DEFAULT_FORCE_HEADER = "X-Raypipe-Variant"
#: The longest client id echoed back.
CLIENT_ID_CHARS = 128

__all__ = ["FLUSH_S", "ROUTER", "Router", "VariantError", "build_app"]


class VariantError(RuntimeError):
    """A variant answered a request with an error (its model raised, or an injected failure)."""


_response = json_response


class Router(FeedbackRoutes):
    """The HTTP ingress: authenticate, validate, pick a variant (sticky, weighted), call it,
    record metrics; ``/feedback`` is :class:`~raypipe.serving.feedback_route.FeedbackRoutes`."""

    def __init__(self, config: Mapping[str, Any], colocated: Mapping[str, Any] | None = None, **variants: Any) -> None:
        self.app = config["app"]
        self.model = config["model"]
        self.salt = config.get("salt", "")
        key = config.get("key") or {}
        self.key_header = (key.get("header") or "").lower() or None
        self.key_field = key.get("field")
        force = config.get("force") or None
        #: The force-variant header (checked also when forcing is off: such a request gets 403).
        self.force_header = str((force or {}).get("header") or DEFAULT_FORCE_HEADER)
        self.force_token_header: str | None = (force or {}).get("token_header")
        self.force_enabled = force is not None
        feedback = config.get("feedback") or {}
        self.on_repeat_replace = feedback.get("on_repeat") == "replace"
        self.feedback_window_s = float(feedback.get("window_s") or 86400.0)
        # Tokens and the request-id key: the app's auth record in Ray's KV, loaded by
        # reconfigure (its revision is in the user_config); until then a key of this replica only.
        self.auth = RouterAuth.of(self.app, None)
        self.max_body_bytes = int(config.get("max_body_bytes") or MAX_BODY_BYTES)
        self.info: dict[str, dict[str, Any]] = {k: dict(v) for k, v in config["variants"].items()}
        self.schemas = {
            k: InputSchema.of(
                v["features"], v.get("input_schema"), [f["name"] for f in v.get("inputs") or [] if f.get("optional")]
            )
            for k, v in self.info.items()
        }
        # Colocated: the variants' models loaded here, called in-process (no second hop);
        # routed: the variants' Serve deployments.  The same calls either way.
        self.colocated = colocated is not None
        self.handles = {k: LocalVariant(c) for k, c in (colocated or {}).items()} if colocated else dict(variants)
        self.batchers = {
            k: Batcher(h, INFLIGHT_PER_REPLICA * (1 if self.colocated else int(self.info[k].get("replicas") or 1)))
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
        #: /predict requests in hand (reading, validating, waiting for a variant).
        self._active = 0
        self.dropped_events = 0
        # The app's drift monitor (raypipe.monitoring.monitor), if one is running: routed rows
        # sampled by request id go to it with the events; authenticated /feedback labels.
        self._monitor: Any = None
        #: Per variant, what a true label of its model is (asked of the variant once).
        self._label_schemas: dict[str, LabelSchema] = {}
        self._monitor_rate = 1.0
        self._monitor_checked = 0.0
        self._drift: dict[str, tuple[list[Any], list[Any], list[str]]] = {}

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """New weights / shadow / aliases / auth, applied in place (Serve's user_config).  A new
        auth revision loads the app's auth record from Ray's KV; none there: the replica fails
        (closed), it never serves without the tokens the app was deployed with."""
        rev = user_config.get("auth")
        if rev and rev != self.auth.rev:
            record = load_auth(self.app)
            if record is None:
                raise RuntimeError(f"app {self.app!r}: its auth record is missing from Ray's KV; deploy the app again")
            self.auth = RouterAuth.of(self.app, record)
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
        """Rows of a routed request for the drift monitor, if the id is in its sample: the one
        sampling of the traffic (a keyed hash of the id; the monitor keeps all it gets)."""
        if not self.auth.ids.sample(request_id, self._monitor_rate):
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
                monitor.log.remote(variant, rows, preds, ids, list(self.schemas[variant].features), True)
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
    async def _call(
        self, variant: str, request_id: str, rows: list[list[Any]], alone: bool = False
    ) -> tuple[list[Any], int]:
        """The variant's predictions of ``rows`` and how many of their values were categories
        it never saw (``alone``: no other request in the router, :meth:`Batcher.submit`)."""
        res = await self.batchers[variant].submit(request_id, rows, alone)
        if not res.get("ok"):
            raise VariantError(res.get("error") or "failed")
        return res["p"], int(res.get("unseen") or 0)

    async def _shadow_call(
        self, variant: str, request_id: str, client_id: str | None, rows: list[list[Any]], key: str | None
    ) -> None:
        t0 = time.perf_counter()
        ok, status = True, 200
        try:
            await self._call(variant, request_id, rows)
        except Exception:  # noqa: BLE001 - a shadow's failure is only recorded
            ok, status = False, 500
        self._record(
            {
                "request_id": request_id,
                "client_id": client_id,
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
            if len(self.auth.predict):  # what the app serves is for its clients only
                try:
                    self.auth.predict.bearer(request.headers.get("authorization"), "GET /metadata")
                except AuthError as e:
                    return _response(e.status, e.body(), e.headers())
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
            "force_header": self.force_header if self.force_enabled else None,
            "auth": {"predict": len(self.auth.predict) > 0, "feedback": len(self.auth.feedback) > 0},
        }

    async def _body(self, request: Any) -> bytes:
        """The request's body, no more than ``max_body_bytes`` of it read (413 past that)."""
        return await read_body(request.headers.get("content-length"), request.stream(), self.max_body_bytes)

    def _forced(self, headers: Any) -> str | None:
        """The variant a request forces (None: not forced); raises AuthError when forcing is off
        (403) or its token is missing (401) or wrong (403), RequestError for an unknown variant."""
        forced = headers.get(self.force_header)
        if not forced:
            return None
        if not self.force_enabled or not len(self.auth.force) or not self.force_token_header:
            raise AuthError(
                403, f"forcing a variant ({self.force_header}) is off for this app (`force_variant` in its spec)"
            )
        self.auth.force.header(headers.get(self.force_token_header), self.force_token_header, "forcing a variant")
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
        return str(forced)

    async def _predict(self, request: Any) -> Any:
        self._active += 1
        try:
            return await self._predict_one(request)
        finally:
            self._active -= 1

    async def _predict_one(self, request: Any) -> Any:
        t0 = time.perf_counter()
        headers = request.headers
        try:
            if len(self.auth.predict):
                self.auth.predict.bearer(headers.get("authorization"), "POST /predict")
            forced = self._forced(headers)
            payload = parse_json(await self._body(request))
            key: str | None = None
            if self.key_header:
                key = headers.get(self.key_header)
            elif self.key_field and isinstance(payload, dict) and payload.get(self.key_field) is not None:
                raw = payload[self.key_field]
                if isinstance(raw, (dict, list)):
                    raise RequestError(422, [{"field": self.key_field, "reason": "expected a string or number key"}])
                key = str(raw)
            variant = forced or choose(key if key is not None else random_key(), self.weights, self.salt)
            rows, single = rows_of(payload, self.schemas[variant], self.key_field)
        except AuthError as e:
            return _response(e.status, e.body(), e.headers())
        except RequestError as e:
            return _response(e.status, e.body())
        # The id is the router's, signed (feedback names it); the client's own id, if any, is
        # only a correlation field.  The body's first: Serve's proxy sets X-Request-Id on every
        # request (its own id when the client sends none), so the header alone would hide it.
        rid = self.auth.ids.issue()
        cid = payload.get("request_id") or headers.get("x-request-id")
        client_id = str(cid)[:CLIENT_ID_CHARS] if cid else None
        if self.shadow is not None and self.shadow != variant:
            self._spawn(self._shadow_call(self.shadow, rid, client_id, rows, key))
        status, doc, unseen = 200, None, 0
        try:
            # Alone in the router (one connection, a quiet app): the variant is called at once in
            # this task; with others in hand, through the batcher (one call, one forward pass for many).
            preds, unseen = await self._call(variant, rid, rows, self._active == 1)
            if self._monitor is not None and forced is None:  # forced requests never reach drift windows
                self._log_drift(variant, rid, rows, preds)
            doc = {
                "request_id": rid,
                "client_id": client_id,
                "variant": variant,
                "version": self.info[variant]["version"],
            }
            if single:
                doc["prediction"] = preds[0]
            else:
                doc["predictions"] = preds
        except Exception as e:  # noqa: BLE001 - the variant failed: a 5xx for the client, an error for metrics
            from ray.exceptions import RayActorError

            status = 503 if isinstance(e, RayActorError) else 500
            reason = "no replica could be reached" if status == 503 else short_error(e)
            doc = {
                "request_id": rid,
                "client_id": client_id,
                "variant": variant,
                "error": f"variant {variant} failed: {reason}",
            }
        if forced is not None:
            doc["forced"] = True
        self._record(
            {
                "request_id": rid,
                "client_id": client_id,
                "variant": variant,
                "ok": status < 500,
                "status": status,
                "latency_ms": (time.perf_counter() - t0) * 1e3,
                "ts": time.time(),
                "shadow": False,
                "key": key,
                "forced": forced is not None,
                "unseen": unseen,
            }
        )
        return _response(status, doc)


#: How often Serve's controller checks each replica (seconds; Serve's default is 10).  A replica
#: whose process died is only noticed, and replaced, at its next check: 2 s keeps that gap short
#: for one small call per replica every 2 s.
HEALTH_CHECK_PERIOD_S = 2.0


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application from :func:`raypipe.serving.app` 's args (plain JSON): the router
    and, routed, one deployment per variant; colocated, the router alone, given the variants'
    model configs to load in-process (:mod:`raypipe.serving.colocation`)."""
    colocated = mode_of(args) == COLOCATED
    variants = {}
    for label, v in ({} if colocated else args["variants"]).items():
        opts: dict[str, Any] = {
            "name": label,
            "ray_actor_options": {**v["ray_actor_options"], "runtime_env": {"env_vars": VARIANT_ENV}},
            "max_ongoing_requests": v["max_ongoing_requests"],
            # A replaced or removed replica drains its in-flight requests before it stops.
            "graceful_shutdown_timeout_s": 20.0,
            "graceful_shutdown_wait_loop_s": 0.5,
            "health_check_period_s": HEALTH_CHECK_PERIOD_S,
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
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )  # its user_config (weights, shadow, aliases) comes from the app config's deployments override
    if colocated:
        return router.bind(args["router"], colocated={k: v["model"] for k, v in args["variants"].items()})
    return router.bind(args["router"], **variants)
