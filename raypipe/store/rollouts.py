"""Append-only event logs of serving operations in the metadata store.

* ``rollout_events`` (:class:`RolloutStore`): every step of a canary rollout
  (``started``, ``step``, ``paused``, ``rolled_back``, ``promoted``, ``aborted``,
  ``error``...), keyed by the rollout's id.
* ``loop_events`` (:class:`LoopStore`): the closed loop of an app
  (:mod:`raypipe.loop`): ``armed``, ``drift``, ``retrain_started``,
  ``retrain_finished``, ``canary_started``, ``promoted``, ``rolled_back``... keyed
  by the cycle's id (one cycle per drift event acted on).

One row per event: the app, the series id, the time, the event and a JSON detail
(weights, the window's numbers, the guardrail that failed with its observed and
allowed values, the drifted features and their statistics).  Tables are created on
the :class:`MetadataStore`'s connection (``CREATE TABLE IF NOT EXISTS``), so an
older database simply gains them.

The writers are the rollout and loop controller actors (on the head node, given
the store's ``url``): the exceptions to "only the driver writes the metadata store",
since rollouts and loops outlive the driver that started them.  SQLite's WAL and
busy timeout keep their short transactions safe beside a driver's; on PostgreSQL an
advisory lock per table makes ids increase in commit order, so a reader asking for
the events after an id never skips one committed late.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from raypipe.store.metadata import MetadataStore
from raypipe.store.sql import retrying

#: Events after which a rollout is over.
TERMINAL = ("promoted", "rolled_back", "aborted", "failed")


@dataclass(frozen=True)
class StoredEvent:
    id: int
    app: str
    #: The rollout's or the loop cycle's id.
    series: str
    at: float
    event: str
    detail: dict[str, Any]
    #: The name of ``series`` in :meth:`to_dict` (``rollout_id`` or ``cycle_id``).
    series_key: str = "series"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            self.series_key: self.series,
            "at": self.at,
            "event": self.event,
            "detail": self.detail,
        }


#: The rollout store's events (``.series`` is the rollout id).
RolloutEvent = StoredEvent


class EventLog:
    """One append-only event table in a :class:`MetadataStore` (its connection and transactions)."""

    TABLE: ClassVar[str]
    SERIES: ClassVar[str]
    #: Events after which a series is over.
    FINAL: ClassVar[tuple[str, ...]] = ()

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self._conn = meta._conn
        self._create()

    @retrying
    def _create(self) -> None:
        t, s = self.TABLE, self.SERIES
        with self.meta._tx("schema") as c:
            c.create(
                [
                    f"CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, "
                    f"{s} TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL, detail_json TEXT NOT NULL DEFAULT '{{}}')",
                    f"CREATE INDEX IF NOT EXISTS {t}_app ON {t}(app, id)",
                    f"CREATE INDEX IF NOT EXISTS {t}_series ON {t}({s}, id)",
                ]
            )

    @retrying
    def record(
        self, app: str, series: str, event: str, detail: Mapping[str, Any] | None = None, at: float | None = None
    ) -> StoredEvent:
        at = time.time() if at is None else at
        doc = dict(detail or {})
        with self.meta._tx(f"events:{self.TABLE}") as c:
            rid = c.insert_id(
                f"INSERT INTO {self.TABLE}(app, {self.SERIES}, at, event, detail_json) VALUES (?, ?, ?, ?, ?)",
                (app, series, at, event, json.dumps(doc, default=str, allow_nan=False)),
            )
        return StoredEvent(rid, app, series, at, event, doc, self.SERIES)

    def events(self, app: str, series: str | None = None) -> list[StoredEvent]:
        """The events of one series (default: the app's latest), oldest first."""
        series = series or self.latest(app)
        if series is None:
            return []
        rows = self._conn.execute(
            f"SELECT * FROM {self.TABLE} WHERE app = ? AND {self.SERIES} = ? ORDER BY id", (app, series)
        ).fetchall()
        return [self._event(r) for r in rows]

    def all_events(self, app: str, since_id: int = 0) -> list[StoredEvent]:
        """Every event of ``app`` with ``id > since_id``, oldest first."""
        rows = self._conn.execute(
            f"SELECT * FROM {self.TABLE} WHERE app = ? AND id > ? ORDER BY id", (app, since_id)
        ).fetchall()
        return [self._event(r) for r in rows]

    def latest(self, app: str) -> str | None:
        row = self._conn.execute(
            f"SELECT {self.SERIES} FROM {self.TABLE} WHERE app = ? ORDER BY id DESC LIMIT 1", (app,)
        ).fetchone()
        return None if row is None else str(row[0])

    def series(self, app: str) -> list[dict[str, Any]]:
        """Every series of ``app``, oldest first: id, started, last event and when."""
        t, s = self.TABLE, self.SERIES
        rows = self._conn.execute(
            f"SELECT {s} AS sid, MIN(at) AS started_at, MAX(id) AS last_id FROM {t} WHERE app = ? "
            f"GROUP BY {s} ORDER BY MIN(id)",
            (app,),
        ).fetchall()
        out = []
        for r in rows:
            last = self._conn.execute(f"SELECT event, at FROM {t} WHERE id = ?", (r["last_id"],)).fetchone()
            out.append(
                {
                    s: r["sid"],
                    "started_at": r["started_at"],
                    "last_event": last["event"],
                    "last_at": last["at"],
                    "finished": last["event"] in self.FINAL,
                }
            )
        return out

    def _event(self, row: Any) -> StoredEvent:
        return StoredEvent(
            int(row["id"]),
            row["app"],
            row[self.SERIES],
            float(row["at"]),
            row["event"],
            json.loads(row["detail_json"]),
            self.SERIES,
        )


class RolloutStore(EventLog):
    """Canary rollout events (``rollout_events``)."""

    TABLE = "rollout_events"
    SERIES = "rollout_id"
    FINAL = TERMINAL

    def latest_rollout_id(self, app: str) -> str | None:
        return self.latest(app)

    def rollouts(self, app: str) -> list[dict[str, Any]]:
        return self.series(app)


#: Events after which a loop cycle is over.
LOOP_FINAL = ("promoted", "rolled_back", "gate_failed", "retrain_failed", "no_new_model", "cancelled", "failed")


class LoopStore(EventLog):
    """Closed-loop events (``loop_events``): one series per cycle (drift event acted on);
    the loop's own events (``armed``, ``disarmed``, ``drift`` not acted on) have the series ``loop``."""

    TABLE = "loop_events"
    SERIES = "cycle_id"
    FINAL = LOOP_FINAL
