"""What the UI reads of the metadata store: one page of a list at a time, with the statements
written for it (SQLite's dialect of the common subset, see :mod:`raypipe.store.sql`).

Read-only: nothing here writes (not even the reaping of runs whose driver died, which
``raypipe runs`` does; a page flags them instead).  Every function takes an open
:class:`~raypipe.store.metadata.MetadataStore` and returns plain JSON-able values, which the
pages render and the ``/api`` twins return as they are.

The indexes these statements want, beside the schema's: ``runs(created_at)`` (and
``runs(pipeline, created_at)``, ``runs(status, created_at)`` for filtered pages); without
them a page of runs sorts the table, a few milliseconds at 10,000 runs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from raypipe.exceptions import ModelNotFoundError, RaypipeError, RunNotFoundError
from raypipe.failures import parse, strip_ansi
from raypipe.runner.states import RunStatus, StageStatus
from raypipe.store.lineage import LineageNode, lineage_tree
from raypipe.store.metadata import MetadataStore, pid_alive
from raypipe.store.objects import ArtifactRef
from raypipe.store.registry import ModelRegistry

#: Most rows a page shows.
MAX_LIMIT = 500


class BadRequest(RaypipeError):
    """A query parameter the UI cannot use (a 400, naming the parameter)."""


def _db(meta: MetadataStore) -> Any:
    return meta._conn  # the store's one connection: the UI reads with the store's own dialect layer


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


@dataclass(frozen=True)
class RunFilter:
    """The filters of ``/runs``: equality on pipeline, status and actor; ``since`` <= created_at < ``until``."""

    pipeline: str | None = None
    status: str | None = None
    actor: str | None = None
    since: float | None = None
    until: float | None = None

    def where(self) -> tuple[str, tuple[Any, ...]]:
        parts, args = [], []
        for col in ("pipeline", "status", "actor"):
            value = getattr(self, col)
            if value:
                parts.append(f"{col} = ?")
                args.append(value)
        if self.since is not None:
            parts.append("created_at >= ?")
            args.append(self.since)
        if self.until is not None:
            parts.append("created_at < ?")
            args.append(self.until)
        return (" WHERE " + " AND ".join(parts) if parts else ""), tuple(args)


#: The statement of ``/runs`` (the benchmark times it bare, as the baseline).
RUNS_SQL = (
    "SELECT run_id, pipeline, status, created_at, ended_at, actor, driver_pid, driver_host, error FROM runs{where} "
    "ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?"
)


def driver_gone(status: str, pid: int | None, host: str | None) -> bool:
    """A run recorded ``running`` whose driver on this machine is gone (``raypipe runs`` would
    mark it ``interrupted``; the UI only says so)."""
    return status == RunStatus.RUNNING and host == os.uname().nodename and not pid_alive(pid)


def runs_page(meta: MetadataStore, flt: RunFilter, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """One page of runs, newest first, with each run's stage counts (stages, attempts, cache
    hits, failed attempts) and the total the filter matches."""
    db = _db(meta)
    where, args = flt.where()
    rows = db.execute(RUNS_SQL.format(where=where), (*args, limit, offset)).fetchall()
    total = int(db.execute(f"SELECT COUNT(*) FROM runs{where}", args).fetchone()[0])
    ids = [r["run_id"] for r in rows]
    counts: dict[str, Any] = {}
    if ids:
        for c in db.execute(
            "SELECT run_id, COUNT(DISTINCT stage) AS stages, COUNT(*) AS attempts, "
            "SUM(CASE WHEN status = 'cached' THEN 1 ELSE 0 END) AS cached, "
            "SUM(CASE WHEN status IN ('failed', 'timeout', 'rejected', 'lost') THEN 1 ELSE 0 END) AS failed "
            f"FROM stage_runs WHERE run_id IN ({_placeholders(len(ids))}) GROUP BY run_id",
            ids,
        ).fetchall():
            counts[c["run_id"]] = c
    now = time.time()
    runs = []
    for r in rows:
        c = counts.get(r["run_id"])
        end = r["ended_at"]
        runs.append(
            {
                "run_id": r["run_id"],
                "pipeline": r["pipeline"],
                "status": r["status"],
                "driver_gone": driver_gone(r["status"], r["driver_pid"], r["driver_host"]),
                "actor": r["actor"],
                "created_at": r["created_at"],
                "ended_at": end,
                "duration_s": (end if end is not None else now) - r["created_at"],
                "stages": int(c["stages"]) if c else 0,
                "attempts": int(c["attempts"]) if c else 0,
                "cache_hits": int(c["cached"] or 0) if c else 0,
                "failed_attempts": int(c["failed"] or 0) if c else 0,
                "error": strip_ansi(r["error"]).splitlines()[0] if r["error"] else None,
            }
        )
    return {"runs": runs, "total": total, "limit": limit, "offset": offset}


def run_choices(meta: MetadataStore, limit: int = 200) -> dict[str, list[str]]:
    """The pipelines and actors a run filter can pick (at most ``limit`` of each)."""
    db = _db(meta)
    out = {}
    for col in ("pipeline", "actor"):
        rows = db.execute(f"SELECT DISTINCT {col} FROM runs WHERE {col} IS NOT NULL ORDER BY {col} LIMIT ?", (limit,))
        out[col + "s"] = [r[0] for r in rows.fetchall()]
    return out


def _run_row(meta: MetadataStore, run_id: str) -> Any:
    row = _db(meta).execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFoundError(f"no run {run_id!r} in {meta.location}")
    return row


def stage_specs(config_json: str) -> list[dict[str, Any]]:
    """The stages of a run's stored config, each with its upstream stages (inputs and
    ``depends_on``), read leniently: a store written by another raypipe still draws."""
    cfg = _loads(config_json, {})
    listed = cfg.get("stages") if isinstance(cfg, dict) else None
    out = []
    for s in listed if isinstance(listed, list) else []:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            continue
        given = s.get("inputs")
        inputs: dict[str, Any] = given if isinstance(given, dict) else {}
        ups = [str(v).split(".", 1)[0] for v in inputs.values()]
        ups += [str(d) for d in s.get("depends_on") or []]
        out.append(
            {
                "name": s["name"],
                "kind": s.get("kind"),
                "upstream": list(dict.fromkeys(ups)),
                "inputs": inputs,
                "resources": s.get("resources") or {},
                "gang_size": s.get("gang_size", 1),
                "team": s.get("team"),
                "priority": s.get("priority"),
                "params": s.get("params") or {},
                "cache": s.get("cache", True),
            }
        )
    return out


def _stage_run(r: Any, now: float) -> dict[str, Any]:
    end = r["ended_at"]
    failure = parse(r["status"], r["error"]) if r["error"] else None
    return {
        "id": r["id"],
        "stage": r["stage"],
        "attempt": r["attempt"],
        "status": r["status"],
        "cache_key": r["cache_key"],
        "cached_from": r["cached_from"],
        "started_at": r["started_at"],
        "ended_at": end,
        "duration_s": (end if end is not None else now) - r["started_at"],
        "node_id": r["node_id"],
        "error": failure.message if failure else None,
        "error_category": failure.category if failure else None,
        "traceback": failure.traceback if failure else None,
    }


def _outputs(meta: MetadataStore, ids: list[int], direction: str = "out") -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    if not ids:
        return out
    rows = (
        _db(meta)
        .execute(
            "SELECT io.stage_run_id, io.name, a.sha256, a.uri, a.size, a.format, a.schema_json FROM stage_io io "
            f"JOIN artifacts a ON a.sha256 = io.sha256 WHERE io.direction = ? AND io.stage_run_id IN ({_placeholders(len(ids))}) "
            "ORDER BY io.name",
            (direction, *ids),
        )
        .fetchall()
    )
    for r in rows:
        out.setdefault(r["stage_run_id"], {})[r["name"]] = {
            "sha256": r["sha256"],
            "uri": r["uri"],
            "size": r["size"],
            "format": r["format"],
            "schema": _loads(r["schema_json"], None),
        }
    return out


def run_detail(meta: MetadataStore, run_id: str) -> dict[str, Any]:
    """A run, its stages in the config's order (each: the latest attempt's status and duration,
    attempts, cache hits, node, error), every stage run, and the outputs of the finished ones."""
    r = _run_row(meta, run_id)
    rows = _db(meta).execute("SELECT * FROM stage_runs WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    now = time.time()
    stage_runs = [_stage_run(x, now) for x in rows]
    specs = stage_specs(r["config_json"])
    names = [s["name"] for s in specs] + [
        s["stage"] for s in stage_runs if s["stage"] not in {x["name"] for x in specs}
    ]
    by_stage: dict[str, list[dict[str, Any]]] = {n: [] for n in dict.fromkeys(names)}
    for s in stage_runs:
        by_stage[s["stage"]].append(s)
    done_ids = [s["id"] for s in stage_runs if s["status"] in (StageStatus.SUCCEEDED, StageStatus.CACHED)]
    outputs = _outputs(meta, done_ids)
    spec_of = {s["name"]: s for s in specs}
    stages = []
    for name, attempts in by_stage.items():
        last = attempts[-1] if attempts else None
        spec = spec_of.get(name, {"name": name, "kind": None, "upstream": [], "resources": {}, "gang_size": 1})
        stages.append(
            {
                "name": name,
                "kind": spec.get("kind"),
                "upstream": spec.get("upstream", []),
                "status": last["status"] if last else "pending",
                "duration_s": last["duration_s"] if last else None,
                "attempts": sum(1 for a in attempts if a["attempt"] > 0),
                "cache_hits": sum(1 for a in attempts if a["status"] == StageStatus.CACHED),
                "node_id": next((a["node_id"] for a in reversed(attempts) if a["node_id"]), None),
                "resources": spec.get("resources", {}),
                "gang_size": spec.get("gang_size", 1),
                "error": last["error"] if last else None,
                "error_category": last["error_category"] if last else None,
                "outputs": outputs.get(last["id"], {}) if last else {},
            }
        )
    run = {k: r[k] for k in r.keys() if k != "config_json"}
    run["driver_gone"] = driver_gone(r["status"], r["driver_pid"], r["driver_host"])
    run["duration_s"] = (r["ended_at"] if r["ended_at"] is not None else now) - r["created_at"]
    run["error"] = strip_ansi(r["error"]) if r["error"] else None
    return {"run": run, "stages": stages, "stage_runs": stage_runs}


def stage_detail(meta: MetadataStore, run_id: str, stage: str) -> dict[str, Any]:
    """One stage of a run: its config, every attempt (the source of a cache hit named), and
    the inputs and outputs of its latest finished attempt."""
    r = _run_row(meta, run_id)
    spec = next((s for s in stage_specs(r["config_json"]) if s["name"] == stage), None)
    rows = (
        _db(meta)
        .execute("SELECT * FROM stage_runs WHERE run_id = ? AND stage = ? ORDER BY id", (run_id, stage))
        .fetchall()
    )
    if spec is None and not rows:
        raise RunNotFoundError(f"run {run_id} has no stage {stage!r}")
    now = time.time()
    attempts = [_stage_run(x, now) for x in rows]
    origins = [a["cached_from"] for a in attempts if a["cached_from"]]
    if origins:
        found = {
            o["id"]: o
            for o in _db(meta)
            .execute(
                "SELECT s.id, s.run_id, s.stage, s.attempt, r.storage FROM stage_runs s JOIN runs r ON r.run_id = s.run_id "
                f"WHERE s.id IN ({_placeholders(len(origins))})",
                origins,
            )
            .fetchall()
        }
        for a in attempts:
            o = found.get(a["cached_from"])
            a["cached_from_run"] = dict(o) if o is not None else None
    done = [a for a in attempts if a["status"] in (StageStatus.SUCCEEDED, StageStatus.CACHED)]
    last_done = done[-1] if done else None
    ids = [last_done["id"]] if last_done else []
    return {
        "run": {k: r[k] for k in ("run_id", "pipeline", "status", "storage", "created_at", "actor")},
        "stage": stage,
        "spec": spec,
        "attempts": attempts,
        "inputs": _outputs(meta, ids, "in").get(last_done["id"], {}) if last_done else {},
        "outputs": _outputs(meta, ids, "out").get(last_done["id"], {}) if last_done else {},
    }


def artifact_ref(meta: MetadataStore, sha256: str) -> ArtifactRef:
    """An artifact by its full sha256."""
    row = _db(meta).execute("SELECT * FROM artifacts WHERE sha256 = ?", (sha256,)).fetchone()
    if row is None:
        raise RunNotFoundError(f"no artifact {sha256[:16]!r} in {meta.location}")
    return ArtifactRef(row["uri"], row["sha256"], row["size"], row["format"], _loads(row["schema_json"], None))


# ---------------------------------------------------------------------------------- models

#: The statement of ``/models`` (timed bare by the benchmark).
MODELS_SQL = (
    "SELECT v.name, COUNT(*) AS versions, MAX(v.version) AS latest, MAX(v.created_at) AS updated_at "
    "FROM model_versions v GROUP BY v.name ORDER BY v.name LIMIT ? OFFSET ?"
)


def models_page(meta: MetadataStore, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """One page of models by name: versions, the latest one and its metrics, aliases, description."""
    db = _db(meta)
    rows = db.execute(MODELS_SQL, (limit, offset)).fetchall()
    total = int(db.execute("SELECT COUNT(DISTINCT name) FROM model_versions").fetchone()[0])
    names = [r["name"] for r in rows]
    aliases: dict[str, dict[str, int]] = {n: {} for n in names}
    metrics: dict[str, Any] = {}
    described: dict[str, str] = {}
    if names:
        marks = _placeholders(len(names))
        for a in db.execute(
            f"SELECT name, alias, version FROM model_aliases WHERE name IN ({marks}) ORDER BY alias", names
        ).fetchall():
            aliases[a["name"]][a["alias"]] = int(a["version"])
        pairs = [x for r in rows for x in (r["name"], r["latest"])]
        cond = " OR ".join(["(name = ? AND version = ?)"] * len(rows))
        for m in db.execute(f"SELECT name, metrics_json FROM model_versions WHERE {cond}", pairs).fetchall():
            metrics[m["name"]] = _loads(m["metrics_json"], {})
        for d in db.execute(f"SELECT name, description FROM models WHERE name IN ({marks})", names).fetchall():
            described[d["name"]] = d["description"]
    models = [
        {
            "name": r["name"],
            "description": described.get(r["name"], ""),
            "versions": int(r["versions"]),
            "latest": int(r["latest"]),
            "updated_at": r["updated_at"],
            "aliases": aliases.get(r["name"], {}),
            "latest_metrics": metrics.get(r["name"], {}),
        }
        for r in rows
    ]
    return {"models": models, "total": total, "limit": limit, "offset": offset}


#: The statement of a page of a model's versions (timed bare by the benchmark).
VERSIONS_SQL = (
    "SELECT v.version, v.sha256, v.run_id, v.stage, v.stage_run_id, v.metrics_json, v.params_json, v.code, "
    "v.created_at, a.size FROM model_versions v JOIN artifacts a ON a.sha256 = v.sha256 WHERE v.name = ? "
    "ORDER BY v.version DESC LIMIT ? OFFSET ?"
)


def model_detail(meta: MetadataStore, name: str, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """A model: a page of versions (newest first) with their metrics and params, its aliases,
    the newest 100 alias changes and the audit rows naming it."""
    db = _db(meta)
    model = db.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
    if model is None:
        raise ModelNotFoundError(f"no model {name!r} in {meta.location}")
    total = int(db.execute("SELECT COUNT(*) FROM model_versions WHERE name = ?", (name,)).fetchone()[0])
    aliases = {
        a["alias"]: {"version": int(a["version"]), "updated_at": a["updated_at"]}
        for a in db.execute(
            "SELECT alias, version, updated_at FROM model_aliases WHERE name = ? ORDER BY alias", (name,)
        ).fetchall()
    }
    by_version: dict[int, list[str]] = {}
    for alias, a in aliases.items():
        by_version.setdefault(a["version"], []).append(alias)
    versions = [
        {
            "version": int(v["version"]),
            "sha256": v["sha256"],
            "run_id": v["run_id"],
            "stage": v["stage"],
            "stage_run_id": v["stage_run_id"],
            "metrics": _loads(v["metrics_json"], {}),
            "params": _loads(v["params_json"], {}),
            "code": v["code"],
            "created_at": v["created_at"],
            "size": v["size"],
            "aliases": sorted(by_version.get(int(v["version"]), [])),
        }
        for v in db.execute(VERSIONS_SQL, (name, limit, offset)).fetchall()
    ]
    history = [
        dict(e)
        for e in db.execute(
            "SELECT alias, old_version, new_version, at, reason FROM alias_events WHERE name = ? "
            "ORDER BY id DESC LIMIT 100",
            (name,),
        ).fetchall()
    ]
    return {
        "name": name,
        "description": model["description"],
        "created_at": model["created_at"],
        "total": total,
        "limit": limit,
        "offset": offset,
        "aliases": aliases,
        "versions": versions,
        "alias_history": history,
        "audit": audit_of_model(meta, name),
    }


def latest_version(meta: MetadataStore, name: str) -> int:
    """The newest version of model ``name`` (0: none)."""
    row = _db(meta).execute("SELECT MAX(version) FROM model_versions WHERE name = ?", (name,)).fetchone()
    return int(row[0] or 0)


def audit_of_model(meta: MetadataStore, name: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit rows whose target names the model (``NAME``, ``NAME@ALIAS``,
    ``NAME:VERSION``, ``model:NAME...``): who did what to it, newest first."""
    db = _db(meta)
    try:
        rows = db.execute(
            "SELECT at, actor, action, target, detail_json FROM audit WHERE target = ? OR target LIKE ? "
            "OR target LIKE ? OR target = ? OR target LIKE ? OR target LIKE ? ORDER BY id DESC LIMIT ?",
            (name, f"{name}@%", f"{name}:%", f"model:{name}", f"model:{name}@%", f"model:{name}:%", limit),
        ).fetchall()
    except Exception:  # noqa: BLE001 - a store from before the audit table (read without upgrading)
        return []
    return [
        {**{k: r[k] for k in ("at", "actor", "action", "target")}, "detail": _loads(r["detail_json"], {})} for r in rows
    ]


def version_detail(meta: MetadataStore, name: str, version: int) -> dict[str, Any]:
    """One version as the registry reads it (metrics, params, the model's metadata, links),
    its lineage tree down to the raw files, and the ``history`` its training stage output."""
    mv = ModelRegistry(meta).get(f"{name}:{version}")
    tree = lineage_tree(meta, mv.sha256, mv.run_id)
    history_ref = None
    if mv.stage_run_id is not None:
        history_ref = meta.io_of(mv.stage_run_id, "out").get("history")
    return {
        "version": mv.to_dict(),
        "lineage": tree.to_dict(),
        "lineage_tree": tree,
        "history_ref": history_ref,
    }


def lineage_graph(meta: MetadataStore, tree: LineageNode) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """A lineage tree as a DAG: one node per artifact (``{"sha256", "format", "uri", "rows",
    "size", "stage", "output", "run_id"}``: ``output`` is the name the stage gave it), edges
    input -> output."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[tuple[str, str]] = []
    made_by: dict[str, int] = {}

    def visit(n: LineageNode) -> None:
        made = n.produced_by
        if n.sha256 not in nodes:
            nodes[n.sha256] = {
                "sha256": n.sha256,
                "format": n.format,
                "uri": n.uri,
                "rows": n.rows,
                "size": n.size,
                "stage": made.stage if made else None,
                "output": None,
                "run_id": made.run_id if made else None,
            }
        if made is not None:
            made_by[n.sha256] = made.stage_run_id
            for child in made.inputs:
                edges.append((child.sha256, n.sha256))
                visit(child)

    visit(tree)
    if made_by:
        ids = sorted(set(made_by.values()))
        for r in (
            _db(meta)
            .execute(
                f"SELECT stage_run_id, name, sha256 FROM stage_io WHERE direction = 'out' AND stage_run_id IN "
                f"({_placeholders(len(ids))})",
                ids,
            )
            .fetchall()
        ):
            if made_by.get(r["sha256"]) == r["stage_run_id"]:
                nodes[r["sha256"]]["output"] = r["name"]
    return list(nodes.values()), list(dict.fromkeys(edges))
