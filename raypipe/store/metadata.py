"""Metadata store: runs, stage runs, artifacts and lineage in SQLite (WAL mode) or PostgreSQL.

Every state change is one transaction.  A stage run becomes ``succeeded`` in the
same transaction that records its output artifacts, and artifacts are written to
the artifact store before that transaction starts: a crash at any instant leaves
no stage recorded as done without its artifacts.

The database is a SQLite file (a path or ``sqlite:///PATH``: one machine, WAL mode) or a
PostgreSQL database (``postgresql://user:pass@host:port/db``: several users and drivers
share runs, queue state, the registry, lineage and event logs).  The SQL differences are
in :mod:`raypipe.store.sql`; this class is the same for both.  The schema and its versions
are in :mod:`raypipe.store.migrations`: opening a store made by an older raypipe upgrades it.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raypipe.exceptions import RaypipeError, RunNotFoundError, StorageError
from raypipe.principal import acting
from raypipe.secrets import resolve_secrets
from raypipe.store import migrations, provenance
from raypipe.store.artifacts import ArtifactRef, is_local
from raypipe.store.claims import pid_alive
from raypipe.store.migrations import Upgrade
from raypipe.store.sql import Database, Row, driver_error, is_postgres, redact, retrying

DONE = ("succeeded", "cached")


def current_actor() -> str | None:
    """Who this thread acts for, as recorded in ``runs.actor`` and ``audit.actor``: the principal
    it acts as (:func:`raypipe.principal.acting`, set by :mod:`raypipe.identity`), else the OS
    user (None if unknown)."""
    who = acting()
    if who is not None:
        return who.name
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in the environment or the password database
        return None


def write_audit(
    c: Database, action: str, target: str, detail: Mapping[str, Any] | None = None, actor: str | None = None
) -> int:
    """One ``audit`` row inside the open transaction ``c`` (the change it records commits with
    it, or neither does); the row's id.  ``actor`` defaults to :func:`current_actor`."""
    doc = json.dumps(dict(detail or {}), default=str, allow_nan=False)
    return c.insert_id(
        "INSERT INTO audit(at, actor, action, target, detail_json) VALUES (?, ?, ?, ?, ?)",
        (time.time(), actor or current_actor(), action, target, doc),
    )


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    pipeline: str
    status: str
    config_json: str
    config_path: str | None
    storage: str
    created_at: float
    ended_at: float | None
    error: str | None
    driver_pid: int | None
    driver_host: str | None
    #: Who started the run (the OS user, unless the caller named someone); None before schema version 2.
    actor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("config_json")
        return d


@dataclass(frozen=True)
class StageRunRecord:
    id: int
    run_id: str
    stage: str
    attempt: int
    status: str
    cache_key: str | None
    cached_from: int | None
    started_at: float
    ended_at: float | None
    error: str | None
    node_id: str | None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "duration_s": self.duration_s}


def _ref(row: Row) -> ArtifactRef:
    schema = json.loads(row["schema_json"]) if row["schema_json"] else None
    return ArtifactRef(uri=row["uri"], sha256=row["sha256"], size=row["size"], format=row["format"], schema=schema)


def sqlite_path(url: str) -> str:
    """``sqlite:///abs/path.db``, ``sqlite:///rel.db`` or a plain path -> a filesystem path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if "://" in url:
        raise StorageError(
            f"metadata {redact(url)!r}: unsupported database URL; expected sqlite:///PATH, a file path"
            " or postgresql://USER:PASSWORD@HOST:PORT/DB"
        )
    return url


#: Where a metadata store is when nothing says otherwise.
DEFAULT_DB = os.path.join(".raypipe", "raypipe.db")


def project_db() -> str:
    """The project's metadata store: ``$RAYPIPE_HOME/.raypipe/raypipe.db``, else the nearest
    ``.raypipe/raypipe.db`` in the current directory or one above it (as git finds its
    repository), else ``./.raypipe/raypipe.db``."""
    home = os.environ.get("RAYPIPE_HOME")
    if home:
        return os.path.join(os.path.expanduser(home), DEFAULT_DB)
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_DB).is_file():
            return str(folder / DEFAULT_DB)
    return DEFAULT_DB


def resolve_db(db: str | None = None, *, metadata: str | None = None, storage: str | None = None) -> str:
    """The metadata store a command uses; the one place that decides, in this order:
    ``db`` (``--db``), ``$RAYPIPE_DB``, the pipeline's ``metadata:``, ``raypipe.db`` inside
    the pipeline's ``storage`` when that is an absolute local path (a store of its own, which
    several projects may share), else the project's store (:func:`project_db`): pipelines
    with a relative (or object-store) ``storage`` share it, whatever the folder they write
    their artifacts to, so every command finds their runs without ``--db``."""
    if db:
        return db
    env = os.environ.get("RAYPIPE_DB")
    if env:
        return env
    if metadata:
        return metadata
    if storage and is_local(storage) and os.path.isabs(os.path.expanduser(storage)):
        return os.path.join(os.path.expanduser(storage), "raypipe.db")
    return project_db()


def open_existing(
    db: str | None = None, hint: str = "run a pipeline first or pass --db", *, upgrade: bool | None = None
) -> MetadataStore:
    """The store :func:`resolve_db` picks for commands that read one (no pipeline file):
    an error saying where it looked when a SQLite file is not there.  ``upgrade``: see
    :class:`MetadataStore`."""
    url = resolve_db(db)
    real = resolve_secrets(url, "metadata store URL")
    if not real.startswith("sqlite:") and "://" not in real and not Path(real).exists():
        where = "--db" if db else ("$RAYPIPE_DB" if os.environ.get("RAYPIPE_DB") else "the project's store")
        raise RaypipeError(f"no metadata store at {url!r} ({where}); {hint}")
    return MetadataStore(url, upgrade=upgrade)


class MetadataStore:
    """One SQLite database file (safe for several processes: WAL, busy timeout) or one
    PostgreSQL database (safe for several users and drivers on several machines).

    ``url`` is what another process opens to reach the same store (``MetadataStore(url)``,
    ``--db URL``, ``$RAYPIPE_DB``): the absolute file path, or the PostgreSQL URL as given.
    ``path`` is the same (kept for callers from before PostgreSQL); ``location`` is for
    messages (a PostgreSQL URL without its password); ``backend`` is ``"sqlite"`` or
    ``"postgresql"``.

    Opening checks the store's schema version (:mod:`raypipe.store.migrations`): an empty
    database gets the current schema, a newer one is refused, an older one is upgraded
    (``upgrade`` None: unless ``$RAYPIPE_DB_AUTO_UPGRADE`` is off, logging one line; True:
    silently; False: not at all, the store opened as it is only to read its version).
    ``schema_version`` is the version it is at (None: an empty database opened with
    ``upgrade=False``)."""

    def __init__(self, url: str, *, upgrade: bool | None = None) -> None:
        real = resolve_secrets(url, "metadata store URL")  # ${env:...} references: to connect; url keeps them
        if is_postgres(real):
            self.url = self.path = url
            self.location = redact(url)
        else:
            path = Path(sqlite_path(real)).expanduser()
            self.url = self.path = self.location = str(path.resolve())
        try:
            if not is_postgres(real):
                path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = Database(self.url)
            self.backend = self._conn.backend
            self.schema_version = self._open_schema(upgrade)
        except Exception as e:
            if isinstance(e, OSError) or driver_error(e):
                raise StorageError(f"metadata store {self.location!r}: cannot open: {e}") from None
            raise

    @retrying
    def _open_schema(self, upgrade: bool | None) -> int | None:
        return migrations.open_schema(self._conn, self.location, upgrade_older=upgrade)

    @retrying
    def upgrade_schema(self) -> Upgrade:
        """Bring the store to this code's schema version (``raypipe db upgrade``): what was done."""
        done = migrations.upgrade(self._conn, self.location)
        self.schema_version = done.to_version
        return done

    def close(self) -> None:
        self._conn.close()

    def _tx(self, *locks: str) -> AbstractContextManager[Database]:
        """One write transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: holding the advisory
        ``locks`` named, see :mod:`raypipe.store.sql`)."""
        return self._conn.transaction(locks)

    # ------------------------------------------------------------------ runs
    @retrying
    def create_run(
        self,
        run_id: str,
        pipeline: str,
        config_json: str,
        config_path: str | None,
        storage: str,
        actor: str | None = None,
    ) -> None:
        """A new ``running`` run, driven by this process; ``actor``: who started it (default
        :func:`current_actor`).  Audited ``run.start``."""
        host = os.uname().nodename
        actor = actor or current_actor()
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs(run_id, pipeline, status, config_json, config_path, storage, created_at,"
                " driver_pid, driver_host, actor) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    pipeline,
                    config_json,
                    config_path,
                    storage,
                    time.time(),
                    os.getpid(),
                    host,
                    actor,
                ),
            )
            write_audit(c, "run.start", run_id, {"pipeline": pipeline, "config_path": config_path}, actor)

    @retrying
    def claim_run(self, run_id: str) -> list[int]:
        """Take over a run for resuming: mark it running under this process and mark the
        stage runs a dead driver left ``running`` as ``interrupted``.  Returns their ids.
        Audited ``run.resume``."""
        with self._tx(f"run:{run_id}") as c:
            rows = c.execute(
                "SELECT id FROM stage_runs WHERE run_id = ? AND status IN ('running', 'queued')", (run_id,)
            ).fetchall()
            ids = [r["id"] for r in rows]
            c.execute(
                "UPDATE stage_runs SET status = 'interrupted', ended_at = ?, error = 'driver stopped' "
                "WHERE run_id = ? AND status IN ('running', 'queued')",
                (time.time(), run_id),
            )
            c.execute(
                "UPDATE runs SET status = 'running', ended_at = NULL, error = NULL, driver_pid = ?, driver_host = ? "
                "WHERE run_id = ?",
                (os.getpid(), os.uname().nodename, run_id),
            )
            write_audit(c, "run.resume", run_id, {"interrupted_stage_runs": ids})
        return ids

    @retrying
    def reap_dead_drivers(self) -> list[str]:
        """Runs left ``running`` by a driver on this host that is gone (killed, crashed, a
        ``loop stop``): marked ``interrupted`` with the reason, their running or queued
        stage runs too, so no run shows ``running`` forever.  Returns their ids."""
        host = os.uname().nodename
        rows = self._conn.execute(
            "SELECT run_id, driver_pid FROM runs WHERE status = 'running' AND driver_host = ?", (host,)
        ).fetchall()
        dead = [(r["run_id"], r["driver_pid"]) for r in rows if r["driver_pid"] != os.getpid()]
        dead = [(rid, pid) for rid, pid in dead if not pid_alive(pid)]
        now = time.time()
        for run_id, pid in dead:
            why = f"its driver (pid {pid} on {host}) exited without finishing the run"
            with self._tx(f"run:{run_id}") as c:
                c.execute(
                    "UPDATE stage_runs SET status = 'interrupted', ended_at = ?, error = ? "
                    "WHERE run_id = ? AND status IN ('running', 'queued')",
                    (now, "driver stopped", run_id),
                )
                c.execute(
                    "UPDATE runs SET status = 'interrupted', ended_at = ?, error = ? WHERE run_id = ? "
                    "AND status = 'running'",
                    (now, why, run_id),
                )
        return [rid for rid, _ in dead]

    @retrying
    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """The run ended ``status``; a ``stopped`` one (SIGTERM, Ctrl-C, ``loop stop``) is audited ``run.stop``."""
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ?",
                (status, time.time(), error, run_id),
            )
            if status == "stopped":
                write_audit(c, "run.stop", run_id, {"why": error})

    def run_exists(self, run_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def get_run(self, run_id: str) -> RunRecord:
        row = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            # Accept a unique prefix, like git does.
            rows = self._conn.execute(
                "SELECT * FROM runs WHERE run_id LIKE ? ORDER BY created_at DESC LIMIT 2", (run_id + "%",)
            ).fetchall()
            if len(rows) == 1:
                row = rows[0]
            elif len(rows) > 1:
                raise RunNotFoundError(f"run id {run_id!r} is ambiguous; give more characters")
            else:
                raise RunNotFoundError(f"no run {run_id!r} in {self.location}; `raypipe runs` lists them")
        return RunRecord(**dict(row))

    def list_runs(self, limit: int = 50, pipeline: str | None = None) -> list[RunRecord]:
        q = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if pipeline:
            q += " WHERE pipeline = ?"
            args = (pipeline,)
        q += " ORDER BY created_at DESC LIMIT ?"
        return [RunRecord(**dict(r)) for r in self._conn.execute(q, args + (limit,)).fetchall()]

    # ------------------------------------------------------------------ audit
    @retrying
    def record_audit(
        self, action: str, target: str, detail: Mapping[str, Any] | None = None, actor: str | None = None
    ) -> int:
        """Keep who (``actor``, default :func:`current_actor`) did ``action`` to ``target`` (a
        model alias, an app, a loop...) in table ``audit``; the new row's id."""
        with self._tx() as c:
            return write_audit(c, action, target, detail, actor)

    def audit_log(
        self,
        target: str | None = None,
        limit: int = 100,
        *,
        since: float | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` audit rows, oldest first: of ``target``, at or after ``since``
        (a Unix time), by ``actor``, of ``action`` (``run`` matches ``run`` and ``run.*``)."""
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("target = ?", target), ("at >= ?", since), ("actor = ?", actor)):
            if value is not None:
                where.append(clause)
                args.append(value)
        if action:
            where.append("(action = ? OR substr(action, 1, ?) = ?)")
            args += [action, len(action) + 1, action + "."]
        sql = "SELECT * FROM audit " + (f"WHERE {' AND '.join(where)} " if where else "")
        rows = self._conn.execute(sql + "ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        out = [{**dict(r), "detail": json.loads(r["detail_json"])} for r in reversed(rows)]
        for d in out:
            d.pop("detail_json")
        return out

    # ------------------------------------------------------------------ stage runs
    @retrying
    def start_stage(
        self,
        run_id: str,
        stage: str,
        attempt: int,
        cache_key: str | None,
        status: str = "running",
        key_doc: Mapping[str, Any] | None = None,
    ) -> int:
        """A new stage attempt, ``running`` or ``queued`` (waiting for the scheduler's grant);
        ``key_doc``: the document ``cache_key`` hashes, kept with it (table ``stage_keys``)."""
        with self._tx() as c:
            sid = c.insert_id(
                "INSERT INTO stage_runs(run_id, stage, attempt, status, cache_key, started_at) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, stage, attempt, status, cache_key, time.time()),
            )
            if key_doc is not None and cache_key is not None:
                provenance.insert_key_doc(c, sid, run_id, stage, cache_key, key_doc)
            return sid

    @retrying
    def mark_running(self, stage_run_id: int) -> None:
        """The scheduler granted a queued attempt; its clock starts now."""
        with self._tx() as c:
            c.execute(
                "UPDATE stage_runs SET status = 'running', started_at = ? WHERE id = ?", (time.time(), stage_run_id)
            )

    def _insert_io(
        self,
        c: Database,
        stage_run_id: int,
        inputs: Mapping[str, ArtifactRef],
        outputs: Mapping[str, ArtifactRef],
    ) -> None:
        now = time.time()
        for ref in list(inputs.values()) + list(outputs.values()):
            c.execute(
                "INSERT OR IGNORE INTO artifacts(sha256, uri, size, format, schema_json, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (ref.sha256, ref.uri, ref.size, ref.format, json.dumps(ref.schema) if ref.schema else None, now),
            )
        for direction, refs in (("in", inputs), ("out", outputs)):
            for name, ref in refs.items():
                c.execute(
                    "INSERT INTO stage_io(stage_run_id, direction, name, sha256) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(stage_run_id, direction, name) DO UPDATE SET sha256 = excluded.sha256",
                    (stage_run_id, direction, name, ref.sha256),
                )
        for src in inputs.values():
            for dst in outputs.values():
                c.execute(
                    "INSERT OR IGNORE INTO lineage(src_sha256, dst_sha256, stage_run_id) VALUES (?, ?, ?)",
                    (src.sha256, dst.sha256, stage_run_id),
                )

    @retrying
    def succeed_stage(
        self,
        stage_run_id: int,
        inputs: Mapping[str, ArtifactRef],
        outputs: Mapping[str, ArtifactRef],
        node_id: str | None = None,
    ) -> None:
        """Record outputs and mark the stage run done, atomically."""
        with self._tx() as c:
            self._insert_io(c, stage_run_id, inputs, outputs)
            c.execute(
                "UPDATE stage_runs SET status = 'succeeded', ended_at = ?, node_id = ? WHERE id = ?",
                (time.time(), node_id, stage_run_id),
            )

    @retrying
    def record_cached(
        self,
        run_id: str,
        stage: str,
        cache_key: str | None,
        cached_from: int,
        inputs: Mapping[str, ArtifactRef],
        outputs: Mapping[str, ArtifactRef],
        key_doc: Mapping[str, Any] | None = None,
    ) -> int:
        with self._tx() as c:
            now = time.time()
            sid = c.insert_id(
                "INSERT INTO stage_runs(run_id, stage, attempt, status, cache_key, cached_from, started_at, ended_at)"
                " VALUES (?, ?, 0, 'cached', ?, ?, ?, ?)",
                (run_id, stage, cache_key, cached_from, now, now),
            )
            self._insert_io(c, sid, inputs, outputs)
            if key_doc is not None and cache_key is not None:
                provenance.insert_key_doc(c, sid, run_id, stage, cache_key, key_doc)
            return sid

    @retrying
    def fail_stage(self, stage_run_id: int, status: str, error: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE stage_runs SET status = ?, ended_at = ?, error = ? WHERE id = ?",
                (status, time.time(), error, stage_run_id),
            )

    @retrying
    def skip_stage(self, run_id: str, stage: str, reason: str) -> None:
        with self._tx() as c:
            now = time.time()
            c.execute(
                "INSERT INTO stage_runs(run_id, stage, attempt, status, started_at, ended_at, error) "
                "VALUES (?, ?, 0, 'skipped', ?, ?, ?)",
                (run_id, stage, now, now, reason),
            )

    def stage_runs(self, run_id: str) -> list[StageRunRecord]:
        rows = self._conn.execute("SELECT * FROM stage_runs WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return [StageRunRecord(**dict(r)) for r in rows]

    def io_of(self, stage_run_id: int, direction: str = "out") -> dict[str, ArtifactRef]:
        rows = self._conn.execute(
            "SELECT io.name, a.* FROM stage_io io JOIN artifacts a ON a.sha256 = io.sha256 "
            "WHERE io.stage_run_id = ? AND io.direction = ? ORDER BY io.name",
            (stage_run_id, direction),
        ).fetchall()
        return {r["name"]: _ref(r) for r in rows}

    def done_stages(self, run_id: str) -> dict[str, StageRunRecord]:
        """The latest finished (succeeded or cached) stage run of each stage of a run."""
        out: dict[str, StageRunRecord] = {}
        for sr in self.stage_runs(run_id):
            if sr.status in DONE:
                out[sr.stage] = sr
        return out

    @retrying
    def relocate(self, refs: Mapping[str, ArtifactRef]) -> None:
        """Record where artifacts are now (``ArtifactStore.rebased``: a project that moved):
        their rows point at the new URIs, so every reader finds them."""
        with self._tx() as c:
            for ref in refs.values():
                c.execute("UPDATE artifacts SET uri = ? WHERE sha256 = ?", (ref.uri, ref.sha256))

    def find_cached(self, cache_key: str) -> StageRunRecord | None:
        """The newest finished stage run with this cache key (candidates newest first)."""
        row = self._conn.execute(
            "SELECT * FROM stage_runs WHERE cache_key = ? AND status IN ('succeeded', 'cached') "
            "ORDER BY id DESC LIMIT 1",
            (cache_key,),
        ).fetchone()
        return StageRunRecord(**dict(row)) if row else None

    def artifact(self, uri_or_sha: str) -> ArtifactRef:
        """An artifact by sha256 (or a unique prefix of it) or by URI."""
        rows = self._conn.execute(
            "SELECT * FROM artifacts WHERE uri = ? OR sha256 LIKE ? LIMIT 2", (uri_or_sha, uri_or_sha + "%")
        ).fetchall()
        if len(rows) != 1:
            what = "is ambiguous" if rows else "is unknown"
            raise RunNotFoundError(f"artifact {uri_or_sha!r} {what} in {self.location}")
        return _ref(rows[0])

    def lineage_of(self, sha256: str) -> list[dict[str, Any]]:
        """Direct parents of an artifact: (input artifact, stage run) pairs."""
        rows = self._conn.execute(
            "SELECT l.src_sha256, l.stage_run_id, s.stage, s.run_id FROM lineage l "
            "JOIN stage_runs s ON s.id = l.stage_run_id WHERE l.dst_sha256 = ?",
            (sha256,),
        ).fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ provenance
    def key_doc(self, stage_run_id: int) -> dict[str, Any] | None:
        """The cache-key document kept with a stage run (:mod:`raypipe.store.provenance`)."""
        return provenance.key_doc(self._conn, stage_run_id)

    def latest_key_doc(
        self, pipeline: str, stage: str, before_run: str | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """``(stage run id, document)`` of the latest finished run of ``stage`` in ``pipeline``."""
        return provenance.latest_key_doc(self._conn, pipeline, stage, before_run)

    def run_of(self, stage_run_id: int) -> str | None:
        return provenance.run_of(self._conn, stage_run_id)

    def stage_history(self, pipeline: str, stage: str) -> tuple[bool, bool]:
        """Whether ``pipeline`` ever ran, and whether ``stage`` ran in it."""
        return provenance.stage_history(self._conn, pipeline, stage)

    @retrying
    def record_environment(self, run_id: str, env: Mapping[str, Any]) -> None:
        """Keep a run's git commit, dirty flag, Python and packages (once)."""
        with self._tx() as c:
            provenance.insert_environment(c, run_id, env)

    def environment_of(self, run_id: str) -> dict[str, Any] | None:
        """What :meth:`record_environment` kept for ``run_id``, or None."""
        return provenance.environment_of(self._conn, run_id)
