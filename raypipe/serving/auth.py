"""Who may call a served app, and request ids nobody else can make (pure: no Ray).

**Bearer tokens.**  An app's ``auth`` (:class:`raypipe.serving.spec.AuthSpec`) lists tokens
for ``/predict`` and for ``/feedback`` as secret references (``${env:NAME}``,
``${file:PATH}``).  :func:`auth_record` resolves them where the app is deployed and keeps
only their SHA-256; the router compares the SHA-256 of the presented token with each of
them with :func:`hmac.compare_digest` (:class:`TokenCheck`).  No header, or one that is not
``Authorization: Bearer <token>``: 401 (with ``WWW-Authenticate: Bearer``); a token that is
none of them: 403.

**Request ids.**  The router names every request it serves with an id it makes and signs
(:class:`RequestIds`)::

    r1.<issued at, ms since the epoch, hex>.<12 random bytes, base64url>.<tag>
    tag = HMAC-SHA256(key, app NUL "r1.<ms>.<nonce>")[:16], base64url

``/feedback`` checks the tag (no lookup: a forged, altered or foreign id is refused at
once) and the issue time (past the app's feedback window: 410).  The key is the app's: a
``secret:`` reference of its spec (the key is derived from it, per app), or one made at
the first deploy and kept, so every router replica and every redeploy of the app share it.
The drift monitor's sample of the traffic is chosen by another HMAC of the id with the
same key (:meth:`RequestIds.sample`): a client can neither pick nor tell which of its
requests are monitored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raypipe.exceptions import ConfigError
from raypipe.secrets import resolve_secrets

__all__ = [
    "ID_VERSION",
    "TOKEN_MIN_CHARS",
    "AuthError",
    "IdError",
    "RequestIds",
    "TokenCheck",
    "auth_record",
    "derive_key",
    "is_reference",
    "token_hash",
]

#: The first field of every request id (the format's version).
ID_VERSION = "r1"
#: The shortest token accepted (a token is a password nobody types: make it long and random).
TOKEN_MIN_CHARS = 16
#: Tokens longer than this are not even hashed (a header of garbage).
TOKEN_MAX_CHARS = 4096
_TAG_BYTES = 16
_NONCE_BYTES = 12
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([!-~]+) *$")
_WHOLE_REFERENCE = re.compile(r"^\$\{(env|file):[^}]+\}$")


class AuthError(Exception):
    """A request refused for its credentials: 401 (none, or not in the expected form) or 403
    (a token that is not one of the app's)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message}

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="raypipe"'} if self.status == 401 else {}


class IdError(Exception):
    """A ``/feedback`` request id that is not one of the app's (422) or is too old (410)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def token_hash(token: str) -> str:
    """The SHA-256 of a token (hex): what the router gets instead of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def is_reference(text: str) -> bool:
    """Whether ``text`` is one whole secret reference (``${env:NAME}`` or ``${file:PATH}``)."""
    return bool(_WHOLE_REFERENCE.match(text))


class TokenCheck:
    """Tokens accepted for a route, as SHA-256 digests; an empty check accepts nothing."""

    def __init__(self, hashes: Iterable[str] = ()) -> None:
        self._digests = tuple(bytes.fromhex(h) for h in hashes)

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, token: str) -> bool:
        """Whether ``token`` is one of the tokens (every digest compared in constant time)."""
        if not token or len(token) > TOKEN_MAX_CHARS:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = False
        for d in self._digests:
            found |= hmac.compare_digest(digest, d)
        return found

    def bearer(self, authorization: str | None, route: str) -> None:
        """Check an ``Authorization`` header; raises :class:`AuthError` 401 or 403."""
        if not authorization:
            raise AuthError(401, f"{route} needs a token: send the header `Authorization: Bearer <token>`")
        m = _BEARER.match(authorization)
        if m is None:
            raise AuthError(401, "malformed Authorization header: expected `Bearer <token>`")
        if not self.matches(m.group(1)):
            raise AuthError(403, f"the token is not one of this app's tokens for {route}")

    def header(self, value: str | None, name: str, what: str) -> None:
        """Check a raw token header ``name``; raises :class:`AuthError` 401 (missing) or 403."""
        if not value:
            raise AuthError(401, f"{what} needs its token in the header {name}")
        if not self.matches(value.strip()):
            raise AuthError(403, f"the {name} token is wrong")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def derive_key(secret: str, app: str) -> bytes:
    """The key of ``app``'s request ids from a secret (a spec's ``secret``): never the secret itself."""
    return hmac.new(
        secret.encode("utf-8", "surrogatepass"), b"raypipe request ids\x00" + app.encode(), "sha256"
    ).digest()


class RequestIds:
    """Issue, verify and sample ``app``'s signed request ids with ``key``."""

    def __init__(self, app: str, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a request-id key needs at least 16 bytes")
        self.app = app
        self._tag = hmac.new(key, app.encode("utf-8") + b"\x00", "sha256")
        self._sample = hmac.new(key, b"raypipe sample\x00", "sha256")

    def _sign(self, body: str) -> str:
        mac = self._tag.copy()
        mac.update(body.encode("ascii"))
        return _b64(mac.digest()[:_TAG_BYTES])

    def issue(self, now: float | None = None) -> str:
        """A new id, unique (12 random bytes) and signed; ``now``: its issue time."""
        ms = int((time.time() if now is None else now) * 1000)
        body = f"{ID_VERSION}.{ms:x}.{_b64(os.urandom(_NONCE_BYTES))}"
        return f"{body}.{self._sign(body)}"

    def verify(self, request_id: str, *, now: float | None = None, window_s: float | None = None) -> float:
        """The issue time (s) of an id this app made; raises :class:`IdError` 422 for an id it
        did not make (malformed, unsigned, altered, another app's) and 410 for one issued more
        than ``window_s`` ago."""
        parts = request_id.split(".") if isinstance(request_id, str) and request_id.isascii() else []
        if len(parts) != 4 or parts[0] != ID_VERSION:
            raise IdError(
                422, "not a request id of this app (ids are issued by POST /predict: r1.<time>.<nonce>.<tag>)"
            )
        body = request_id[: request_id.rindex(".")]
        # The tag is compared as text: base64 has several spellings of the same bytes, and an id
        # must have exactly one (it keys the one outcome per request).  The body is signed as text.
        if not hmac.compare_digest(parts[3], self._sign(body)):
            raise IdError(422, f"not a request id issued by app {self.app!r} (its signature does not match)")
        ms = int(parts[1], 16)  # signed: written by issue()
        issued = ms / 1000.0
        if window_s is not None:
            age = (time.time() if now is None else now) - issued
            if age > window_s:
                raise IdError(
                    410,
                    f"request id issued {age:.0f} s ago: past this app's feedback window of {window_s:g} s",
                )
        return issued

    def sample(self, request_id: str, rate: float) -> bool:
        """Whether the drift monitor gets this request at ``rate`` (an HMAC of the id: the same
        answer on every replica, unpredictable without the key)."""
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        mac = self._sample.copy()
        mac.update(request_id.encode("utf-8", "surrogatepass"))
        return int.from_bytes(mac.digest()[:8], "big") / 2.0**64 < rate


@dataclass(frozen=True)
class RouterAuth:
    """What a router replica checks: tokens per route, the force-variant token, the id key."""

    app: str
    predict: TokenCheck
    feedback: TokenCheck
    force: TokenCheck
    ids: RequestIds
    #: The app has an ``auth`` section (then /feedback needs a feedback token).
    enabled: bool
    rev: str = ""

    @classmethod
    def of(cls, app: str, record: Mapping[str, Any] | None) -> RouterAuth:
        """From :func:`auth_record`'s record; None: no auth, a key of this process only (tests)."""
        if record is None:
            return cls(app, TokenCheck(), TokenCheck(), TokenCheck(), RequestIds(app, os.urandom(32)), False)
        force = record.get("force")
        return cls(
            app=app,
            predict=TokenCheck(record.get("predict") or ()),
            feedback=TokenCheck(record.get("feedback") or ()),
            force=TokenCheck([force] if force else ()),
            ids=RequestIds(app, bytes.fromhex(record["key"])),
            enabled=bool(record.get("auth")),
            rev=str(record.get("rev") or ""),
        )


def _token(ref: str, where: str, environ: Mapping[str, str] | None) -> str:
    """The SHA-256 of the token ``ref`` names; errors name ``where`` and ``ref``, never the value."""
    token = str(resolve_secrets(ref, where, environ)).strip()
    if len(token) < TOKEN_MIN_CHARS:
        raise ConfigError(
            f"{where}: {ref} is {len(token)} characters long; a token needs at least {TOKEN_MIN_CHARS} "
            "(make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if (
        len(token) > TOKEN_MAX_CHARS
        or not token.isascii()
        or any(c.isspace() for c in token)
        or not token.isprintable()
    ):
        raise ConfigError(
            f"{where}: {ref} must be printable ASCII without spaces (it travels in an HTTP header), "
            f"at most {TOKEN_MAX_CHARS} long"
        )
    return token_hash(token)


def _tokens(refs: Sequence[str], field: str, environ: Mapping[str, str] | None) -> list[str]:
    return sorted({_token(ref, f"{field}[{i}]", environ) for i, ref in enumerate(refs)})


def auth_record(
    app: str,
    *,
    predict_tokens: Sequence[str] = (),
    feedback_tokens: Sequence[str] = (),
    force_token: str | None = None,
    secret: str | None = None,
    has_auth: bool = False,
    previous: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The app's auth record, resolving the references (``${env:..}``, ``${file:..}``) here, in
    this process: token hashes, the force-variant token's hash, the request-id key (derived
    from ``secret``; without one, the ``previous`` record's generated key, else a new one) and
    ``rev``, a digest of all of it (a change reconfigures the routers).  Raises
    :class:`ConfigError` naming the field, never a value."""
    if secret is not None:
        value = str(resolve_secrets(secret, "secret", environ))
        if len(value) < TOKEN_MIN_CHARS:
            raise ConfigError(f"secret: {secret} is {len(value)} characters long; it needs at least {TOKEN_MIN_CHARS}")
        key, source = derive_key(value, app).hex(), "secret"
    elif previous is not None and previous.get("source") == "generated" and previous.get("key"):
        key, source = str(previous["key"]), "generated"
    else:
        key, source = secrets.token_hex(32), "generated"
    force = None
    if force_token is not None:
        force = _token(force_token, "force_variant.token", environ)
    record: dict[str, Any] = {
        "auth": has_auth,
        "predict": _tokens(predict_tokens, "auth.predict_tokens", environ),
        "feedback": _tokens(feedback_tokens, "auth.feedback_tokens", environ),
        "force": force,
        "key": key,
        "source": source,
    }
    record["rev"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


def describe(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a status may show of an auth record (counts and kinds, nothing secret)."""
    if record is None:
        return {"auth": False, "predict_tokens": 0, "feedback_tokens": 0, "force_variant": False, "id_key": None}
    return {
        "auth": bool(record.get("auth")),
        "predict_tokens": len(record.get("predict") or ()),
        "feedback_tokens": len(record.get("feedback") or ()),
        "force_variant": bool(record.get("force")),
        "id_key": record.get("source"),
    }
