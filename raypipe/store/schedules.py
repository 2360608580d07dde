"""Schedules in the metadata store (schema version 5): table ``schedules`` (one row per schedule:
its pipeline file as applied, its triggers, owner, paused flag and trigger state) and
``schedule_fires`` (every fire: when it was due, why, what became of it, its run and, for
``on_data``, the files it passed).

A tick's fires and the schedule's new state are written in one transaction
(:meth:`ScheduleStore.record_tick`), before any run starts, and only if the state is still the
one the tick started from (``tick`` counts them): a controller that restarts, or a second one,
never fires the same time twice; ``(schedule, fire_key)`` is unique besides."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.store.metadata import MetadataStore, current_actor, write_audit
from raypipe.store.sql import Row, retrying


@dataclass(frozen=True)
class StoredSchedule:
    name: str
    pipeline: str
    owner: str | None
    created_by: str | None
    created_at: float
    updated_at: float
    paused: bool
    pipeline_path: str | None
    workdir: str
    pipeline_yaml: str
    triggers: dict[str, Any]
    state: dict[str, Any]
    tick: int

    def to_dict(self, *, with_yaml: bool = False) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "pipeline_yaml" or with_yaml}
        return doc


@dataclass(frozen=True)
class StoredFire:
    id: int
    schedule: str
    fire_key: str
    due: float
    fired_at: float
    kind: str
    reason: str
    status: str
    note: str
    run_id: str | None
    files: dict[str, Any] | None
    run_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ScheduleNotFound(RaypipeError):
    pass


class ScheduleStore:
    """The schedules of one :class:`MetadataStore`."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self._conn = meta._conn

    @staticmethod
    def _schedule(r: Row) -> StoredSchedule:
        return StoredSchedule(
            r["name"],
            r["pipeline"],
            r["owner"],
            r["created_by"],
            float(r["created_at"]),
            float(r["updated_at"]),
            bool(r["paused"]),
            r["pipeline_path"],
            r["workdir"],
            r["pipeline_yaml"],
            json.loads(r["triggers_json"]),
            json.loads(r["state_json"]),
            int(r["tick"]),
        )

    @staticmethod
    def _fire(r: Row) -> StoredFire:
        keys = r.keys()
        return StoredFire(
            int(r["id"]),
            r["schedule"],
            r["fire_key"],
            float(r["due"]),
            float(r["fired_at"]),
            r["kind"],
            r["reason"],
            r["status"],
            r["note"],
            r["run_id"],
            json.loads(r["files_json"]) if r["files_json"] else None,
            r["run_status"] if "run_status" in keys else None,
        )

    # ------------------------------------------------------------------ schedules
    def find(self, name: str) -> StoredSchedule | None:
        row = self._conn.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._schedule(row)

    def get(self, name: str) -> StoredSchedule:
        found = self.find(name)
        if found is None:
            names = [s.name for s in self.all()]
            known = f"; schedules: {', '.join(names)}" if names else "; there are none (raypipe schedule apply FILE)"
            raise ScheduleNotFound(f"no schedule {name!r} in {self.meta.location}{known}")
        return found

    def all(self) -> list[StoredSchedule]:
        return [self._schedule(r) for r in self._conn.execute("SELECT * FROM schedules ORDER BY name").fetchall()]

    @retrying
    def apply(
        self,
        name: str,
        *,
        pipeline: str,
        owner: str | None,
        pipeline_yaml: str,
        pipeline_path: str | None,
        workdir: str,
        triggers: Mapping[str, Any],
        state: Mapping[str, Any],
    ) -> bool:
        """Create or replace schedule ``name`` (its state starts again from ``state``; a paused
        one stays paused, its fires are kept); True when it was new."""
        now = time.time()
        actor = current_actor()
        with self.meta._tx("schedules") as c:
            old = c.execute("SELECT tick, created_by, created_at FROM schedules WHERE name = ?", (name,)).fetchone()
            args = (pipeline, owner, pipeline_path, workdir, pipeline_yaml, json.dumps(dict(triggers)))
            if old is None:
                c.execute(
                    "INSERT INTO schedules(name, pipeline, owner, pipeline_path, workdir, pipeline_yaml, triggers_json, "
                    "created_by, created_at, updated_at, paused, state_json, tick) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0)",
                    (name, *args, actor, now, now, json.dumps(dict(state))),
                )
            else:
                c.execute(
                    "UPDATE schedules SET pipeline = ?, owner = ?, pipeline_path = ?, workdir = ?, pipeline_yaml = ?, "
                    "triggers_json = ?, updated_at = ?, state_json = ?, tick = tick + 1 WHERE name = ?",
                    (*args, now, json.dumps(dict(state)), name),
                )
            write_audit(c, "schedule.apply", f"schedule:{name}", {"pipeline": pipeline, "owner": owner})
        return old is None

    @retrying
    def set_paused(self, name: str, paused: bool) -> None:
        self.get(name)
        with self.meta._tx("schedules") as c:
            c.execute(
                "UPDATE schedules SET paused = ?, updated_at = ? WHERE name = ?", (int(paused), time.time(), name)
            )
            write_audit(c, "schedule.pause" if paused else "schedule.resume", f"schedule:{name}")

    @retrying
    def delete(self, name: str) -> None:
        """Delete the schedule and its fires (runs it started stay)."""
        self.get(name)
        with self.meta._tx("schedules") as c:
            c.execute("DELETE FROM schedule_fires WHERE schedule = ?", (name,))
            c.execute("DELETE FROM schedules WHERE name = ?", (name,))
            write_audit(c, "schedule.delete", f"schedule:{name}")

    # ------------------------------------------------------------------ fires
    @retrying
    def record_tick(
        self, name: str, tick: int, state: Mapping[str, Any], fires: Sequence[Mapping[str, Any]], *, at: float
    ) -> list[StoredFire] | None:
        """One tick of schedule ``name``, read at ``tick``: its fires (each a mapping with ``key``,
        ``due``, ``kind``, ``reason``, ``status``, ``note``, ``run_id``, ``files``) and its new
        state, in one transaction; the fires inserted (a key already there is left as it is).
        None when the schedule changed meanwhile (another tick, an apply, a delete): nothing written."""
        with self.meta._tx("schedules") as c:
            cur = c.execute(
                "UPDATE schedules SET state_json = ?, tick = tick + 1 WHERE name = ? AND tick = ?",
                (json.dumps(dict(state)), name, tick),
            )
            if cur.rowcount != 1:
                return None
            ids = []
            for f in fires:
                cur = c.execute(
                    "INSERT OR IGNORE INTO schedule_fires(schedule, fire_key, due, fired_at, kind, reason, status, "
                    "note, run_id, files_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        f["key"],
                        f["due"],
                        at,
                        f["kind"],
                        f["reason"],
                        f["status"],
                        f.get("note") or "",
                        f.get("run_id"),
                        None if f.get("files") is None else json.dumps(f["files"]),
                    ),
                )
                if cur.rowcount == 1:
                    row = c.execute(
                        "SELECT id FROM schedule_fires WHERE schedule = ? AND fire_key = ?", (name, f["key"])
                    ).fetchone()
                    ids.append(int(row[0]))
            if not ids:
                return []
            marks = ", ".join("?" for _ in ids)
            rows = c.execute(f"SELECT * FROM schedule_fires WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
        return [self._fire(r) for r in rows]

    @retrying
    def set_fire(self, fire_id: int, status: str, *, note: str | None = None, run_id: str | None = None) -> None:
        with self.meta._tx("schedules") as c:
            c.execute(
                "UPDATE schedule_fires SET status = ?, note = COALESCE(?, note), run_id = COALESCE(?, run_id) "
                "WHERE id = ?",
                (status, note, run_id, fire_id),
            )

    _WITH_RUN = (
        "SELECT f.*, r.status AS run_status FROM schedule_fires f LEFT JOIN runs r ON r.run_id = f.run_id "
        "WHERE f.schedule = ?"
    )

    def fires(self, name: str, limit: int = 100) -> list[StoredFire]:
        """The schedule's latest fires, oldest first, each with its run's status."""
        rows = self._conn.execute(self._WITH_RUN + " ORDER BY f.id DESC LIMIT ?", (name, limit)).fetchall()
        return [self._fire(r) for r in reversed(rows)]

    def fires_with(self, name: str, statuses: Sequence[str]) -> list[StoredFire]:
        marks = ", ".join("?" for _ in statuses)
        rows = self._conn.execute(
            self._WITH_RUN + f" AND f.status IN ({marks}) ORDER BY f.id", (name, *statuses)
        ).fetchall()
        return [self._fire(r) for r in rows]
