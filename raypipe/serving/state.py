"""A served app's record and status: what raypipe keeps of each app in Ray's KV (its spec,
variants and Serve config), the lock that serializes changes of Serve's configuration, and
the status types the API returns."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

from raypipe._ray import kv
from raypipe.exceptions import RaypipeError


class UserConfig(TypedDict):
    """The router's live configuration (Serve's ``user_config``: changed without a redeploy)."""

    weights: dict[str, float]
    shadow: str | None
    aliases: dict[str, str]
    #: The ``rev`` of the app's auth record (:func:`load_auth`): a new one makes the routers reload it.
    auth: str


class AppState(TypedDict):
    """What raypipe keeps of a served app in Ray's KV (one JSON document per app)."""

    app: str
    model: str
    #: The ServeSpec as JSON.
    spec: dict[str, Any]
    route_prefix: str
    #: Per variant: the resolved variant (label, version, ref, sha256, uri, meta) and its spec.
    variants: list[dict[str, Any]]
    user_config: UserConfig
    #: The Serve application's ``args`` (what ``build_app`` gets).
    args: dict[str, Any]
    #: The scheduler job that reserves the replicas' resources, if any.
    reservation: str | None
    deployed_at: float


#: Per-app actors: the metrics collector and the rollout controller.
COLLECTOR_PREFIX = "raypipe-serve-metrics-"
ROLLOUT_PREFIX = "raypipe-rollout-"


def collector_name(app: str) -> str:
    return COLLECTOR_PREFIX + app


def controller_name(app: str) -> str:
    """The name of the app's rollout controller actor."""
    return ROLLOUT_PREFIX + app


_STATE_PREFIX = b"raypipe-serve/app/"
_AUTH_PREFIX = b"raypipe-serve/auth/"
_LOCK_KEY = b"raypipe-serve/lock"
_LOCK_STALE_S = 60.0


@dataclass(frozen=True)
class VariantStatus:
    """One variant of a served app."""

    label: str
    version: int
    ref: str
    sha256: str
    weight: float
    #: Replicas configured (autoscaling: max_replicas), Serve's target now, and how many run.
    replicas: int
    target_replicas: int
    running_replicas: int
    #: Serve's deployment status (HEALTHY, UPDATING, UNHEALTHY...).
    status: str
    #: Per replica, as given to Ray (num_cpus, num_gpus, memory, resources), and as the
    #: scheduler books it ({cpu, gpu, memory_mb, custom}).
    ray_actor_options: dict[str, Any]
    resources: dict[str, Any]
    autoscaling: dict[str, Any] | None
    fail_rate: float
    shadow: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AppStatus:
    """A served app as Serve and the scheduler see it now."""

    app: str
    model: str
    #: Serve's application status: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, DELETING, NOT_STARTED.
    status: str
    message: str
    url: str
    route_prefix: str
    variants: dict[str, VariantStatus]
    weights: dict[str, float]
    #: alias -> variant label (aliases of the model pointing at a served version, at deploy time).
    aliases: dict[str, str]
    shadow: str | None
    key: dict[str, str] | None
    #: The force-variant header, or None when forcing is off.
    force_header: str | None
    #: What is authenticated: {auth, predict_tokens, feedback_tokens (counts), force_variant, id_key}.
    auth: dict[str, Any] = field(default_factory=dict)
    #: The scheduler job booking the replicas' resources: {job_id, state, demand, nodes}, or None.
    reservation: dict[str, Any] | None = None
    #: ``colocated`` (the variants run in the router's replicas) or ``routed`` (a deployment
    #: per variant), and why (``serving.mode`` or ``auto``'s reason).
    mode: str = "routed"
    mode_reason: str = ""
    #: The router: replicas running / targeted, its Serve status, replicas and options as deployed.
    ingress: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = {k: v.to_dict() for k, v in self.variants.items()}
        return d


def need_ray() -> None:
    import ray

    if not ray.is_initialized():
        raise RaypipeError("not connected to Ray: serving needs a running cluster (ray.init(address=...) first)")


def _state_key(app: str) -> bytes:
    return _STATE_PREFIX + app.encode()


def load_state(app: str) -> AppState | None:
    state: AppState | None = kv.get_json(_state_key(app))
    return state


def save_state(app: str, state: AppState | None) -> None:
    kv.put_json(_state_key(app), None if state is None else dict(state))


def load_auth(app: str) -> dict[str, Any] | None:
    """The app's auth record (:func:`raypipe.serving.auth.auth_record`: token hashes and the
    request-id key), kept in Ray's KV apart from the app's record and from Serve's config."""
    record: dict[str, Any] | None = kv.get_json(_AUTH_PREFIX + app.encode())
    return record


def save_auth(app: str, record: dict[str, Any] | None) -> None:
    kv.put_json(_AUTH_PREFIX + app.encode(), record)


def apps() -> list[str]:
    """Names of the apps deployed by raypipe on this cluster."""
    need_ray()
    return sorted(k[len(_STATE_PREFIX) :].decode() for k in kv.keys(_STATE_PREFIX))


def require_state(app: str) -> AppState:
    need_ray()
    state = load_state(app)
    if state is None:
        have = apps()
        raise RaypipeError(
            f"no serving app {app!r} on this cluster; "
            + (f"apps: {', '.join(have)}" if have else "none is deployed (raypipe deploy SPEC.yaml)")
        )
    return state


@contextmanager
def config_lock(timeout_s: float = 120.0) -> Iterator[None]:
    """Serialize changes of Serve's config across processes (Ray KV test-and-set)."""
    token = f"{os.getpid()}:{uuid.uuid4().hex}:{time.time()}".encode()
    deadline = time.monotonic() + timeout_s
    while True:
        if not kv.put(_LOCK_KEY, token, overwrite=False):
            break
        held = kv.get(_LOCK_KEY) or b""
        try:
            since = float(held.decode().rsplit(":", 1)[-1])
        except ValueError:
            since = 0.0
        if time.time() - since > _LOCK_STALE_S:  # a holder died
            kv.delete(_LOCK_KEY)
            continue
        if time.monotonic() > deadline:
            raise RaypipeError("another process is changing Serve's configuration; try again")
        time.sleep(0.1)
    try:
        yield
    finally:
        if kv.get(_LOCK_KEY) == token:
            kv.delete(_LOCK_KEY)
