"""What a run was made of, kept beside its records: each stage run's cache-key document
(table ``stage_keys``: ``raypipe plan`` names the part of a key that changed, ``raypipe diff``
compares two runs' stages) and each run's environment (table ``run_environments``: git commit,
dirty flag, Python and package versions, compared by ``raypipe rerun``).

The functions take an open :class:`~raypipe.store.sql.Database` (inside a transaction for the
writes); :class:`~raypipe.store.metadata.MetadataStore` calls them."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from raypipe.store.sql import Database

DONE = ("succeeded", "cached")


def insert_key_doc(
    c: Database, stage_run_id: int, run_id: str, stage: str, cache_key: str, doc: Mapping[str, Any]
) -> None:
    """Keep the document ``cache_key`` hashes with stage run ``stage_run_id`` (of ``run_id``'s pipeline)."""
    c.execute(
        "INSERT INTO stage_keys(stage_run_id, pipeline, stage, cache_key, doc_json) "
        "SELECT ?, pipeline, ?, ?, ? FROM runs WHERE run_id = ?",
        (stage_run_id, stage, cache_key, json.dumps(dict(doc), sort_keys=True, default=str), run_id),
    )


def key_doc(c: Database, stage_run_id: int) -> dict[str, Any] | None:
    """The cache-key document of a stage run (None: none kept, e.g. recorded before schema version 6)."""
    row = c.execute("SELECT doc_json FROM stage_keys WHERE stage_run_id = ?", (stage_run_id,)).fetchone()
    return None if row is None else dict(json.loads(row["doc_json"]))


def latest_key_doc(
    c: Database, pipeline: str, stage: str, before_run: str | None = None
) -> tuple[int, dict[str, Any]] | None:
    """``(stage run id, document)`` of the latest finished (succeeded or cached) run of ``stage``
    in ``pipeline`` that has a document; ``before_run``: leave that run's out."""
    row = c.execute(
        "SELECT k.stage_run_id, k.doc_json FROM stage_keys k JOIN stage_runs s ON s.id = k.stage_run_id "
        "WHERE k.pipeline = ? AND k.stage = ? AND s.status IN ('succeeded', 'cached') AND s.run_id <> ? "
        "ORDER BY k.stage_run_id DESC LIMIT 1",
        (pipeline, stage, before_run or ""),
    ).fetchone()
    return None if row is None else (int(row["stage_run_id"]), dict(json.loads(row["doc_json"])))


def run_of(c: Database, stage_run_id: int) -> str | None:
    """The run a stage run belongs to."""
    row = c.execute("SELECT run_id FROM stage_runs WHERE id = ?", (stage_run_id,)).fetchone()
    return None if row is None else str(row["run_id"])


def stage_history(c: Database, pipeline: str, stage: str) -> tuple[bool, bool]:
    """Whether ``pipeline`` has any run, and whether ``stage`` ever ran (any status) in one of them."""
    ran = c.execute("SELECT 1 FROM runs WHERE pipeline = ? LIMIT 1", (pipeline,)).fetchone() is not None
    if not ran:
        return False, False
    stage_ran = c.execute(
        "SELECT 1 FROM stage_runs s JOIN runs r ON r.run_id = s.run_id WHERE s.stage = ? AND r.pipeline = ? "
        "AND s.status <> 'skipped' LIMIT 1",
        (stage, pipeline),
    ).fetchone()
    return True, stage_ran is not None


def insert_environment(c: Database, run_id: str, env: Mapping[str, Any]) -> None:
    """Keep ``env`` (``git_commit``, ``git_dirty``, ``git_root``, ``python``, ``packages``) for ``run_id``."""
    dirty = env.get("git_dirty")
    c.execute(
        "INSERT OR IGNORE INTO run_environments(run_id, recorded_at, git_commit, git_dirty, git_root, python,"
        " packages_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            time.time(),
            env.get("git_commit"),
            None if dirty is None else int(bool(dirty)),
            env.get("git_root"),
            env.get("python"),
            json.dumps(dict(env.get("packages") or {}), sort_keys=True),
        ),
    )


def environment_of(c: Database, run_id: str) -> dict[str, Any] | None:
    """What :func:`insert_environment` kept for ``run_id`` (None: nothing, e.g. a run from before schema version 6)."""
    row = c.execute("SELECT * FROM run_environments WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    dirty = row["git_dirty"]
    return {
        "git_commit": row["git_commit"],
        "git_dirty": None if dirty is None else bool(dirty),
        "git_root": row["git_root"],
        "python": row["python"],
        "packages": json.loads(row["packages_json"] or "{}"),
        "recorded_at": row["recorded_at"],
    }
