"""The platform config in the metadata store: table ``platform_configs`` (schema version 3), one
row per version ``raypipe admin apply`` stored, never changed or deleted.

``version`` counts from 1; the latest is the one in force.  Each row keeps who applied it and
when, and the config as validated (:class:`~raypipe.config.platform.PlatformConfig`, tokens
as SHA-256 hashes only).  Applying is one transaction with its ``admin.apply`` audit row, and
takes the version it was checked against: a config applied by someone else meanwhile makes it
fail rather than silently replace what the check never saw.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from raypipe.config.platform import PlatformConfig
from raypipe.exceptions import RaypipeError, StorageError
from raypipe.store.metadata import MetadataStore, current_actor, write_audit
from raypipe.store.sql import Row, retrying


@dataclass(frozen=True)
class StoredPlatform:
    """One stored version of the platform config."""

    version: int
    applied_at: float
    actor: str | None
    config: PlatformConfig

    def settings(self) -> dict[str, Any]:
        """The scheduler controller's settings from this version."""
        return self.config.settings(self.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "applied_at": self.applied_at,
            "actor": self.actor,
            "config": self.config.model_dump(mode="json"),
        }


class PlatformStore:
    """The versions of the platform config in one :class:`MetadataStore`."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self._conn = meta._conn

    def _stored(self, row: Row) -> StoredPlatform:
        try:
            config = PlatformConfig.model_validate(json.loads(row["config_json"]))
        except (ValidationError, ValueError) as e:
            raise StorageError(
                f"metadata store {self.meta.location}: platform config version {row['version']} does not "
                f"validate ({e}); apply a fixed one with `raypipe admin apply`"
            ) from None
        return StoredPlatform(int(row["version"]), float(row["applied_at"]), row["actor"], config)

    def latest(self) -> StoredPlatform | None:
        """The platform config in force (None: none was ever applied, a single-user store)."""
        row = self._conn.execute("SELECT * FROM platform_configs ORDER BY version DESC LIMIT 1").fetchone()
        return None if row is None else self._stored(row)

    def get(self, version: int | None = None) -> StoredPlatform:
        """Version ``version`` (default: the latest); an error listing what exists otherwise."""
        if version is None:
            found = self.latest()
            if found is None:
                raise RaypipeError(
                    f"no platform config in {self.meta.location}: this is a single-user store "
                    "(apply one with `raypipe admin apply platform.yaml`)"
                )
            return found
        row = self._conn.execute("SELECT * FROM platform_configs WHERE version = ?", (version,)).fetchone()
        if row is None:
            versions = [h["version"] for h in self.history()]
            known = f"versions 1..{max(versions)}" if versions else "none yet"
            raise RaypipeError(f"no platform config version {version} in {self.meta.location} ({known})")
        return self._stored(row)

    def history(self) -> list[dict[str, Any]]:
        """Every version, oldest first: version, when, who, users, admins and teams."""
        rows = self._conn.execute("SELECT * FROM platform_configs ORDER BY version").fetchall()
        out = []
        for r in rows:
            doc = json.loads(r["config_json"])
            users = doc.get("users") or {}
            out.append(
                {
                    "version": int(r["version"]),
                    "applied_at": float(r["applied_at"]),
                    "actor": r["actor"],
                    "description": doc.get("description") or "",
                    "users": sorted(users),
                    "admins": sorted(n for n, u in users.items() if u.get("admin")),
                    "teams": sorted(doc.get("teams") or {}),
                    "policy": (doc.get("scheduler") or {}).get("policy"),
                }
            )
        return out

    @retrying
    def apply(
        self, config: PlatformConfig, *, expected: int | None, detail: dict[str, Any] | None = None
    ) -> StoredPlatform:
        """Store ``config`` as the next version, with its ``admin.apply`` audit row, if the latest
        version is still ``expected`` (None: there is none); the stored version."""
        actor = current_actor()
        doc = config.model_dump_json()
        now = time.time()
        with self.meta._tx("platform") as c:
            row = c.execute("SELECT MAX(version) FROM platform_configs").fetchone()
            latest = None if row is None or row[0] is None else int(row[0])
            if latest != expected:
                raise RaypipeError(
                    f"the platform config changed while this one was checked (now version {latest}, "
                    f"checked against {expected}); run `raypipe admin apply` again"
                )
            version = (latest or 0) + 1
            c.execute(
                "INSERT INTO platform_configs(version, applied_at, actor, config_json) VALUES (?, ?, ?, ?)",
                (version, now, actor, doc),
            )
            write_audit(c, "admin.apply", "platform", {"version": version, **(detail or {})}, actor)
        return StoredPlatform(version, now, actor, config)
