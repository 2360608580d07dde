"""``notify:`` (see docs/notifications.md): where raypipe tells people what happened, in a
pipeline or the platform config."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from raypipe.config.strict import StrictModel
from raypipe.secrets import has_literal_secret, references

NotifyEventName = Literal[
    "run_failed",
    "run_succeeded",
    "gate_failed",
    "rollout_promoted",
    "rollout_rolled_back",
    "drift_event",
    "loop_cycle_ended",
    "stage_waiting",
]
#: Every event a sink can ask for (its default ``events``).
NOTIFY_EVENTS: tuple[NotifyEventName, ...] = get_args(NotifyEventName)


def _reference_only(value: str | None, what: str) -> str | None:
    """``value`` when it is one secret reference and nothing else (a secret written as it is
    would be stored with every copy of the config)."""
    if value is None:
        return None
    refs = references(value)
    if len(refs) != 1 or refs[0] != value.strip():
        raise ValueError(
            f"{what}: a secret is written only as a reference, ${{env:NAME}} or ${{file:PATH}}, not as it is"
        )
    return value.strip()


class WebhookConfig(StrictModel):
    """An HTTP(S) endpoint that gets a POST per event.  ``format: json``: the event as a JSON
    object; ``slack``: ``{"text": ...}`` (Slack, Mattermost, Teams' and Discord's Slack-compatible
    hooks).  With ``secret``, each request is signed: ``X-Raypipe-Signature: sha256=<hex>``, the
    HMAC-SHA256 of ``<X-Raypipe-Timestamp>.<body>`` with the secret."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"url", "secret"})

    #: `http://` or `https://` URL, or a reference to one (`${env:SLACK_WEBHOOK_URL}`).
    url: Annotated[str, Field(min_length=1)]
    #: The signing key, as a reference only: `${env:NAME}` or `${file:PATH}`.
    secret: str | None = None
    #: `json` (the whole event) or `slack` (`{"text": ...}`).
    format: Literal["json", "slack"] = "json"
    #: Seconds one request may take (connect and answer).
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if references(v):
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v[:60]!r}: expected an http:// or https:// URL (or a ${{env:NAME}} reference)")
        if has_literal_secret(v):
            raise ValueError("the URL holds a password or token as it is: write the URL as a ${env:NAME} reference")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return _reference_only(v, "secret")


class SmtpConfig(StrictModel):
    """A mail server that sends one message per event to ``to``.  ``starttls`` upgrades the
    connection before logging in (port 587); ``password`` is a reference only."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True, serialize_by_alias=True)
    reference_fields: ClassVar[frozenset[str]] = frozenset({"password"})

    #: The SMTP server's host name.
    host: Annotated[str, Field(min_length=1)]
    #: Its port: 587 (submission, with starttls) or 25.
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    #: The sender's address.
    from_: Annotated[str, Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$")]
    #: The recipients' addresses.
    to: Annotated[list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]], Field(min_length=1)]
    #: Upgrade the connection with STARTTLS before anything is sent.
    starttls: bool = True
    #: The login name (none: no login).
    user: str | None = None
    #: The login password, as a reference only: `${env:NAME}` or `${file:PATH}`.
    password: str | None = None
    #: Seconds the conversation with the server may take.
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0

    @field_validator("password")
    @classmethod
    def _password(cls, v: str | None) -> str | None:
        return _reference_only(v, "password")

    @model_validator(mode="after")
    def _login(self) -> SmtpConfig:
        if self.password is not None and self.user is None:
            raise ValueError("password without user: give the login name too")
        return self


class NotifySink(StrictModel):
    """One receiver (a ``webhook`` or an ``smtp`` server, one of the two) and the events it
    gets.  Delivery is in the background: a failed one is retried ``retries`` times, waiting
    ``backoff_s`` and then twice as long each time; a receiver that is down never slows or
    fails a run."""

    #: An HTTP endpoint (JSON, or Slack-compatible text).
    webhook: WebhookConfig | None = None
    #: A mail server.
    smtp: SmtpConfig | None = None
    #: The events this receiver gets (default: all of them).
    events: list[NotifyEventName] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    #: `stage_waiting`: once a stage has waited this many minutes for its resources (told once per attempt).
    waiting_minutes: Annotated[float, Field(gt=0)] = 30.0
    #: Attempts after the first when delivery fails.
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    #: Seconds before the first retry (doubling after each).
    backoff_s: Annotated[float, Field(ge=0, le=600)] = 1.0

    @model_validator(mode="after")
    def _one_kind(self) -> NotifySink:
        if (self.webhook is None) == (self.smtp is None):
            raise ValueError("give exactly one of webhook or smtp")
        if not self.events:
            raise ValueError(f"events: empty; name some of {', '.join(NOTIFY_EVENTS)} (or leave it out: all)")
        return self

    def describe(self) -> str:
        """Where it goes, for log lines (no secret: a webhook's scheme and host only)."""
        if self.webhook is not None:
            url = self.webhook.url
            if references(url):
                return f"webhook {url}"
            scheme, _, rest = url.partition("://")
            return f"webhook {scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}"
        assert self.smtp is not None
        return f"smtp {self.smtp.host}:{self.smtp.port}"
