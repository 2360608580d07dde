"""Schema versions of the metadata store, and the migrations between them.

A store records its schema version in table ``meta`` (key ``schema_version``).  Its schema
is :data:`BASELINE` (version 1, the first versioned schema, frozen as it was written) plus,
in order, every :class:`Migration` of :data:`MIGRATIONS`; the code's version is the last
one's (:func:`code_version`).  A change of the schema is one new entry at the end of
:data:`MIGRATIONS`, never an edit of :data:`BASELINE` or of an earlier entry: its statements
are written in SQLite's dialect restricted to what both databases understand (see
:mod:`raypipe.store.sql`; :func:`~raypipe.store.sql.ddl` maps the types for PostgreSQL),
with ``postgresql`` statements of their own where the dialects differ, and ``apply`` for
what SQL alone cannot do (rewriting values, say).  Prefer additive changes (a nullable
column, a new table or index): a process already running keeps working beside them.

Opening a store (:func:`open_schema`):

* an empty database (no ``meta`` row, no ``runs`` table) gets the current schema and version;
* a store at the code's version is used as it is (a read, no write lock);
* a newer one (a newer raypipe upgraded it) is refused with a :class:`StorageError`;
* an older one is upgraded (a version 1 store first gets the tables and indexes of
  :data:`BASELINE` it lacks), one migration at a time, each in its own write transaction
  (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: holding the advisory lock ``schema``) that
  re-reads the version, runs the migration and records its version: a crash or a failing
  migration leaves the store at the last version fully applied, and processes opening it
  at once apply each migration once.  Unless ``$RAYPIPE_DB_AUTO_UPGRADE`` is ``0`` (then
  the store is refused until ``raypipe db upgrade``), opening upgrades it and logs one line.

The event logs' tables (``rollout_events``, ``loop_events``) are created when first used
(:class:`raypipe.store.rollouts.EventLog`), so a migration changing them must allow for
their absence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from raypipe.exceptions import StorageError
from raypipe.store.sql import Database, ddl, driver_error, retryable

log = logging.getLogger("raypipe.store")

#: The version of :data:`BASELINE`.
BASELINE_VERSION = 1

#: The schema at version 1 (what raypipe wrote before it read schema versions; earlier releases
#: wrote version 1 too, with some of these tables only).  Frozen: change the schema with a new
#: entry of :data:`MIGRATIONS`.
BASELINE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    status TEXT NOT NULL,
    config_json TEXT NOT NULL,
    config_path TEXT,
    storage TEXT NOT NULL,
    created_at REAL NOT NULL,
    ended_at REAL,
    error TEXT,
    driver_pid INTEGER,
    driver_host TEXT
);
CREATE TABLE IF NOT EXISTS stage_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    cache_key TEXT,
    cached_from INTEGER REFERENCES stage_runs(id),
    started_at REAL NOT NULL,
    ended_at REAL,
    error TEXT,
    node_id TEXT
);
CREATE INDEX IF NOT EXISTS stage_runs_run ON stage_runs(run_id, stage);
CREATE INDEX IF NOT EXISTS stage_runs_key ON stage_runs(cache_key, status);
CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT PRIMARY KEY,
    uri TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    schema_json TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_io (
    stage_run_id INTEGER NOT NULL REFERENCES stage_runs(id),
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES artifacts(sha256),
    PRIMARY KEY (stage_run_id, direction, name)
);
CREATE TABLE IF NOT EXISTS lineage (
    src_sha256 TEXT NOT NULL REFERENCES artifacts(sha256),
    dst_sha256 TEXT NOT NULL REFERENCES artifacts(sha256),
    stage_run_id INTEGER NOT NULL REFERENCES stage_runs(id),
    PRIMARY KEY (src_sha256, dst_sha256, stage_run_id)
);
-- The model registry (raypipe/store/registry.py).
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL REFERENCES models(name),
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL REFERENCES artifacts(sha256),
    run_id TEXT,
    stage TEXT,
    stage_run_id INTEGER,
    metrics_json TEXT NOT NULL DEFAULT '{}',
    params_json TEXT NOT NULL DEFAULT '{}',
    datasets_json TEXT NOT NULL DEFAULT '[]',
    code TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, sha256)
);
CREATE TABLE IF NOT EXISTS model_aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES model_versions(name, version)
);
CREATE TABLE IF NOT EXISTS alias_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    old_version INTEGER,
    new_version INTEGER,
    at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS alias_events_name ON alias_events(name, alias, id);
-- The register stage runs whose alias moves are committed (in the transaction that made
-- them): a resumed run completes a registration's moves at most once.
CREATE TABLE IF NOT EXISTS model_registrations (
    stage_run_id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    at REAL NOT NULL
);
-- Links of a model version to what it came from besides its lineage: the reference
-- profile for drift monitoring, the drift event and the loop cycle that retrained it.
CREATE TABLE IF NOT EXISTS model_links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value_json TEXT NOT NULL,
    at REAL NOT NULL,
    FOREIGN KEY (name, version) REFERENCES model_versions(name, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS model_links_value ON model_links(name, version, kind, value_json);
CREATE INDEX IF NOT EXISTS stage_io_sha ON stage_io(sha256, direction);
"""


@dataclass(frozen=True)
class Migration:
    """The change from schema version ``version - 1`` to ``version``: ``statements`` (in the
    common dialect, run through :func:`~raypipe.store.sql.ddl`), or ``postgresql`` instead of
    them on PostgreSQL, then ``apply`` (any work on the open transaction)."""

    version: int
    description: str
    statements: tuple[str, ...] = ()
    postgresql: tuple[str, ...] | None = None
    apply: Callable[[Database], None] | None = field(default=None, compare=False)

    def run(self, db: Database) -> None:
        """Apply the migration inside ``db``'s open transaction."""
        statements = self.postgresql if db.backend == "postgresql" and self.postgresql is not None else self.statements
        for stmt in statements:
            db.execute(ddl(stmt, db.backend))
        if self.apply is not None:
            self.apply(db)

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "description": self.description}


#: Every migration after :data:`BASELINE`, in order: versions 2, 3, 4...
MIGRATIONS: list[Migration] = [
    Migration(
        2,
        "runs.actor (who started a run); table audit (who did what to which model, app or loop)",
        (
            "ALTER TABLE runs ADD COLUMN actor TEXT",
            "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT, "
            "action TEXT NOT NULL, target TEXT NOT NULL, detail_json TEXT NOT NULL DEFAULT '{}')",
            "CREATE INDEX IF NOT EXISTS audit_target ON audit(target, id)",
        ),
    ),
    Migration(
        3,
        "table platform_configs (the admins' platform config: users, teams, scheduler; versioned); audit by time",
        (
            "CREATE TABLE IF NOT EXISTS platform_configs (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL, "
            "actor TEXT, config_json TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS audit_at ON audit(at, id)",
        ),
    ),
    Migration(
        4,
        "indexes on runs for the UI's newest-first lists, filtered by pipeline, status or actor",
        (
            "CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at)",
            "CREATE INDEX IF NOT EXISTS runs_pipeline_created ON runs(pipeline, created_at)",
            "CREATE INDEX IF NOT EXISTS runs_status_created ON runs(status, created_at)",
            "CREATE INDEX IF NOT EXISTS runs_actor_created ON runs(actor, created_at)",
        ),
    ),
    Migration(
        5,
        "tables schedules (a pipeline's triggers, its owner, its state) and schedule_fires (why each fired, its run)",
        (
            "CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, pipeline TEXT NOT NULL, owner TEXT, "
            "created_by TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, paused INTEGER NOT NULL DEFAULT 0, "
            "pipeline_path TEXT, workdir TEXT NOT NULL, pipeline_yaml TEXT NOT NULL, triggers_json TEXT NOT NULL, "
            "state_json TEXT NOT NULL, tick INTEGER NOT NULL DEFAULT 0)",
            "CREATE TABLE IF NOT EXISTS schedule_fires (id INTEGER PRIMARY KEY AUTOINCREMENT, schedule TEXT NOT NULL, "
            "fire_key TEXT NOT NULL, due REAL NOT NULL, fired_at REAL NOT NULL, kind TEXT NOT NULL, "
            "reason TEXT NOT NULL, status TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', run_id TEXT, files_json TEXT)",
            "CREATE UNIQUE INDEX IF NOT EXISTS schedule_fires_key ON schedule_fires(schedule, fire_key)",
            "CREATE INDEX IF NOT EXISTS schedule_fires_status ON schedule_fires(schedule, status, id)",
        ),
    ),
    Migration(
        6,
        "table stage_keys (each stage run's cache-key document, for `raypipe plan` and `raypipe diff`); "
        "table run_environments (a run's git commit, dirty flag and packages, for `raypipe rerun`)",
        (
            "CREATE TABLE IF NOT EXISTS stage_keys (stage_run_id INTEGER PRIMARY KEY REFERENCES stage_runs(id), "
            "pipeline TEXT NOT NULL, stage TEXT NOT NULL, cache_key TEXT NOT NULL, doc_json TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS stage_keys_latest ON stage_keys(pipeline, stage, stage_run_id)",
            "CREATE INDEX IF NOT EXISTS stage_runs_stage ON stage_runs(stage, status, id)",
            "CREATE TABLE IF NOT EXISTS run_environments (run_id TEXT PRIMARY KEY REFERENCES runs(run_id), "
            "recorded_at REAL NOT NULL, git_commit TEXT, git_dirty INTEGER, git_root TEXT, python TEXT, "
            "packages_json TEXT NOT NULL DEFAULT '{}')",
        ),
    ),
]

#: Set to ``0`` (or ``false``, ``no``, ``off``) to refuse an older store until ``raypipe db upgrade``.
AUTO_UPGRADE_ENV = "RAYPIPE_DB_AUTO_UPGRADE"


def code_version() -> int:
    """The schema version this code writes and reads: the last migration's."""
    return MIGRATIONS[-1].version if MIGRATIONS else BASELINE_VERSION


#: The schema version of this code (:func:`code_version` reads :data:`MIGRATIONS` at each call).
SCHEMA_VERSION = code_version()


def auto_upgrade() -> bool:
    """Whether opening a store upgrades an older schema (``$RAYPIPE_DB_AUTO_UPGRADE``, default yes)."""
    return os.environ.get(AUTO_UPGRADE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _has_table(db: Database, name: str) -> bool:
    if db.backend == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
    return db.execute(sql, (name,)).fetchone() is not None


def stored_version(db: Database) -> int | None:
    """The schema version the store records; None for an empty database.  A store with tables
    but no version (never written by raypipe, but possible by hand) counts as the baseline."""
    if _has_table(db, "meta"):
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None:
            return int(row[0])
    return BASELINE_VERSION if _has_table(db, "runs") else None


def _set_version(db: Database, version: int) -> None:
    db.execute(
        "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(version),),
    )


def newer_error(location: str, version: int) -> StorageError:
    return StorageError(
        f"metadata store {location!r} has schema version {version}, newer than this raypipe's "
        f"({code_version()}): a newer raypipe upgraded it; upgrade raypipe to use it"
    )


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: the version before (None: an empty database), after, and the
    migrations it applied."""

    location: str
    from_version: int | None
    to_version: int
    applied: tuple[Migration, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "db": self.location,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "code_version": code_version(),
            "applied": [m.to_dict() for m in self.applied],
        }


def upgrade(db: Database, location: str) -> Upgrade:
    """Bring the store to the code's version (see the module docstring); ``location`` (redacted)
    names it in errors."""
    target = code_version()
    before = stored_version(db)
    if before is not None and before > target:
        raise newer_error(location, before)
    if before is None or before == BASELINE_VERSION:
        # An empty database gets the baseline; a version 1 store gets the baseline's tables and
        # indexes it lacks (raypipe created them as they came, all under version 1: the registry's
        # tables, model_registrations and model_links came after the runs').
        with db.transaction(["schema"]) as c:
            if stored_version(c) in (None, BASELINE_VERSION):
                c.create([stmt for stmt in BASELINE.split(";") if stmt.strip()])
                _set_version(c, BASELINE_VERSION)
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= (before or BASELINE_VERSION):
            continue
        try:
            with db.transaction(["schema"]) as c:
                now = stored_version(c) or BASELINE_VERSION
                if now > target:
                    raise newer_error(location, now)
                if now >= migration.version:
                    continue  # another process applied it meanwhile
                if now != migration.version - 1:
                    raise StorageError(
                        f"metadata store {location!r}: no migration from schema version {now} to {migration.version}"
                    )
                migration.run(c)
                _set_version(c, migration.version)
        except Exception as e:
            if isinstance(e, StorageError) or retryable(e):
                raise
            what = str(e) if driver_error(e) else f"{type(e).__name__}: {e}"
            raise StorageError(
                f"metadata store {location!r}: upgrading to schema version {migration.version} "
                f"({migration.description}) failed: {what}; it stays at version {migration.version - 1}"
            ) from e
        applied.append(migration)
    return Upgrade(location, before, stored_version(db) or BASELINE_VERSION, tuple(applied))


def open_schema(db: Database, location: str, *, upgrade_older: bool | None = None) -> int | None:
    """What :class:`~raypipe.store.metadata.MetadataStore` does on opening; its schema version.

    ``upgrade_older``: None upgrades an older store (logging one line) unless
    ``$RAYPIPE_DB_AUTO_UPGRADE`` says not to, then refuses it; True upgrades it silently (the
    caller reports); False opens any store as it is, creating nothing (``raypipe db status``)."""
    version = stored_version(db)
    target = code_version()
    if upgrade_older is False or version == target:
        return version
    if version is not None and version > target:
        raise newer_error(location, version)
    if version is not None and upgrade_older is None and not auto_upgrade():
        raise StorageError(
            f"metadata store {location!r} has schema version {version}, older than this raypipe's ({target}), "
            f"and ${AUTO_UPGRADE_ENV} is off: run `raypipe db upgrade` on it (the same --db or $RAYPIPE_DB) first"
        )
    done = upgrade(db, location)
    if done.applied and version is not None and upgrade_older is None:
        log.warning(
            "raypipe: upgraded the metadata store %s from schema version %d to %d: %s",
            location,
            version,
            done.to_version,
            "; ".join(m.description for m in done.applied),
        )
    return done.to_version


def check_order(migrations: Sequence[Migration]) -> None:
    """Migrations number the versions after the baseline one by one (checked on import)."""
    expected = list(range(BASELINE_VERSION + 1, BASELINE_VERSION + 1 + len(migrations)))
    if [m.version for m in migrations] != expected:
        raise AssertionError(f"MIGRATIONS must have versions {expected}, in order")


check_order(MIGRATIONS)
