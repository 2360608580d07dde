"""Who acts through ``raypipe ui``: the caller's principal from its request, and the checks an
action passes before it calls the API (the same function the CLI calls).

* **The token.** ``Authorization: Bearer TOKEN``, else the ``raypipe_token`` cookie the login
  form sets (HttpOnly, SameSite=Strict; Secure over https).  The server keeps nothing: each
  request's token is checked against the ``token_sha256`` of the platform config in force
  (:func:`raypipe.identity.principal_for_token`), as the CLI checks ``$RAYPIPE_TOKEN``.
* **A single user** (no platform config with users): only requests from this machine
  (127.0.0.1, ::1) act, as the OS user running the UI; others are refused (403).
* **Who may act** (``raypipe ui --actions``): ``admins`` (default), ``users`` (every user the
  platform config knows, as the CLI allows), ``none`` (read-only).
* **CSRF.** A request with a Bearer header is not one a browser sends by itself.  Otherwise a
  form carries ``csrf``, an HMAC of the session (the token's hash, or ``local``) under a key
  made when the server starts; a JSON body needs ``Content-Type: application/json`` and the
  ``X-Raypipe-Request: 1`` header (a cross-site page cannot send either without a preflight
  this server never grants).  An ``Origin`` other than the server's own is refused.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from raypipe import identity
from raypipe.principal import Principal
from raypipe.store.metadata import MetadataStore
from raypipe.store.platform import PlatformStore

COOKIE = "raypipe_token"
#: Whether this request carries a login cookie (set per request by the app's middleware): the
#: header's link says "signed in" (to the page that logs out) instead of "log in".
SIGNED_IN: contextvars.ContextVar[bool] = contextvars.ContextVar("raypipe_ui_signed_in", default=False)


def has_login_cookie(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """``True`` when an ASGI request's headers carry a (non-empty) login cookie."""
    for name, value in headers:
        if name == b"cookie" and any(
            part.strip().startswith(f"{COOKIE}=") and part.strip() != f"{COOKIE}="
            for part in value.decode("latin-1").split(";")
        ):
            return True
    return False


JSON_HEADER = "x-raypipe-request"
ACTIONS = ("admins", "users", "none")
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class Refused(Exception):
    """An action refused: 401 (no principal) or 403 (a principal without the right, a bad CSRF token)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Caller:
    principal: Principal
    how: str  # bearer, cookie, local


def request_token(request: Request) -> tuple[str, str] | None:
    """The request's token and where it came from (``bearer``, ``cookie``), or None."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip(), "bearer"
    cookie = (request.cookies.get(COOKIE) or "").strip()
    return (cookie, "cookie") if cookie else None


def is_local(request: Request) -> bool:
    return request.client is not None and request.client.host in LOOPBACK


class Guard:
    """Authentication and CSRF for one UI server (its CSRF key lives as long as the process)."""

    def __init__(self, actions: str = "admins") -> None:
        if actions not in ACTIONS:
            raise ValueError(f"actions={actions!r}: expected one of {', '.join(ACTIONS)}")
        self.actions = actions
        self._key = secrets.token_bytes(32)

    # ------------------------------------------------------------------ sessions and CSRF
    def session(self, request: Request) -> str:
        found = request_token(request)
        return identity.token_sha256(found[0]) if found else "local"

    def csrf(self, request: Request) -> str:
        """The CSRF token a form of this session carries."""
        return hmac.new(self._key, self.session(request).encode(), hashlib.sha256).hexdigest()

    def check_request(self, request: Request, form: dict[str, Any] | None) -> None:
        """Refuse a request a cross-site page could have made: a foreign Origin, a form without
        its session's CSRF token, JSON without its header."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
            raise Refused(403, f"refused: the request comes from another site ({origin})")
        found = request_token(request)
        if found is not None and found[1] == "bearer":
            return
        if form is None:  # JSON
            if request.headers.get(JSON_HEADER) != "1":
                raise Refused(403, f"refused: a JSON action needs the header {JSON_HEADER}: 1 (or a Bearer token)")
            return
        given = str(form.get("csrf") or "")
        if not hmac.compare_digest(given, self.csrf(request)):
            raise Refused(403, "refused: the form's CSRF token is missing or stale; reload the page and try again")

    # ------------------------------------------------------------------ principals
    def authenticate(self, request: Request, meta: MetadataStore) -> Caller:
        """The caller's principal, or Refused (401: who is it?; 403: not allowed to act here)."""
        if self.actions == "none":
            raise Refused(403, "this UI is read-only (started with --actions none); use the CLI")
        platform = PlatformStore(meta).latest()
        found = request_token(request)
        if platform is None or not platform.config.users:
            if not is_local(request):
                host = request.client.host if request.client else "an unknown address"
                raise Refused(
                    403,
                    f"no users are configured, so only requests from this machine act (as OS user "
                    f"{identity.os_user()}); this one comes from {host}. An admin applies a platform config "
                    "with users (raypipe admin apply) to act from elsewhere with a token",
                )
            return Caller(identity.single_user(), "local")
        if found is None:
            raise Refused(
                401,
                f"this platform has users (platform config version {platform.version}): log in at /login "
                "with your token, or send Authorization: Bearer TOKEN",
            )
        token, how = found
        try:
            who = identity.principal_for_token(platform, token, "the token given")
        except identity.IdentityError as e:
            raise Refused(401, f"{e}: log in again at /login with a valid token") from None
        if self.actions == "admins" and not who.admin:
            raise Refused(
                403,
                f"{who.name} is not an admin of platform config version {platform.version}: this UI lets "
                "admins act (started with --actions admins; --actions users lets every user)",
            )
        return Caller(who, how)

    @staticmethod
    def has_users(meta: MetadataStore) -> bool:
        platform = PlatformStore(meta).latest()
        return platform is not None and bool(platform.config.users)

    def login(self, meta: MetadataStore, token: str) -> Principal:
        """The principal of ``token`` for the login form (Refused 401 if none; 400 without users)."""
        platform = PlatformStore(meta).latest()
        if platform is None or not platform.config.users:
            raise Refused(400, "no users are configured: requests from this machine act as the OS user, no login")
        try:
            return identity.principal_for_token(platform, token, "the token given")
        except identity.IdentityError as e:
            raise Refused(401, str(e)) from None


def safe_next(value: str | None, default: str = "/runs") -> str:
    """A local path to go back to (never another site)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


__all__ = ["ACTIONS", "COOKIE", "SIGNED_IN", "JSON_HEADER", "Caller", "Guard", "Refused", "request_token", "safe_next"]
