"""The UI's actions: move a model's alias, change an app's split, abort a rollout, stop a closed
loop.  Each is a POST taking a form (then it goes back to its page) or JSON (then it answers
JSON), checked by :class:`~raypipe.ui.auth.Guard` (CSRF, then who), then calls the same API
function the CLI calls as the request's principal (:func:`raypipe.identity.established`), so
the audit entry names it and the API's own checks apply."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from raypipe import api, identity
from raypipe._json import json_safe
from raypipe.exceptions import ModelNotFoundError, RaypipeError
from raypipe.principal import Principal
from raypipe.ui.auth import COOKIE, Refused, request_token, safe_next

if TYPE_CHECKING:
    from raypipe.ui.app import UiApp

#: How long an action on the cluster may take before the page says it did not answer.
ACTION_TIMEOUT_S = 30.0
MAX_FORM_BYTES = 64 * 1024


async def _body(request: Request) -> tuple[dict[str, Any], bool]:
    """The request's fields and whether it is JSON."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as e:
            raise Refused(400, f"the body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise Refused(400, "the body must be a JSON object")
        return data, True
    if kind == "application/x-www-form-urlencoded":
        return await _form(request), False
    raise Refused(415, "send a form (application/x-www-form-urlencoded) or JSON (Content-Type: application/json)")


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each; a small body only)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Refused(413, f"the form is over {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as e:
        raise Refused(400, f"the form cannot be read: {e}") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _field(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None or str(value).strip() == "":
        if required:
            raise Refused(400, f"field {name!r} is missing")
        return ""
    return str(value).strip()


def _version(data: dict[str, Any]) -> int:
    raw = _field(data, "version").lstrip("v")
    try:
        value = int(raw)
    except ValueError:
        raise Refused(400, f"field 'version' = {raw!r}: expected a version number (e.g. 3 or v3)") from None
    if value < 1:
        raise Refused(400, f"field 'version' = {value}: expected 1 or more")
    return value


def _weights(data: dict[str, Any]) -> dict[str, float] | list[str]:
    raw = data.get("weights")
    if isinstance(raw, dict):
        try:
            return {str(k): float(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise Refused(400, "field 'weights': expected {variant: percent, ...}") from None
    text = _field(data, "weights")
    return [part for part in text.replace(",", " ").split() if part]


class Actions:
    """The action routes of one :class:`~raypipe.ui.app.UiApp`."""

    def __init__(self, ui: UiApp) -> None:
        self.ui = ui

    def _db(self) -> str:
        return self.ui.pool.url

    def _need_cluster(self) -> str:
        if not self.ui.settings.address:
            raise Refused(409, "no cluster given: start raypipe ui with --address ADDR to act on served apps")
        return self.ui.settings.address

    async def _act(
        self, request: Request, back: str, call: Callable[[dict[str, Any]], Any], cluster: bool = False
    ) -> Response:
        try:
            data, is_json = await _body(request)
        except Refused as e:
            return self.refused(request, e, True)

        def act() -> tuple[Principal, Any]:
            self.ui.guard.check_request(request, None if is_json else data)
            with self.ui.pool.store() as meta:
                who = self.ui.guard.authenticate(request, meta).principal

            def run() -> Any:
                with identity.established(who):
                    return call(data)

            # on the cluster: with a time limit (a cluster that does not answer is said so)
            return who, (self.ui.cluster.call(run, ACTION_TIMEOUT_S) if cluster else run())

        try:
            who, result = await run_in_threadpool(act)
        except Refused as e:
            return self.refused(request, e, is_json, back)
        except identity.IdentityError as e:
            return self.refused(request, Refused(403, str(e)), is_json, back)
        except ModelNotFoundError as e:
            return self.refused(request, Refused(404, str(e)), is_json, back)
        except RaypipeError as e:
            return self.refused(request, Refused(400, str(e)), is_json, back)
        if is_json:
            return self.ui.json({"ok": True, "actor": who.name, "result": json_safe(result)})
        return RedirectResponse(back, status_code=303)

    def refused(self, request: Request, e: Refused, is_json: bool, back: str | None = None) -> Response:
        if is_json or request.url.path.startswith("/api/"):
            return self.ui.json({"error": str(e), "status": e.status}, status_code=e.status)
        return self.ui.html(
            "error.html",
            status_code=e.status,
            code=e.status,
            message=str(e),
            title=f"Error {e.status}",
            login=e.status == 401,
            back=safe_next(back, "") or None,
        )

    # ------------------------------------------------------------------ logging in and out
    def login_form(self, request: Request) -> Response:
        found = request_token(request)
        who = None
        with self.ui.pool.store() as meta:
            if found is not None:
                try:
                    who = self.ui.guard.login(meta, found[0])
                except Refused:
                    who = None
            users = self.ui.guard.has_users(meta)
        return self.ui.html(
            "login.html",
            title="Log in",
            who=who,
            users=users,
            csrf=self.ui.guard.csrf(request),
            next=safe_next(request.query_params.get("next")),
            actions=self.ui.guard.actions,
        )

    async def login(self, request: Request) -> Response:
        try:
            data = await _form(request)
        except Refused as e:
            return self.refused(request, e, False)
        token = _field(data, "token", required=False)

        def check() -> Principal:
            self.ui.guard.check_request(request, data)
            if not token:
                raise Refused(400, "give your token (raypipe admin token mints one)")
            with self.ui.pool.store() as meta:
                return self.ui.guard.login(meta, token)

        try:
            await run_in_threadpool(check)
        except Refused as e:
            return self.refused(request, e, False)
        response = RedirectResponse(safe_next(data.get("next")), status_code=303)
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
        )
        return response

    async def logout(self, request: Request) -> Response:
        try:
            self.ui.guard.check_request(request, await _form(request))
        except Refused as e:
            return self.refused(request, e, False)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------------ the actions
    async def move_alias(self, request: Request) -> Response:
        name = request.path_params["name"]

        def call(data: dict[str, Any]) -> Any:
            remove = str(data.get("remove") or "").lower() in ("1", "true", "on", "yes")
            event = api.set_model_alias(
                name,
                _version(data),
                _field(data, "alias"),
                remove=remove,
                reason=_field(data, "reason", required=False),
                db=self._db(),
            )
            return event.to_dict() if event is not None else None

        return await self._act(request, f"/models/{quote(name, safe='')}", call)

    async def split(self, request: Request) -> Response:
        app = request.path_params["app"]

        def call(data: dict[str, Any]) -> Any:
            return api.split(app, _weights(data), address=self._need_cluster(), db=self._db()).to_dict()

        return await self._act(request, f"/apps/{quote(app, safe='')}", call, cluster=True)

    async def abort_rollout(self, request: Request) -> Response:
        app = request.path_params["app"]

        def call(data: dict[str, Any]) -> Any:
            reason = _field(data, "reason", required=False) or "aborted from raypipe ui"
            return api.rollout_abort(app, reason=reason, db=self._db(), address=self._need_cluster())

        return await self._act(request, f"/apps/{quote(app, safe='')}", call, cluster=True)

    async def stop_loop(self, request: Request) -> Response:
        app = request.path_params["app"]

        def call(data: dict[str, Any]) -> Any:
            return {"stopped": api.loop_stop(app, db=self._db(), address=self._need_cluster())}

        return await self._act(request, f"/apps/{quote(app, safe='')}", call, cluster=True)


__all__ = ["ACTION_TIMEOUT_S", "Actions"]
