"""``POST /feedback`` of the router (:class:`FeedbackRoutes`, mixed into
:class:`raypipe.serving.deployments.Router`).

In order: the token (an app with ``auth`` takes feedback only with one of its
``feedback_tokens``: 401/403; none configured: 403), the body (400/413/422), the request
id (one this app issued, :mod:`raypipe.serving.auth`: else 422; past the app's
``feedback.window_s``: 410), the label against the served model (422), then the metrics
collector, which records each of ``outcome`` and ``label`` once per id (again: 409, or the
outcome replaced with ``feedback.on_repeat: replace``; an id it does not know: 404).  A
label goes on to the drift monitor only from authenticated feedback, never for a forced
request, and with the router's sampling decision for the id (the monitor does not sample
again).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from raypipe._ray.actors import NAMESPACE
from raypipe.serving.auth import AuthError, IdError, RouterAuth
from raypipe.serving.model_variant import short_error
from raypipe.serving.validation import (
    Feedback,
    LabelSchema,
    LabelValue,
    RequestError,
    check_label,
    feedback_of,
    parse_json,
)

#: How often a router replica sends its events to the collector (seconds).
FLUSH_S = 0.1
#: The warning of a label that does not feed performance drift because nobody authenticated it.
UNAUTHENTICATED_LABEL = (
    "label recorded but not used for performance drift: this app has no auth.feedback_tokens, "
    "and only labels of authenticated feedback reach the drift monitor"
)
FORCED_LABEL = "label of a request forced to its variant: not used for performance drift"


def json_response(status: int, doc: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(
        json.dumps(doc, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


def _unknown(request_id: str) -> Any:
    return json_response(404, {"error": f"unknown request id {request_id!r} (never served by this app, or forgotten)"})


def _unavailable(e: BaseException) -> Any:
    return json_response(503, {"error": f"metrics collector unavailable: {short_error(e)}"})


class FeedbackRoutes:
    """The router's ``/feedback``: its attributes are the router's."""

    app: str
    auth: RouterAuth
    handles: dict[str, Any]
    feedback_window_s: float
    on_repeat_replace: bool
    collector_name: str
    _collector: Any
    _monitor: Any
    _monitor_rate: float
    _label_schemas: dict[str, LabelSchema]

    async def _body(self, request: Any) -> bytes:
        raise NotImplementedError

    async def _flush(self) -> None:
        raise NotImplementedError

    def _get_collector(self) -> Any:
        if self._collector is None:
            import ray

            self._collector = ray.get_actor(self.collector_name, namespace=NAMESPACE)
        return self._collector

    def _feedback_auth(self, request: Any) -> bool:
        """Whether the feedback is authenticated (False: the app has no auth); raises AuthError."""
        auth = self.auth
        if not auth.enabled:
            return False
        if not len(auth.feedback):
            raise AuthError(403, "this app takes no feedback: its `auth` lists no feedback_tokens")
        auth.feedback.bearer(request.headers.get("authorization"), "POST /feedback")
        return True

    async def _feedback(self, request: Any) -> Any:
        try:
            authed = self._feedback_auth(request)
        except AuthError as e:
            return json_response(e.status, e.body(), e.headers())
        try:
            fb = feedback_of(parse_json(await self._body(request)))
            self.auth.ids.verify(fb.request_id, window_s=self.feedback_window_s)
        except RequestError as e:
            return json_response(e.status, e.body())
        except IdError as e:
            if e.status == 410:
                return json_response(410, {"error": e.reason, "request_id": fb.request_id})
            return json_response(422, RequestError(422, [{"field": "request_id", "reason": e.reason}]).body())
        await self._flush()  # this replica's pending events first
        info: dict[str, Any] | None = None
        for wait in (0.0, 3 * FLUSH_S, 10 * FLUSH_S):  # another replica may still hold the event
            if wait:
                await asyncio.sleep(wait)
            try:
                collector = self._get_collector()
                if fb.label is None:  # an outcome only: one call
                    result = await collector.feedback.remote(fb.request_id, fb.outcome, False, self.on_repeat_replace)
                    if result.get("status") == "unknown":
                        continue
                    return self._answer(fb, result, authed, None, None)
                info = await collector.lookup.remote(fb.request_id)
            except Exception as e:  # noqa: BLE001
                self._collector = None
                return _unavailable(e)
            if info is not None:
                break
        if info is None or fb.label is None:
            return _unknown(fb.request_id)
        return await self._feedback_with_label(fb, fb.label, info, authed)

    async def _feedback_with_label(self, fb: Feedback, value: LabelValue, info: Mapping[str, Any], authed: bool) -> Any:
        if info.get("label"):
            return self._repeated(fb, ["label"])
        try:
            label, warning = check_label(value, await self._label_schema(str(info["variant"])))
        except RequestError as e:
            return json_response(e.status, e.body())
        try:
            result = await self._get_collector().feedback.remote(
                fb.request_id, fb.outcome, True, self.on_repeat_replace
            )
        except Exception as e:  # noqa: BLE001
            self._collector = None
            return _unavailable(e)
        return self._answer(fb, result, authed, label, warning)

    def _repeated(self, fb: Feedback, fields: list[str]) -> Any:
        what = " and ".join(f"an {f}" if f == "outcome" else f"a {f}" for f in fields)
        how = "" if "label" in fields else " (this app's feedback.on_repeat is reject)"
        return json_response(
            409,
            {
                "error": f"request id {fb.request_id!r} has {what} already: one per request{how}",
                "request_id": fb.request_id,
                "repeated": fields,
            },
        )

    def _answer(self, fb: Feedback, result: Mapping[str, Any], authed: bool, label: Any, warning: str | None) -> Any:
        status = result.get("status")
        if status == "unknown":  # forgotten in between
            return _unknown(fb.request_id)
        if status == "repeated":
            return self._repeated(fb, list(result.get("repeated") or []))
        if status == "invalid":
            return json_response(422, RequestError(422, [{"field": "outcome", "reason": "not a finite number"}]).body())
        warnings = [warning] if warning else []
        if fb.label is not None:
            if not authed:
                warnings.append(UNAUTHENTICATED_LABEL)
            elif result.get("forced"):
                warnings.append(FORCED_LABEL)
            elif self._monitor is not None:
                sampled = self.auth.ids.sample(fb.request_id, self._monitor_rate)
                try:
                    self._monitor.label.remote(fb.request_id, label, sampled)  # for its performance windows
                except Exception:  # noqa: BLE001 - fire and forget, as the rows are
                    self._monitor = None
        doc: dict[str, Any] = {"request_id": fb.request_id, "recorded": True, "received": fb.fields}
        if status == "replaced":
            doc["replaced"] = ["outcome"]
        if warnings:
            doc["warnings"] = warnings
        return json_response(200, doc)

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
