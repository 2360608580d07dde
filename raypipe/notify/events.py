"""One notification: the event's name, a line of text for people, and its details."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class Notification:
    """What happened, once (retries of its delivery carry the same ``id``).

    ``waited_s``: how long a stage has waited (``stage_waiting``: sent to a sink once it
    reaches the sink's ``waiting_minutes``); ``key``: sent at most once per sink under this key."""

    event: str
    text: str
    detail: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: float = field(default_factory=time.time)
    waited_s: float | None = None
    key: str | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON body of a ``format: json`` webhook."""
        when = datetime.fromtimestamp(self.at, tz=timezone.utc).isoformat(timespec="seconds")
        return {"id": self.id, "event": self.event, "at": when, "text": self.text, "detail": self.detail}

    def subject(self) -> str:
        """A mail's subject: the text's first line, shortened."""
        line = self.text.splitlines()[0] if self.text else self.event
        return line if len(line) <= 120 else line[:117] + "..."
