"""The model registry: named models with numbered versions and movable aliases.

It lives in the metadata store (tables ``models``, ``model_versions``,
``model_aliases`` and ``alias_events``, created with the rest of its schema).  A
version is one model artifact (format ``model``) under a name; it records the
metrics, the training params, the code fingerprint, every dataset version in the
model's lineage and the stage run that produced it.  Versions are numbered 1, 2,
3... per name inside the registering transaction (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: holding an advisory lock on the model's name), so two processes
registering at once never get the same number; registering the same
artifact under the same name again returns the existing version.

Aliases (``candidate``, ``production``, any name) point at one version each and
are moved, not copied; every move is kept in ``alias_events`` with its reason (who,
e.g. ``stage register of run R (stage run #N)``, and why).  A register stage run's
moves are committed with a row in ``model_registrations`` in the same transaction, so
a resumed run completes them at most once (:class:`RegisteredBy`).

A reference is ``NAME`` (the latest version), ``NAME:VERSION`` or ``NAME@ALIAS``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raypipe.exceptions import ModelNotFoundError, RaypipeError
from raypipe.store.artifacts import ArtifactRef
from raypipe.store.lineage import LineageNode, datasets_in, lineage_tree, producer_of
from raypipe.store.metadata import MetadataStore, write_audit
from raypipe.store.refs import NAME_RE, check_name, parse_ref
from raypipe.store.sql import Database, Row, retrying

__all__ = [
    "NAME_RE",
    "AliasEvent",
    "LineageNode",
    "ModelRegistry",
    "ModelSummary",
    "ModelVersion",
    "RegisteredBy",
    "check_name",
    "parse_ref",
]


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    sha256: str
    uri: str
    size: int
    #: The stage run that produced the model artifact (for a cache hit: the ``cached`` record).
    run_id: str | None
    stage: str | None
    stage_run_id: int | None
    metrics: dict[str, Any]
    params: dict[str, Any]
    #: Every dataset in the model's lineage: ``{"sha256" (= its version), "stage", "run_id", "stage_run_id", "rows"}``.
    datasets: list[dict[str, Any]]
    code: str | None
    created_at: float
    aliases: tuple[str, ...]
    #: The model package's metadata (task, features, label, classes, spec, trained_by...).
    model: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Links besides lineage, oldest first: ``{"kind", "value", "at"}`` (see :meth:`ModelRegistry.link`).
    links: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: True when the call that returned this record created the version.
    is_new: bool = field(default=False, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["aliases"] = list(self.aliases)
        d.pop("is_new")
        return d


@dataclass(frozen=True)
class RegisteredBy:
    """The register stage run registering a version: its alias moves are made once, in the
    transaction that records them (table ``model_registrations``); registering again for the
    same stage run (a ``resume`` after that transaction) moves nothing."""

    run_id: str
    stage: str
    stage_run_id: int


@dataclass(frozen=True)
class ModelSummary:
    """One model: how many versions, the latest one and where its aliases point."""

    name: str
    description: str
    created_at: float
    versions: int
    latest: ModelVersion
    aliases: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at,
            "versions": self.versions,
            "latest": self.latest.version,
            "aliases": dict(self.aliases),
            "latest_metrics": self.latest.metrics,
        }


@dataclass(frozen=True)
class AliasEvent:
    """An alias set, moved or removed (``new_version`` None), with why."""

    name: str
    alias: str
    old_version: int | None
    new_version: int | None
    at: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ModelRegistry:
    """Models, versions and aliases in a :class:`MetadataStore` (its connection and transactions)."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self._conn = meta._conn

    # ------------------------------------------------------------------ lineage
    def producer_of(self, sha256: str, run_id: str | None = None) -> Row | None:
        """:func:`raypipe.store.lineage.producer_of` in this store."""
        return producer_of(self.meta, sha256, run_id)

    def lineage_tree(self, sha256: str, run_id: str | None = None) -> LineageNode:
        """:func:`raypipe.store.lineage.lineage_tree` in this store."""
        return lineage_tree(self.meta, sha256, run_id)

    @staticmethod
    def datasets_in(tree: LineageNode) -> list[dict[str, Any]]:
        """:func:`raypipe.store.lineage.datasets_in`."""
        return datasets_in(tree)

    # ------------------------------------------------------------------ writes
    @retrying
    def register(
        self,
        name: str,
        model_ref: ArtifactRef,
        run_id: str | None,
        stage: str | None,
        stage_run_id: int | None,
        metrics: Mapping[str, Any] | None = None,
        aliases: Iterable[str] = (),
        description: str = "",
        reason: str = "",
        aliases_if_unset: Iterable[str] = (),
        *,
        move_aliases: bool = True,
        by: RegisteredBy | None = None,
    ) -> ModelVersion:
        """Register ``model_ref`` as the next version of ``name`` (creating the model), then
        point ``aliases`` at it.  The same artifact under the same name again returns the
        existing version (its record unchanged) and still applies ``aliases``.  ``metrics``
        default to the model's own (its metadata's ``metrics``); ``reason`` goes into the
        alias history (default: the run and stage).  ``aliases_if_unset`` are pointed at it
        only where they point at no version yet (``production`` for the first version),
        checked in the same transaction.

        ``run_id``, ``stage`` and ``stage_run_id`` name the producer of the model; ``by`` the
        register stage run registering it: its moves are recorded as done with them, and a
        second call with the same ``by`` (a resume) moves no alias.  ``move_aliases=False``
        (a cache hit of a register stage) registers the version if it is missing and moves
        no alias."""
        check_name(name)
        aliases = [check_name(a, "alias") for a in aliases]
        if_unset = [check_name(a, "alias") for a in aliases_if_unset if a not in aliases]
        if model_ref.format != "model":
            raise RaypipeError(
                f"cannot register {model_ref.uri} as model {name!r}: it is a {model_ref.format!r} artifact, not a model"
            )
        meta = dict(model_ref.schema or {})
        existing = self._find(name, model_ref.sha256)
        datasets: list[dict[str, Any]] = []
        known = self._conn.execute("SELECT 1 FROM artifacts WHERE sha256 = ?", (model_ref.sha256,)).fetchone()
        if existing is None and known:  # the lineage walk only for a new version, outside the write lock
            datasets = self.datasets_in(self.lineage_tree(model_ref.sha256, run_id))
        now = time.time()
        reason = reason or (f"registered from run {run_id} stage {stage}" if run_id else "registered")
        with self.meta._tx(f"model:{name}") as c:
            c.execute(
                "INSERT OR IGNORE INTO artifacts(sha256, uri, size, format, schema_json, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    model_ref.sha256,
                    model_ref.uri,
                    model_ref.size,
                    model_ref.format,
                    json.dumps(meta) if meta else None,
                    now,
                ),
            )
            c.execute("INSERT OR IGNORE INTO models(name, created_at, description) VALUES (?, ?, ?)", (name, now, ""))
            if description:
                c.execute("UPDATE models SET description = ? WHERE name = ?", (description, name))
            row = c.execute(
                "SELECT version FROM model_versions WHERE name = ? AND sha256 = ?", (name, model_ref.sha256)
            ).fetchone()
            is_new = row is None
            if is_new:
                version = int(
                    c.execute(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE name = ?", (name,)
                    ).fetchone()[0]
                )
                c.execute(
                    "INSERT INTO model_versions(name, version, sha256, run_id, stage, stage_run_id, metrics_json,"
                    " params_json, datasets_json, code, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        model_ref.sha256,
                        run_id,
                        stage,
                        stage_run_id,
                        json.dumps(dict(metrics) if metrics is not None else meta.get("metrics") or {}, default=str),
                        json.dumps(meta.get("params") or {}, default=str),
                        json.dumps(datasets),
                        meta.get("code"),
                        now,
                    ),
                )
            else:
                version = int(row["version"])
            if by is not None and move_aliases:
                done = c.execute(
                    "SELECT 1 FROM model_registrations WHERE stage_run_id = ?", (by.stage_run_id,)
                ).fetchone()
                move_aliases = done is None
                if move_aliases:
                    c.execute(
                        "INSERT INTO model_registrations(stage_run_id, run_id, stage, name, version, at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (by.stage_run_id, by.run_id, by.stage, name, version, now),
                    )
            for alias in aliases if move_aliases else ():
                self._move_alias(c, name, alias, version, reason, now)
            for alias in if_unset if move_aliases else ():
                taken = c.execute("SELECT 1 FROM model_aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
                if taken is None:
                    self._move_alias(c, name, alias, version, f"{reason} (first version with @{alias})", now)
        return dataclasses.replace(self._get_version(name, version), is_new=is_new)

    @retrying
    def set_alias(self, name: str, version: int, alias: str, reason: str = "") -> AliasEvent | None:
        """Point ``alias`` of ``name`` at ``version`` (creating or moving it); the event, or
        None if it already pointed there."""
        check_name(alias, "alias")
        self._get_version(name, version)  # a clear error for an unknown model or version
        with self.meta._tx(f"model:{name}") as c:
            return self._move_alias(c, name, alias, version, reason, time.time())

    @retrying
    def remove_alias(self, name: str, alias: str, reason: str = "", version: int | None = None) -> AliasEvent:
        """Remove ``alias`` of ``name``; with ``version``, only if it points there."""
        self._check_model(name)
        now = time.time()
        with self.meta._tx(f"model:{name}") as c:
            row = c.execute("SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if row is None:
                raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}; {self._aliases_text(name)}")
            old = int(row["version"])
            if version is not None and old != version:
                raise RaypipeError(f"{name}@{alias} points at version {old}, not {version}; nothing removed")
            c.execute("DELETE FROM model_aliases WHERE name = ? AND alias = ?", (name, alias))
            c.execute(
                "INSERT INTO alias_events(name, alias, old_version, new_version, at, reason) VALUES (?, ?, ?, NULL, ?, ?)",
                (name, alias, old, now, reason),
            )
            write_audit(c, "alias.remove", f"{name}@{alias}", {"old_version": old, "reason": reason})
        return AliasEvent(name, alias, old, None, now, reason)

    def _move_alias(
        self, c: Database, name: str, alias: str, version: int, reason: str, now: float
    ) -> AliasEvent | None:
        row = c.execute("SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        old = None if row is None else int(row["version"])
        if old == version:
            return None
        c.execute(
            "INSERT INTO model_aliases(name, alias, version, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            (name, alias, version, now),
        )
        c.execute(
            "INSERT INTO alias_events(name, alias, old_version, new_version, at, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (name, alias, old, version, now, reason),
        )
        detail = {"old_version": old, "new_version": version, "reason": reason}
        write_audit(c, "alias.set", f"{name}@{alias}", detail)
        return AliasEvent(name, alias, old, version, now, reason)

    # ------------------------------------------------------------------ links
    @retrying
    def link(self, name: str, version: int, kind: str, value: Mapping[str, Any]) -> bool:
        """Link version ``version`` of ``name`` to something besides its lineage: kinds in use are
        ``reference_profile`` (``{"sha256", "uri"}``: the data profile drift monitoring compares
        traffic with), ``drift_event`` (the monitor's event with its features and statistics) and
        ``retraining`` (the loop cycle and run that made this version).  The same link again is
        a no-op (False)."""
        check_name(kind, "link kind")
        self._get_version(name, version)
        blob = json.dumps(dict(value), sort_keys=True, default=str, allow_nan=False)
        with self.meta._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO model_links(name, version, kind, value_json, at) VALUES (?, ?, ?, ?, ?)",
                (name, version, kind, blob, time.time()),
            )
            return cur.rowcount > 0

    def links(self, name: str, version: int, kind: str | None = None) -> list[dict[str, Any]]:
        """The links of a version (of one ``kind``), oldest first."""
        rows = self._conn.execute(
            "SELECT kind, value_json, at FROM model_links WHERE name = ? AND version = ? "
            + ("AND kind = ? " if kind else "")
            + "ORDER BY id",
            (name, version, kind) if kind else (name, version),
        ).fetchall()
        return [{"kind": r["kind"], "value": json.loads(r["value_json"]), "at": r["at"]} for r in rows]

    def reference_profile(self, name: str, version: int) -> ArtifactRef | None:
        """The data profile registered with the version (the newest ``reference_profile`` link)."""
        found = self.links(name, version, "reference_profile")
        return self.meta.artifact(found[-1]["value"]["sha256"]) if found else None

    # ------------------------------------------------------------------ reads
    def version_of(self, name: str, sha256: str) -> int | None:
        """The version of model ``name`` registered for the artifact ``sha256``, if any."""
        return self._find(name, sha256)

    def _find(self, name: str, sha256: str) -> int | None:
        row = self._conn.execute(
            "SELECT version FROM model_versions WHERE name = ? AND sha256 = ?", (name, sha256)
        ).fetchone()
        return None if row is None else int(row["version"])

    def _version_of(self, row: Row) -> ModelVersion:
        aliases = self._conn.execute(
            "SELECT alias FROM model_aliases WHERE name = ? AND version = ? ORDER BY alias",
            (row["name"], row["version"]),
        ).fetchall()
        return ModelVersion(
            name=row["name"],
            version=int(row["version"]),
            sha256=row["sha256"],
            uri=row["uri"],
            size=int(row["size"]),
            run_id=row["run_id"],
            stage=row["stage"],
            stage_run_id=row["stage_run_id"],
            metrics=json.loads(row["metrics_json"]),
            params=json.loads(row["params_json"]),
            datasets=json.loads(row["datasets_json"]),
            code=row["code"],
            created_at=row["created_at"],
            aliases=tuple(a[0] for a in aliases),
            model=json.loads(row["schema_json"]) if row["schema_json"] else {},
            links=self.links(row["name"], int(row["version"])),
        )

    _SELECT = "SELECT v.*, a.uri, a.size, a.schema_json FROM model_versions v JOIN artifacts a ON a.sha256 = v.sha256 "

    def _model_names(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM models ORDER BY name").fetchall()]

    def _check_model(self, name: str) -> None:
        if self._conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is None:
            names = self._model_names()
            have = (
                f"registered: {', '.join(names)}"
                if names
                else "no model is registered yet (a `register` stage adds one)"
            )
            raise ModelNotFoundError(f"no model {name!r} in {self.meta.location}; {have}")

    def _aliases_text(self, name: str) -> str:
        rows = self._conn.execute(
            "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", (name,)
        ).fetchall()
        return "aliases: " + ", ".join(f"{r[0]} -> v{r[1]}" for r in rows) if rows else "it has no aliases"

    def _get_version(self, name: str, version: int) -> ModelVersion:
        self._check_model(name)
        row = self._conn.execute(self._SELECT + "WHERE v.name = ? AND v.version = ?", (name, version)).fetchone()
        if row is None:
            have = [
                str(r[0])
                for r in self._conn.execute(
                    "SELECT version FROM model_versions WHERE name = ? ORDER BY version", (name,)
                ).fetchall()
            ]
            raise ModelNotFoundError(f"model {name!r} has no version {version}; versions: {', '.join(have) or 'none'}")
        return self._version_of(row)

    def get(self, ref: str) -> ModelVersion:
        """``NAME`` (latest version), ``NAME:VERSION`` or ``NAME@ALIAS``."""
        name, version, alias = parse_ref(ref)
        self._check_model(name)
        if alias is not None:
            row = self._conn.execute(
                "SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            if row is None:
                raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}; {self._aliases_text(name)}")
            version = int(row["version"])
        if version is None:
            latest = self._conn.execute("SELECT MAX(version) FROM model_versions WHERE name = ?", (name,)).fetchone()[0]
            if latest is None:
                raise ModelNotFoundError(f"model {name!r} has no versions")
            version = int(latest)
        return self._get_version(name, version)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        self._check_model(name)
        rows = self._conn.execute(self._SELECT + "WHERE v.name = ? ORDER BY v.version", (name,)).fetchall()
        return [self._version_of(r) for r in rows]

    def summary(self, name: str) -> ModelSummary:
        """One model: its description, number of versions, latest version and aliases."""
        self._check_model(name)
        m = self._conn.execute(
            "SELECT m.*, COUNT(v.version) AS n, MAX(v.version) AS latest FROM models m "
            "JOIN model_versions v ON v.name = m.name WHERE m.name = ? GROUP BY m.name",
            (name,),
        ).fetchone()
        if m is None:
            raise ModelNotFoundError(f"model {name!r} has no versions")
        aliases = self._conn.execute(
            "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", (name,)
        ).fetchall()
        return ModelSummary(
            name=m["name"],
            description=m["description"],
            created_at=m["created_at"],
            versions=int(m["n"]),
            latest=self._get_version(name, int(m["latest"])),
            aliases={a[0]: int(a[1]) for a in aliases},
        )

    def list_models(self) -> list[ModelSummary]:
        """Every model with at least one version, by name."""
        names = self._conn.execute("SELECT DISTINCT name FROM model_versions ORDER BY name").fetchall()
        return [self.summary(r[0]) for r in names]

    def aliases(self, name: str) -> dict[str, int]:
        """Where the aliases of ``name`` point: alias -> version (empty for an unknown model)."""
        rows = self._conn.execute(
            "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", (name,)
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def registered_by(self, stage_run_id: int) -> Row | None:
        """The committed registration of a register stage run (``run_id``, ``stage``, ``name``,
        ``version``, ``at``), or None if it has none (a cache hit, or its moves not committed)."""
        return self._conn.execute(
            "SELECT * FROM model_registrations WHERE stage_run_id = ?", (stage_run_id,)
        ).fetchone()

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Alias changes of ``name`` (of one alias if given), oldest first."""
        q = "SELECT name, alias, old_version, new_version, at, reason FROM alias_events WHERE name = ?"
        args: tuple[Any, ...] = (name,)
        if alias is not None:
            q += " AND alias = ?"
            args += (alias,)
        return [AliasEvent(**dict(r)) for r in self._conn.execute(q + " ORDER BY id", args).fetchall()]
