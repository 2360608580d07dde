"""Sending one notification to one sink: a signed HTTP POST or a mail over SMTP (standard
library only).  Each send either returns, or raises :class:`DeliveryFailed` saying whether
trying again could help."""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from raypipe.config.notify import NotifySink, SmtpConfig, WebhookConfig
from raypipe.notify.events import Notification
from raypipe.secrets import resolve_secrets

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "DeliveryFailed", "body_of", "send", "sign", "verify"]

SIGNATURE_HEADER = "X-Raypipe-Signature"
TIMESTAMP_HEADER = "X-Raypipe-Timestamp"
EVENT_HEADER = "X-Raypipe-Event"
DELIVERY_HEADER = "X-Raypipe-Delivery"


class DeliveryFailed(Exception):
    """A send that failed; ``retry``: whether another attempt could succeed (a timeout, a
    refused connection, a 5xx, 408 or 429 could; another 4xx or a missing secret could not)."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>`` keyed with ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature matches (compared in constant time) and the
    timestamp is within ``tolerance_s`` of ``now`` (a replayed old request fails)."""
    if not timestamp or not signature:
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def body_of(hook: WebhookConfig, n: Notification) -> bytes:
    """The POST body: the event as JSON, or Slack's ``{"text": ...}``."""
    doc: dict[str, Any] = {"text": n.text} if hook.format == "slack" else n.payload()
    return json.dumps(doc, sort_keys=True, default=str).encode()


def _resolved(value: str, field: str, environ: Mapping[str, str] | None) -> str:
    try:
        return str(resolve_secrets(value, field, environ))
    except Exception as e:  # noqa: BLE001 - a ConfigError: unset variable, unreadable file
        raise DeliveryFailed(str(e), retry=False) from None


def post(hook: WebhookConfig, n: Notification, where: str, environ: Mapping[str, str] | None = None) -> None:
    """POST ``n`` to the webhook, signed when it has a ``secret``."""
    url = _resolved(hook.url, f"{where}.webhook.url", environ)
    if not url.startswith(("http://", "https://")):
        raise DeliveryFailed(f"{where}.webhook.url: {hook.url} is not an http:// or https:// URL", retry=False)
    body = body_of(hook, n)
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "raypipe-notify",
        EVENT_HEADER: n.event,
        DELIVERY_HEADER: n.id,
        TIMESTAMP_HEADER: ts,
    }
    if hook.secret is not None:
        headers[SIGNATURE_HEADER] = sign(_resolved(hook.secret, f"{where}.webhook.secret", environ), ts, body)
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=hook.timeout_s) as resp:  # http(s) only: checked above
            resp.read(65536)
    except urllib.error.HTTPError as e:
        raise DeliveryFailed(f"HTTP {e.code} {e.reason}", retry=e.code >= 500 or e.code in (408, 429)) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DeliveryFailed(f"{type(e).__name__}: {reason}", retry=not isinstance(e, ValueError)) from None


def mail(cfg: SmtpConfig, n: Notification, where: str, environ: Mapping[str, str] | None = None) -> None:
    """Send ``n`` as a plain-text mail through the SMTP server."""
    msg = EmailMessage()
    msg["Subject"] = n.subject()
    msg["From"] = cfg.from_
    msg["To"] = ", ".join(cfg.to)
    msg["X-Raypipe-Event"] = n.event
    details = "\n".join(f"{k}: {v}" for k, v in n.detail.items())
    msg.set_content(f"{n.text}\n\n{details}\n\nevent {n.event}, id {n.id}\n")
    password = _resolved(cfg.password, f"{where}.smtp.password", environ) if cfg.password else None
    try:
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
            smtp.ehlo()
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if cfg.user is not None:
                smtp.login(cfg.user, password or "")
            smtp.send_message(msg)
    except smtplib.SMTPResponseException as e:
        raise DeliveryFailed(f"SMTP {e.smtp_code}: {e.smtp_error!r}", retry=e.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryFailed(f"{type(e).__name__}: {e}", retry=True) from None


def send(sink: NotifySink, n: Notification, where: str, environ: Mapping[str, str] | None = None) -> None:
    """Deliver ``n`` to ``sink`` once (``where`` names the sink in errors: ``notify[0]``)."""
    if sink.webhook is not None:
        post(sink.webhook, n, where, environ)
    elif sink.smtp is not None:
        mail(sink.smtp, n, where, environ)
