"""Canary rollout events in the metadata store (table ``rollout_events``, append-only).

Every step of a rollout (``started``, ``step``, ``paused``, ``rolled_back``,
``promoted``, ``aborted``, ``error``...) is one row: the app, the rollout's id, the
time, the event and a JSON detail (weights, the window's numbers, the guardrail
that failed with its observed and allowed values).  The table is created on the
:class:`MetadataStore`'s connection (``CREATE TABLE IF NOT EXISTS``), so an older
database file simply gains it.

The writer is the rollout controller actor (on the head node, given the SQLite
path): the one exception to "only the driver writes the metadata store", since a
rollout outlives the driver that started it.  SQLite's WAL and busy timeout keep its
short transactions safe beside a driver's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raypipe.store.metadata import MetadataStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    rollout_id TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS rollout_events_app ON rollout_events(app, id);
CREATE INDEX IF NOT EXISTS rollout_events_rollout ON rollout_events(rollout_id, id)
"""

#: Events after which a rollout is over.
TERMINAL = ("promoted", "rolled_back", "aborted", "failed")


@dataclass(frozen=True)
class RolloutEvent:
    id: int
    app: str
    rollout_id: str
    at: float
    event: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RolloutStore:
    """Rollout events in a :class:`MetadataStore` (its connection and transactions)."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self._conn = meta._conn
        with meta._tx() as c:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)

    def record(
        self, app: str, rollout_id: str, event: str, detail: Mapping[str, Any] | None = None, at: float | None = None
    ) -> RolloutEvent:
        at = time.time() if at is None else at
        doc = dict(detail or {})
        with self.meta._tx() as c:
            cur = c.execute(
                "INSERT INTO rollout_events(app, rollout_id, at, event, detail_json) VALUES (?, ?, ?, ?, ?)",
                (app, rollout_id, at, event, json.dumps(doc, default=str, allow_nan=False)),
            )
            rid = int(cur.lastrowid or 0)
        return RolloutEvent(rid, app, rollout_id, at, event, doc)

    def events(self, app: str, rollout_id: str | None = None) -> list[RolloutEvent]:
        """The events of one rollout (default: the app's latest), oldest first."""
        rollout_id = rollout_id or self.latest_rollout_id(app)
        if rollout_id is None:
            return []
        rows = self._conn.execute(
            "SELECT * FROM rollout_events WHERE app = ? AND rollout_id = ? ORDER BY id", (app, rollout_id)
        ).fetchall()
        return [_event(r) for r in rows]

    def latest_rollout_id(self, app: str) -> str | None:
        row = self._conn.execute(
            "SELECT rollout_id FROM rollout_events WHERE app = ? ORDER BY id DESC LIMIT 1", (app,)
        ).fetchone()
        return None if row is None else str(row["rollout_id"])

    def rollouts(self, app: str) -> list[dict[str, Any]]:
        """Every rollout of ``app``, oldest first: id, started, last event and when."""
        rows = self._conn.execute(
            "SELECT rollout_id, MIN(at) AS started_at, MAX(id) AS last_id FROM rollout_events WHERE app = ? "
            "GROUP BY rollout_id ORDER BY MIN(id)",
            (app,),
        ).fetchall()
        out = []
        for r in rows:
            last = self._conn.execute("SELECT event, at FROM rollout_events WHERE id = ?", (r["last_id"],)).fetchone()
            out.append(
                {
                    "rollout_id": r["rollout_id"],
                    "started_at": r["started_at"],
                    "last_event": last["event"],
                    "last_at": last["at"],
                    "finished": last["event"] in TERMINAL,
                }
            )
        return out


def _event(row: Any) -> RolloutEvent:
    return RolloutEvent(
        int(row["id"]), row["app"], row["rollout_id"], float(row["at"]), row["event"], json.loads(row["detail_json"])
    )
