"""Secrets are referenced, never stored: ``${env:NAME}`` and ``${file:PATH}`` references, and
:func:`redact` for the literal ones a user writes anyway.

A reference is text inside a YAML string value (or a ``--db``/``$RAYPIPE_DB`` URL)::

    metadata: postgresql://ml:${env:PG_PASSWORD}@db.internal/raypipe
    params: {args: {api_token: "${file:/run/secrets/api_token}"}}

It stays in the validated config as written, so whatever stores or passes the config on
(``runs.config_json``, a closed loop's retraining YAML, Ray's KV, a child's environment)
holds the reference, never the value.  :func:`resolve_secrets` replaces references with
their values where a value is *used*: the metadata store's URL when the store connects, a
stage's params in its task, ``ray.runtime_env`` when Ray starts.  ``${env:NAME}`` is the
environment variable ``NAME`` of the process resolving it; ``${file:PATH}`` the text of a
file (``~`` expanded, relative to the working directory, one trailing newline dropped).
``$${`` is a literal ``${`` (``$${env:X}`` is the text ``${env:X}``).  A variable that is not
set or a file that cannot be read is a :class:`~raypipe.exceptions.ConfigError` naming the
field and the reference, never a value.

:func:`redact` takes the passwords out of URLs (``scheme://user:***@host``, any scheme),
query parameters (``?password=***``) and libpq connection strings (``password=***``), for
messages and for what is stored.  A password written as references only is kept: it is
not a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from raypipe.exceptions import ConfigError, RaypipeError

__all__ = [
    "DB_ENV",
    "REDACTED",
    "actor_env",
    "actor_url",
    "first_reference",
    "has_literal_secret",
    "has_references",
    "is_redacted",
    "redact",
    "reference_errors",
    "references",
    "resolve_secrets",
]

#: What :func:`redact` puts in place of a secret.
REDACTED = "***"

# ``$${...}`` (an escaped literal) or ``${env:NAME}`` / ``${file:PATH}``.
_REF = re.compile(r"(\$?)\$\{(env|file):([^}]*)\}")
_OPENING = re.compile(r"\$\{(?:env|file):")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _refs(text: str) -> Iterator[re.Match[str]]:
    """The references in ``text`` (escaped ones left out)."""
    for m in _REF.finditer(text):
        if not m.group(1):
            yield m


def references(text: str) -> list[str]:
    """The references written in ``text``: ``["${env:PG_PASSWORD}"]``."""
    return [m.group(0) for m in _refs(text)] if "${" in text else []


def first_reference(value: Any) -> str | None:
    """The first reference in ``value`` (a string, or lists and mappings of them), if any."""
    for _, text in _walk(value, ""):
        found = references(text)
        if found:
            return found[0]
    return None


def has_references(value: Any) -> bool:
    """Whether ``value`` (a string, or lists and mappings of them) holds a reference."""
    return first_reference(value) is not None


def _problem(text: str) -> str | None:
    """What is wrong with the references in ``text``, if anything."""
    if "${" not in text:
        return None
    for m in _refs(text):
        kind, arg = m.group(2), m.group(3)
        if kind == "env" and not _ENV_NAME.match(arg):
            return f"{m.group(0)}: {arg!r} is not an environment variable name (letters, digits and '_')"
        if kind == "file" and not arg.strip():
            return f"{m.group(0)}: no file named"
    closed = {m.start() + len(m.group(1)) for m in _REF.finditer(text)}
    for m in _OPENING.finditer(text):
        if m.start() not in closed:
            return f"{text[m.start() :][:40]!r}: a reference is not closed with '}}'"
    return None


def _walk(value: Any, loc: str) -> Iterator[tuple[str, str]]:
    """``(field, text)`` of every string in ``value`` that opens a reference (maybe escaped or broken)."""
    if isinstance(value, str):
        if "${" in value and _OPENING.search(value):
            yield loc, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, f"{loc}.{k}" if loc else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{loc}[{i}]")


def reference_errors(value: Any, field: str = "") -> list[str]:
    """Malformed references in ``value`` (``"field: problem"``), checked when a config is
    loaded so a typo fails before anything runs."""
    out = []
    for loc, text in _walk(value, field):
        problem = _problem(text)
        if problem is not None:
            out.append(f"{loc}: {problem}" if loc else problem)
    return out


def _read_file(ref: str, path: str, field: str) -> str:
    try:
        text = Path(path.strip()).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(f"{field}: {ref}: cannot read the file: {reason}") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _resolve_text(text: str, field: str, environ: Mapping[str, str]) -> str:
    if "${" not in text:
        return text
    problem = _problem(text)
    if problem is not None:
        raise ConfigError(f"{field}: {problem}")

    def value(m: re.Match[str]) -> str:
        if m.group(1):  # $${...}: the literal ${...}
            return m.group(0)[1:]
        kind, arg, ref = m.group(2), m.group(3), m.group(0)
        if kind == "env":
            if arg not in environ:
                raise ConfigError(f"{field}: {ref}: the environment variable {arg} is not set")
            return environ[arg]
        return _read_file(ref, arg, field)

    return _REF.sub(value, text)


def resolve_secrets(value: Any, field: str = "value", environ: Mapping[str, str] | None = None) -> Any:
    """``value`` with every reference replaced by its value (strings, and lists, tuples and
    mappings of them, at any depth; anything else as it is).  ``field`` names ``value`` in
    errors (``metadata``, ``stages.train.params``); ``environ``: default ``os.environ``.
    Raises :class:`ConfigError` naming the field and the reference, never a value."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        return _resolve_text(value, field, env)
    if isinstance(value, Mapping):
        return {k: resolve_secrets(v, f"{field}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_secrets(v, f"{field}[{i}]", env) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(resolve_secrets(v, f"{field}[{i}]", env) for i, v in enumerate(value))
    return value


# --------------------------------------------------------------------------- redaction

#: Names of query parameters and connection-string keys whose value is a secret.
_SECRET_KEY = re.compile(
    r"password|passwd|^pwd$|^pass$|secret|token|api_?key|private_?key|credential|signature|^sig$",
    re.IGNORECASE,
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
# user:password@host, the password up to the last '@' (as urlsplit reads a raw '@' in it),
# a raw '/' in it too (an object store's secret key often has one; better hide too much);
# ``host:8080/path@x`` is a port, not a password.
_USERINFO = re.compile(r"^(?P<user>[^:/?#@\s]*):(?!\d+/)(?P<pw>[^?#\s]*)@(?P<host>[^@/?#\s]*)")
_QUERY_PARAM = re.compile(r"(?P<pre>[?&](?P<key>[^=&#]+)=)(?P<val>[^&#]*)")
_KEYWORD = re.compile(r"(?P<pre>(?:^|(?<=\s))(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*)(?P<val>'(?:[^'\\]|\\.)*'|\S*)")


def _kept(value: str) -> bool:
    """A value that is no secret: empty, already redacted, or references only."""
    return not value or value == REDACTED or (bool(references(value)) and not _REF.sub("", value))


def _hide(m: re.Match[str]) -> str:
    """A ``key=value`` match with its value redacted when the key names a secret."""
    value = m.group("val")
    if not _SECRET_KEY.search(m.group("key")) or _kept(value.strip("'")):
        return m.group(0)
    return m.group("pre") + REDACTED


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    m = _USERINFO.match(rest)
    if m is not None and not _kept(m.group("pw")):
        rest = f"{m.group('user')}:{REDACTED}@{m.group('host')}{rest[m.end() :]}"
    head, q, query = rest.partition("?")
    if q:
        query = _QUERY_PARAM.sub(_hide, "?" + query)[1:]
    return f"{scheme}://{head}{q}{query}"


def redact(text: str) -> str:
    """``text`` without secrets, for messages and stored copies: the password of every URL
    (``postgresql+psycopg://u:***@h/db``, ``s3://KEY:***@bucket``), secret query parameters
    (``?password=***``, ``sslpassword``, ``token``, ``secret``...) and secret keywords of a
    libpq connection string (``host=h password=***``).  References are kept."""
    if not isinstance(text, str) or not text:
        return text
    out = _URL.sub(lambda m: _redact_url(m.group(0)), text) if "://" in text else text
    return _KEYWORD.sub(_hide, out) if "=" in out else out


def has_literal_secret(text: str | None) -> bool:
    """Whether ``text`` holds a secret written as it is (what :func:`redact` would hide)."""
    return bool(text) and redact(text or "") != text


def is_redacted(text: str | None) -> bool:
    """Whether :func:`redact` took a secret out of ``text`` (it cannot be used as it is)."""
    return bool(text) and (f":{REDACTED}@" in (text or "") or f"={REDACTED}" in (text or ""))


# --------------------------------------------------------------------------- actors

#: The environment variable a process reads its metadata store from (before a pipeline's ``metadata``).
DB_ENV = "RAYPIPE_DB"


def actor_env(url: str, var: str = DB_ENV) -> dict[str, str] | None:
    """The environment variables a detached actor that opens ``url`` starts with: ``{var: url}``
    when the URL holds a password written as it is (the actor is given, and Ray keeps in its
    KV and the actor's arguments, only :func:`redact`'s form), else none: references resolve
    in the actor's own environment.  (Ray keeps an actor's ``runtime_env`` too, shown to
    whoever lists actors in detail: a reference keeps the password out of Ray altogether.)"""
    return {var: url} if has_literal_secret(url) else None


def actor_url(stored: str, environ: Mapping[str, str], var: str = DB_ENV) -> str:
    """The URL an actor opens: ``stored`` (what it was given), unless a password was redacted
    out of it; then ``$var`` of its environment (:func:`actor_env`), which must be the same
    store.  Raises :class:`RaypipeError` saying how to fix it."""
    if not is_redacted(stored):
        return stored
    value = environ.get(var)
    if not value or redact(value) != stored:
        raise RaypipeError(
            f"the metadata store {stored} had its password written as it is, which Ray does not keep, and "
            f"${var} in this actor's environment does not name that store: start it again (deploy, rollout), "
            "or write the password as a reference: postgresql://user:${env:PG_PASSWORD}@host/db with "
            "PG_PASSWORD set where the actor runs (the head node)"
        )
    return value
