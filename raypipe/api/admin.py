"""The platform: identities (:mod:`raypipe.identity`), the admins' platform config
(``raypipe admin ...``), the audit log (``raypipe audit``) and people's operations on the
scheduler's jobs (``raypipe queue release|requeue|cancel``)."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from raypipe import identity
from raypipe.api.pipelines import open_metadata
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.principal import Principal, acting_as
from raypipe.runner.ray_session import connect_existing, local_cluster_address
from raypipe.scheduler.client import configure_controller, get_controller, platform_version
from raypipe.store.metadata import MetadataStore, resolve_db
from raypipe.store.platform import PlatformStore, StoredPlatform


def _metadata_or_none(db: str | None) -> MetadataStore | None:
    try:
        return open_metadata(db)
    except RaypipeError:
        if db:
            raise
        return None


@contextmanager
def acting(db: str | None) -> Iterator[tuple[MetadataStore | None, Principal]]:
    """The metadata store (None if there is none) and the caller's principal under its platform
    config (no store: the single user), acted as within the block."""
    meta = _metadata_or_none(db)
    try:
        with identity.acting_for(meta) as who:
            yield meta, who
    finally:
        if meta is not None:
            meta.close()


@contextmanager
def acting_in(db: str | None) -> Iterator[MetadataStore]:
    """The metadata store (an error if there is none), the block acting as the caller's principal."""
    meta = open_metadata(db)
    try:
        with identity.acting_for(meta):
            yield meta
    finally:
        meta.close()


def whoami(db: str | None = None) -> dict[str, Any]:
    """The caller's principal (name, teams, admin, how it was established) and the platform config in force."""
    meta = _metadata_or_none(db)
    try:
        platform = PlatformStore(meta).latest() if meta is not None else None
        who = identity.resolve(platform)
        return {**who.to_dict(), "platform_version": platform.version if platform else None}
    finally:
        if meta is not None:
            meta.close()


# --------------------------------------------------------------------------- tokens


def mint_token(user: str | None = None, *, save: bool = False, force: bool = False) -> dict[str, Any]:
    """A new token, its SHA-256, the line a platform config's ``users`` takes for it and, with
    ``save``, the token file it was written to (mode 600)."""
    token = identity.mint_token()
    digest = identity.token_sha256(token)
    name = user or "NAME"
    if user is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", user):
        raise RaypipeError(f"--user {user!r}: use letters, digits, '_' and '-'")
    saved = str(identity.save_token(token, identity.token_file(), force=force)) if save else None
    return {
        "user": user,
        "token": token,
        "token_sha256": digest,
        "platform_yaml": f"{name}: {{token_sha256: {digest}, teams: [], admin: false}}",
        "saved_to": saved,
    }


# --------------------------------------------------------------------------- the platform config


def _push(stored: StoredPlatform, address: str | None) -> dict[str, Any]:
    """Send the scheduler part of ``stored`` to the cluster's controller, when a cluster is at
    hand (this process's, ``address``, ``$RAY_ADDRESS`` or the one ``ray start`` left) and runs one."""
    connected = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if not (connected or address or os.environ.get("RAY_ADDRESS") or local_cluster_address()):
        return {"pushed": False, "note": "no Ray cluster found: drivers push it when they start stages"}
    try:
        connect_existing(address)
        handle = get_controller(create=False)
    except RaypipeError as e:
        return {"pushed": False, "note": f"{e}; drivers push it when they start stages"}
    done = configure_controller(handle, stored.settings())
    note = "" if done["applied"] else f"the scheduler follows version {done['version']} already"
    return {"pushed": bool(done["applied"]), "controller_version": done["version"], "note": note}


def admin_apply(
    path: str | os.PathLike[str], *, db: str | None = None, address: str | None = None, push: bool = True
) -> dict[str, Any]:
    """Validate and store ``path`` as the next version of the platform config (admins only; not
    one that leaves the applier without admin), then push its scheduler part to the running
    scheduler (``push``).  Returns the version stored and what the push did."""
    config = identity.load_platform(path)
    try:
        config = config.self_contained()
    except ValueError as e:
        raise ConfigError(f"{path}: scheduler.autoscaler.cluster_config: {e}") from None
    meta = MetadataStore(resolve_db(db))  # a new project's store is created: the platform comes first
    try:
        store = PlatformStore(meta)
        current = store.latest()
        who = identity.resolve(current)
        identity.check_apply(config, who, current)
        detail = {"file": str(Path(path)), "users": sorted(config.users), "teams": sorted(config.teams)}
        with acting_as(who):
            stored = store.apply(config, expected=current.version if current else None, detail=detail)
    finally:
        meta.close()
    out = {"version": stored.version, "applied_at": stored.applied_at, "actor": stored.actor, "db": meta.location}
    out.update(_push(stored, address) if push else {"pushed": False, "note": "--no-push"})
    return out


def admin_show(version: int | None = None, *, db: str | None = None) -> dict[str, Any]:
    """Version ``version`` (default: the one in force) of the platform config: version, when,
    who, and the config (token hashes only)."""
    meta = open_metadata(db)
    try:
        return PlatformStore(meta).get(version).to_dict()
    finally:
        meta.close()


def admin_history(db: str | None = None) -> list[dict[str, Any]]:
    """Every version of the platform config, oldest first (who applied it, when, users, admins, teams)."""
    meta = open_metadata(db)
    try:
        return PlatformStore(meta).history()
    finally:
        meta.close()


# --------------------------------------------------------------------------- the audit log

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``, ``1w``) or an ISO
    date or time (``2024-05-01``, ``2024-05-01T12:00``, with a zone or local), as a Unix time."""
    value = text.strip()
    m = _AGO.match(value)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise RaypipeError(
            f"--since {text!r}: expected a duration (90s, 30m, 2h, 7d, 1w) or an ISO date or time (2024-05-01T12:00)"
        ) from None


def audit(
    *,
    since: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    limit: int = 100,
    db: str | None = None,
) -> list[dict[str, Any]]:
    """Who did what: the newest ``limit`` audit rows (oldest first) since ``since`` (see
    :func:`parse_since`), by ``actor``, of ``action`` (``run`` takes ``run.*`` too), on ``target``."""
    if limit < 1:
        raise RaypipeError(f"--limit {limit}: expected at least 1")
    when = parse_since(since) if since else None
    meta = open_metadata(db)
    try:
        return meta.audit_log(target, limit, since=when, actor=actor, action=action)
    finally:
        meta.close()


# --------------------------------------------------------------------------- people's operations on jobs


def queue_action(action: str, job_id: str, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """``release``, ``requeue`` or ``cancel`` job ``job_id`` of the cluster's scheduler as the
    caller, who must be the job's principal or an admin; audited ``queue.<action>``.  The job's
    view after it."""
    import ray

    with acting(db) as (meta, who):
        platform = PlatformStore(meta).latest() if meta is not None else None
        connect_existing(address)
        handle = get_controller(create=False)
        current = platform_version(handle)
        if current is not None and platform is None:
            raise RaypipeError(
                f"the scheduler follows an admin's platform config (version {current}), and "
                f"{'no metadata store was found' if meta is None else meta.location + ' has none'}: "
                "give the platform's store (--db or $RAYPIPE_DB) to act on its jobs"
            )
        out = ray.get(handle.act.remote(action, job_id, who.caller()))
        if "error" in out:
            raise RaypipeError(f"queue {action}: {out['error']}")
        job: dict[str, Any] = out["job"]
        if meta is not None:
            meta.record_audit(f"queue.{action}", job_id, {"owner": job.get("owner"), "principal": job.get("principal")})
        return job
