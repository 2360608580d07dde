"""Stage logs of a run: which attempts have one, reading them, and whether more may come
(``raypipe logs``; the files are :mod:`raypipe.store.logs`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raypipe.api.pipelines import open_metadata
from raypipe.exceptions import RaypipeError
from raypipe.runner.states import StageStatus
from raypipe.store.logs import LogChunk, log_location, read_log
from raypipe.store.metadata import MetadataStore, RunRecord, StageRunRecord

#: Stage run states whose log may still grow.
LIVE_STATES = frozenset({StageStatus.RUNNING, StageStatus.QUEUED})
#: Stage run states after which the stage runs no more in this run.
FINAL_STATES = frozenset(
    {StageStatus.SUCCEEDED, StageStatus.CACHED, StageStatus.REUSED, StageStatus.SKIPPED, StageStatus.REJECTED}
)


class NotStarted(RaypipeError):
    """The stage is in the run's pipeline but has not started (yet)."""


@dataclass(frozen=True)
class StageLog:
    """One stage attempt of a run and the log that tells what it did: its own, or for a cache
    hit the log of the attempt (in an earlier run) that made its outputs."""

    run_id: str
    stage: str
    attempt: int
    status: str
    storage: str
    log_run: str
    log_attempt: int

    @property
    def cached(self) -> bool:
        return self.log_run != self.run_id

    @property
    def live(self) -> bool:
        """The attempt has not ended: its log may grow."""
        return self.status in LIVE_STATES

    @property
    def final(self) -> bool:
        """The stage will not run again in this run."""
        return self.status in FINAL_STATES

    @property
    def location(self) -> str:
        return log_location(self.storage, self.log_run, self.stage, self.log_attempt)

    def read(self, offset: int = 0, limit: int | None = None) -> LogChunk | None:
        """The log from ``offset``; None while it is not in the store (not started, or running
        on an object-store root: uploaded when the attempt ends)."""
        try:
            return read_log(self.storage, self.log_run, self.stage, self.log_attempt, offset, limit)
        except FileNotFoundError:
            return None


def _stage_names(run: RunRecord) -> list[str]:
    try:
        return [str(s["name"]) for s in json.loads(run.config_json).get("stages", [])]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def _origin(meta: MetadataStore, stage_run_id: int) -> dict[str, Any] | None:
    row = meta._conn.execute(  # the store's one connection, as the UI's queries read it
        "SELECT s.run_id, s.attempt, r.storage FROM stage_runs s JOIN runs r ON r.run_id = s.run_id WHERE s.id = ?",
        (stage_run_id,),
    ).fetchone()
    return dict(row) if row is not None else None


def _log_of(meta: MetadataStore, run: RunRecord, sr: StageRunRecord) -> StageLog:
    if sr.attempt < 1 and sr.cached_from:
        origin = _origin(meta, sr.cached_from)
        if origin is not None:
            return StageLog(
                run.run_id, sr.stage, 0, sr.status, origin["storage"], origin["run_id"], int(origin["attempt"])
            )
    return StageLog(run.run_id, sr.stage, sr.attempt, sr.status, run.storage, run.run_id, sr.attempt)


def stage_logs(
    run_id: str, stage: str | None = None, attempt: int | None = None, db: str | None = None
) -> tuple[RunRecord, list[StageLog]]:
    """The run and the logs asked for: every attempt of ``stage`` that ran (or only ``attempt``;
    a cache hit: the log that made its outputs), or without ``stage`` the last attempt of every
    stage that started, in the order they started.  A RaypipeError names what is unknown."""
    meta = open_metadata(db)
    try:
        meta.reap_dead_drivers()  # a run whose driver died here is no longer followed
        run = meta.get_run(run_id)
        runs = meta.stage_runs(run.run_id)
        if stage is None:
            if attempt is not None:
                raise RaypipeError("--attempt needs a STAGE")
            last: dict[str, StageRunRecord] = {}
            for sr in runs:
                if sr.attempt >= 1 or sr.cached_from:
                    last.pop(sr.stage, None)
                    last[sr.stage] = sr  # ordered by the latest attempt's start
            return run, [_log_of(meta, run, sr) for sr in sorted(last.values(), key=lambda s: s.id)]
        names = _stage_names(run)
        mine = [sr for sr in runs if sr.stage == stage]
        if not mine:
            if stage in names:
                raise NotStarted(f"stage {stage!r} of run {run.run_id} has not started")
            known = ", ".join(names or sorted({sr.stage for sr in runs})) or "none"
            raise RaypipeError(f"run {run.run_id} has no stage {stage!r}; its stages: {known}")
        ran = [sr for sr in mine if sr.attempt >= 1 or sr.cached_from]
        if not ran:
            raise RaypipeError(f"stage {stage!r} of run {run.run_id} did not run ({mine[-1].status}): it has no log")
        if attempt is not None:
            picked = [sr for sr in ran if sr.attempt == attempt]
            if not picked:
                tried = sorted({sr.attempt for sr in ran if sr.attempt >= 1})
                which = f"attempts {', '.join(map(str, tried))}" if tried else "no attempt of its own (a cache hit)"
                raise RaypipeError(f"stage {stage!r} of run {run.run_id} has {which}; no attempt {attempt}")
            ran = picked[-1:]  # a requeued attempt (preempted, node lost) has several rows: the last
        by_attempt: dict[int, StageRunRecord] = {}
        for sr in ran:
            by_attempt[sr.attempt] = sr
        return run, [_log_of(meta, run, sr) for sr in by_attempt.values()]
    finally:
        meta.close()


def run_live(run_id: str, db: str | None = None) -> bool:
    """Whether the run is still running (its logs may grow, new attempts may start)."""
    meta = open_metadata(db)
    try:
        meta.reap_dead_drivers()
        return meta.get_run(run_id).status == "running"
    finally:
        meta.close()
