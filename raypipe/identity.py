"""Who calls: the :class:`~raypipe.principal.Principal` of a CLI or API call, and what it may do
under the platform config stored in the metadata store (:mod:`raypipe.store.platform`).

Resolution (:func:`resolve`):

* no platform config, or one without ``users`` (a single user): the OS user, an admin, in
  team ``default``; a token, if any, is not read;
* ``users`` configured: the token in ``$RAYPIPE_TOKEN``, else in the token file
  (``$RAYPIPE_TOKEN_FILE``, default ``~/.config/raypipe/token``: owned by the user and not
  readable by group or others, as ssh wants its keys), whose SHA-256 must be one user's
  ``token_sha256`` (compared in constant time); no token or an unknown one is an error.

A run checks its pipeline against the platform config before any stage starts
(:func:`check_pipeline`): the scheduler settings belong to the platform, a stage's team must
be known and one the principal belongs to (an admin: any), its priority inside the team's
range.  ``raypipe admin apply`` refuses a config that would leave the applier without admin
(:func:`check_apply`).

Tokens identify callers of raypipe's CLI and API; they do not guard the metadata database,
the storage root or Ray, which are trust boundaries of their own (see docs/security.md).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from raypipe.config import ConfigSource, Loc, PipelineConfig, SchedulerConfig, parse_yaml, validation_issues
from raypipe.config.platform import DEFAULT_TEAM, PlatformConfig, is_platform_document
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.principal import Principal, acting_as
from raypipe.scheduler.policies.registry import get_policy
from raypipe.store.metadata import MetadataStore
from raypipe.store.platform import PlatformStore, StoredPlatform

__all__ = [
    "DEFAULT_TOKEN_FILE",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "IdentityError",
    "acting_for",
    "check_apply",
    "check_pipeline",
    "delegated",
    "established",
    "load_platform",
    "mint_token",
    "pipeline_issues",
    "principal_for_token",
    "principal_of",
    "read_token",
    "require_admin",
    "resolve",
    "save_token",
    "single_user",
    "token_sha256",
]

TOKEN_ENV = "RAYPIPE_TOKEN"
TOKEN_FILE_ENV = "RAYPIPE_TOKEN_FILE"
DEFAULT_TOKEN_FILE = "~/.config/raypipe/token"

#: The fields of a pipeline's ``scheduler:`` section that a platform config owns.
PLATFORM_OWNED = ("policy", "policy_args", "teams", "lease_s", "autoscaler", "consolidation", "node_choice")


class IdentityError(RaypipeError):
    """No principal: no token where one is needed, an unknown token, an unsafe token file, or a
    principal without the right (not an admin, not in the team)."""


# --------------------------------------------------------------------------- tokens


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token, as a platform config's ``token_sha256`` keeps it."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def mint_token() -> str:
    """A new random token (256 bits)."""
    return "rpt_" + secrets.token_urlsafe(32)


def token_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where the token file is: ``$RAYPIPE_TOKEN_FILE``, else ``~/.config/raypipe/token``."""
    env = os.environ if environ is None else environ
    return Path(env.get(TOKEN_FILE_ENV) or DEFAULT_TOKEN_FILE).expanduser()


def _check_private(path: Path) -> None:
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"token file {path} has mode {mode:04o}: a token must not be readable by group or others; "
            f"run: chmod 600 {path}"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise IdentityError(
            f"token file {path} belongs to another user (uid {st.st_uid}); use a token file of your own"
        )


def read_token(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The caller's token and where it came from (``$RAYPIPE_TOKEN`` or the file), or None."""
    env = os.environ if environ is None else environ
    value = (env.get(TOKEN_ENV) or "").strip()
    if value:
        return value, f"${TOKEN_ENV}"
    path = token_file(env)
    if not path.exists():
        if env.get(TOKEN_FILE_ENV):
            raise IdentityError(f"${TOKEN_FILE_ENV} names {path}, which does not exist")
        return None
    if not path.is_file():
        raise IdentityError(f"token file {path} is not a file")
    _check_private(path)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise IdentityError(f"cannot read token file {path}: {e}") from None
    if not value:
        raise IdentityError(f"token file {path} is empty")
    return value, f"token file {path}"


def save_token(token: str, path: Path, *, force: bool = False) -> Path:
    """Write ``token`` to ``path`` readable by its owner only (mode 0600, its folder 0700 when
    created); an existing file only with ``force``."""
    if path.exists() and not force:
        raise IdentityError(f"{path} exists; give --force to replace its token")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------- principals


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in the environment or the password database
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def single_user() -> Principal:
    """The principal of a store without users: the OS user, an admin, in team ``default``."""
    return Principal(os_user(), (DEFAULT_TEAM,), admin=True, source="single-user")


def _user(platform: StoredPlatform, name: str, source: str) -> Principal:
    user = platform.config.users[name]
    teams = tuple(dict.fromkeys([*user.teams, DEFAULT_TEAM]))
    return Principal(name, teams, admin=user.admin, source=source)


def resolve(platform: StoredPlatform | None, environ: Mapping[str, str] | None = None) -> Principal:
    """The caller's principal under ``platform`` (the stored config in force; None: none)."""
    if platform is None or not platform.config.users:
        return single_user()
    found = read_token(environ)
    if found is None:
        raise IdentityError(
            f"this platform has users (platform config version {platform.version}): give your token in "
            f"${TOKEN_ENV} or the file {token_file(environ)} (mode 600); an admin adds its SHA-256 to "
            "the platform config (`raypipe admin token` mints one)"
        )
    token, where = found
    return principal_for_token(platform, token, f"the token in {where}")


def principal_for_token(platform: StoredPlatform, token: str, what: str = "the token") -> Principal:
    """The user of ``platform`` whose ``token_sha256`` is the token's (compared in constant time,
    against every user); an IdentityError naming ``what`` when none is."""
    digest = token_sha256(token)
    match = None
    for name, user in platform.config.users.items():  # every user, so the time does not depend on which
        if hmac.compare_digest(digest, user.token_sha256):
            match = name
    if match is None:
        raise IdentityError(f"{what} is no user's in platform config version {platform.version}")
    return _user(platform, match, "token")


def delegated(platform: StoredPlatform | None, name: str) -> Principal:
    """The principal a process acting for ``name`` has (a closed loop's retraining run acts for
    whoever armed the loop): ``name`` as the platform config knows it."""
    if platform is None or not platform.config.users:
        return Principal(name, (DEFAULT_TEAM,), admin=True, source="delegated")
    if name not in platform.config.users:
        raise IdentityError(f"{name!r} is not a user of platform config version {platform.version}")
    return _user(platform, name, "delegated")


#: A principal a server established for the request it serves (``raypipe ui``: from the
#: request's token), which :func:`principal_of` returns instead of reading this process's token.
_ESTABLISHED: ContextVar[Principal | None] = ContextVar("raypipe_established_principal", default=None)


@contextmanager
def established(who: Principal) -> Iterator[Principal]:
    """Within the block, the caller is ``who`` (already authenticated by a server on its request's
    token): the API's calls act as it and check its rights, not the server process's own token."""
    reset = _ESTABLISHED.set(who)
    try:
        yield who
    finally:
        _ESTABLISHED.reset(reset)


def principal_of(meta: MetadataStore, environ: Mapping[str, str] | None = None) -> Principal:
    """The caller's principal under the platform config in force in ``meta`` (the one a server
    :func:`established` for this call, if any)."""
    who = _ESTABLISHED.get()
    if who is not None:
        return who
    return resolve(PlatformStore(meta).latest(), environ)


@contextmanager
def acting_for(meta: MetadataStore | None) -> Iterator[Principal]:
    """Resolve the caller's principal (``meta`` None: no store, the single user) and act as it
    within the block: what the block records names it."""
    who = principal_of(meta) if meta is not None else (_ESTABLISHED.get() or single_user())
    with acting_as(who):
        yield who


def require_admin(who: Principal, platform: StoredPlatform | None, what: str) -> None:
    if not who.admin:
        version = f" of platform config version {platform.version}" if platform is not None else ""
        raise IdentityError(f"{what}: {who.name} is not an admin{version}")


# --------------------------------------------------------------------------- pipelines


def pipeline_issues(
    cfg: PipelineConfig, platform: StoredPlatform | None, who: Principal | None
) -> list[tuple[Loc, str]]:
    """What a pipeline may not do under ``platform`` as ``who`` (None: skip membership): the
    scheduler settings it sets, its stages' unknown teams, teams ``who`` is not in, priorities
    outside their team's range.  Nothing without a platform config."""
    if platform is None:
        return []
    pc = platform.config
    issues: list[tuple[Loc, str]] = []
    defaults = SchedulerConfig()
    for f in PLATFORM_OWNED:
        if getattr(cfg.scheduler, f) != getattr(defaults, f):
            issues.append(
                (
                    ("scheduler", f),
                    f"set by this pipeline, but on this platform the scheduler's settings belong to its admins "
                    f"(platform config version {platform.version}): remove it; an admin changes them with "
                    "`raypipe admin apply`",
                )
            )
    known = pc.team_names()
    for i, st in enumerate(cfg.stages):
        team = pc.team(st.team)
        if team is None:
            issues.append((("stages", i, "team"), f"unknown team {st.team!r}; known teams: {', '.join(known)}"))
            continue
        if who is not None and not who.member_of(st.team):
            mine = ", ".join(t for t in who.teams) or "none"
            issues.append(
                (
                    ("stages", i, "team"),
                    f"{who.name} is not a member of team {st.team!r} (their teams: {mine}); an admin adds "
                    "members in the platform config",
                )
            )
        if not team.min_priority <= st.priority <= team.max_priority:
            issues.append(
                (
                    ("stages", i, "priority"),
                    f"got {st.priority}; team {st.team!r} allows priorities {team.min_priority}..{team.max_priority}",
                )
            )
    return issues


def check_pipeline(
    cfg: PipelineConfig, platform: StoredPlatform | None, who: Principal | None, source: ConfigSource | None = None
) -> None:
    """Raise a ConfigError (``file:line path: message`` with ``source``) listing what
    :func:`pipeline_issues` finds."""
    issues = pipeline_issues(cfg, platform, who)
    if issues:
        raise (source or ConfigSource(path=f"<pipeline {cfg.name}>")).error(issues)


# --------------------------------------------------------------------------- platform configs


def platform_issues(config: PlatformConfig) -> list[tuple[Loc, str]]:
    """What the schema cannot see: the scheduler's policy and its arguments."""
    sched = config.scheduler
    try:
        get_policy(sched.policy, **sched.policy_args)
    except RaypipeError as e:
        where = "policy_args" if "argument" in str(e) else "policy"
        return [(("scheduler", where), str(e))]
    return []


def parse_platform(data: Any, source: ConfigSource) -> PlatformConfig:
    """Validate a platform config document; a ConfigError naming each problem's line."""
    try:
        config = PlatformConfig.model_validate(data)
    except ValidationError as e:
        raise source.error(validation_issues(e, model=PlatformConfig)) from None
    issues = platform_issues(config)
    if issues:
        raise source.error(issues)
    return config


def load_platform(path: str | os.PathLike[str]) -> PlatformConfig:
    """Read and validate a platform config file (``raypipe admin apply``, ``raypipe validate``)."""
    p, shown = Path(path), str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown}: cannot read: {e}") from None
    data, source = parse_yaml(text, shown)
    if not is_platform_document(data):
        raise ConfigError(f"{shown}:1: not a platform config (expected `kind: platform`, `users` and `teams`)")
    return parse_platform(data, source)


def check_apply(
    new: PlatformConfig, who: Principal, current: StoredPlatform | None, environ: Mapping[str, str] | None = None
) -> None:
    """Whether ``who`` may apply ``new`` over ``current``: an admin now, and an admin after (with
    users in ``new``, its own token must be an admin's there), so nobody locks themselves out."""
    require_admin(who, current, "admin apply")
    if not new.users:
        return  # a single user again: the OS user is the admin
    found = read_token(environ)
    if found is None:
        raise IdentityError(
            "admin apply: this config has users, and you have no token: after it you could not act as anyone. "
            "Mint one (`raypipe admin token --user NAME --save`), put its token_sha256 on an admin user of "
            "the config, then apply it"
        )
    token, where = found
    digest = token_sha256(token)
    mine = [n for n, u in new.users.items() if hmac.compare_digest(digest, u.token_sha256)]
    if not mine:
        raise IdentityError(
            f"admin apply: the token in {where} is no user's in this config: you would lock yourself out"
        )
    if not new.users[mine[0]].admin:
        raise IdentityError(
            f"admin apply: this config makes you ({mine[0]}, by the token in {where}) no admin: you could not "
            "change it again; keep admin: true on your user (another admin may take it away)"
        )
