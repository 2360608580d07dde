"""Deploy, re-weight, inspect and stop served models (Python API; the CLI and the
``deploy`` stage call these).  Ray must be connected (``raypipe.api`` does it).

Contract (shared with the A/B report and the canary controller)::

    deploy(spec: ServeSpec, *, db: str | None) -> AppStatus
    set_weights(app: str, weights: Mapping[str, float]) -> AppStatus
    set_shadow(app: str, variant: str | None) -> AppStatus
    status(app: str) -> AppStatus
    shutdown(app: str) -> None
    url(app: str) -> str                       # http://127.0.0.1:PORT/<route_prefix>
    apps() -> list[str]

- An app is one Serve application: an HTTP ingress deployment ``router`` and, routed, one
  deployment per model version named ``v<N>`` (:mod:`raypipe.serving.deployments`);
  colocated, the router's replicas hold the versions (:mod:`raypipe.serving.colocation`).
  Variants are pinned to versions when deployed (``@alias`` references are resolved
  then; moving the alias later changes nothing until the next deploy).
- The app is deployed through Serve's declarative config (the same path as ``serve
  deploy``): ``import_path`` :func:`raypipe.serving.deployments.build_app` with the resolved
  variants as ``args``, and the router's ``user_config`` = ``{"weights", "shadow",
  "aliases"}``.  :func:`set_weights` changes only that user_config, so Serve calls
  ``reconfigure`` on the running router replicas in place: no restart, no dropped
  request.  Other declaratively deployed apps are carried over unchanged; changes are
  serialized across processes by a lock in Ray's internal KV.
- The app's state (spec, resolved variants, user_config, reservation job) is kept in
  Ray's internal KV (``raypipe-serve/app/<app>``, namespace ``raypipe``), so any
  process connected to the cluster can re-weight, inspect or stop it.
- Metrics: the detached actor ``raypipe-serve-metrics-<app>`` (:mod:`raypipe.serving.metrics`).
- Auth: the spec's secret references (``auth`` tokens, ``force_variant.token``, ``secret``)
  are resolved by :func:`deploy` in the deploying process; the app's auth record (token
  hashes, the request-id key: :func:`raypipe.serving.auth.auth_record`) goes to Ray's KV
  under its own key, never into Serve's config or the app's record, which keep the
  references.  :func:`change_variants` (the closed loop) keeps the record as it is.
- Resources: one long-lived scheduler reservation per app (:mod:`raypipe.serving.reservation`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from raypipe._ray import serve_client
from raypipe._ray.actors import kill_actor
from raypipe.exceptions import RaypipeError
from raypipe.models.preprocess import describe_inputs
from raypipe.monitoring.monitor import stop_monitor
from raypipe.serving import colocation, reservation
from raypipe.serving.auth import auth_record, describe
from raypipe.serving.metrics import get_collector
from raypipe.serving.resolve import ResolvedVariant, check_distinct, from_version, resolve, shadow_label
from raypipe.serving.routing import WeightsError, parse_weights
from raypipe.serving.spec import ServeSpec, ref_text, replica_resources
from raypipe.serving.state import (
    AppState,
    AppStatus,
    UserConfig,
    VariantStatus,
    apps,
    collector_name,
    config_lock,
    controller_name,
    load_auth,
    load_state,
    need_ray,
    require_state,
    save_auth,
    save_state,
)
from raypipe.store.metadata import MetadataStore, open_existing
from raypipe.store.registry import ModelRegistry, ModelVersion

__all__ = [
    "AppStatus",
    "ServeSpec",
    "VariantStatus",
    "WeightsError",
    "apps",
    "deploy",
    "deploy_resolved",
    "set_shadow",
    "set_weights",
    "shutdown",
    "status",
    "url",
]

IMPORT_PATH = "raypipe.serving.deployments:build_app"
log = logging.getLogger("raypipe.serving")


# ---------------------------------------------------------------------- helpers
def _enum(v: Any) -> str:
    return str(getattr(v, "value", v))


def _serve_client(spec: ServeSpec | None = None) -> Any:
    """Serve's controller client.  With ``spec`` (deploying), Serve is started if needed
    (HTTP on ``spec.host:spec.port``); without, a cluster with no Serve is an error."""
    if spec is None:
        client = serve_client.running_client()
        if client is None:
            raise RaypipeError("Ray Serve is not running on this cluster (nothing is served)")
        return client
    client = serve_client.start_client(spec.host, spec.port)
    if "port" in spec.model_fields_set:
        have = client.get_serve_details().get("http_options") or {}
        if have.get("port") not in (None, spec.port):
            raise RaypipeError(
                f"Serve already listens on port {have.get('port')} on this cluster (one HTTP port per cluster); "
                f"drop `port: {spec.port}` or use {have.get('port')}"
            )
    return client


def _details(client: Any) -> dict[str, Any]:
    return client.get_serve_details()


def _apply(client: Any, app: str, config: Mapping[str, Any] | None) -> float:
    """Apply Serve's declarative config with ``app`` set to ``config`` (None: removed),
    carrying over every other declaratively deployed app.  Returns the app's previous
    ``last_deployed_time_s`` (0 if new)."""
    from ray.serve.schema import ServeDeploySchema

    details = _details(client)
    configs = []
    before = 0.0
    for name, d in (details.get("applications") or {}).items():
        if name == app:
            before = float(d.get("last_deployed_time_s") or 0.0)
            continue
        if _enum(d.get("source")) != "declarative" or _enum(d.get("status")) == "DELETING":
            continue
        cfg = d.get("deployed_app_config")
        if cfg:
            configs.append(cfg if isinstance(cfg, dict) else cfg.model_dump(exclude_unset=True))
    if config is not None:
        configs.append(dict(config))
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": configs}), _blocking=False)
    elif configs:
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": configs}), _blocking=False)
    else:
        client.delete_apps([app], blocking=False)
    return before


def _app_config(state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": state["app"],
        "route_prefix": state["route_prefix"],
        "import_path": IMPORT_PATH,
        "args": state["args"],
        "deployments": [{"name": "router", "user_config": state["user_config"]}],
        "logging_config": {"enable_access_log": False, "log_level": "WARNING"},
    }


def _wait(
    client: Any,
    app: str,
    *,
    timeout_s: float,
    before: float,
    user_config: Mapping[str, Any] | None = None,
    gone: bool = False,
) -> None:
    """Until ``app`` runs its new config (deployed after ``before``; every deployment
    healthy; the router's target user_config equal to ``user_config``), or is gone."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        d = (_details(client).get("applications") or {}).get(app)
        if gone:
            if d is None:
                return
            last = f"still {_enum(d.get('status'))}"
        elif d is not None:
            status = _enum(d.get("status"))
            deps = d.get("deployments") or {}
            if status == "DEPLOY_FAILED":
                raise RaypipeError(f"serving app {app!r} failed to deploy: {_last_lines(d.get('message', ''))}")
            router = deps.get("router") or {}
            uc = (router.get("deployment_config") or {}).get("user_config") if router else None
            fresh = float(d.get("last_deployed_time_s") or 0.0) > before
            healthy = bool(deps) and all(_enum(x.get("status")) == "HEALTHY" for x in deps.values())
            if status == "RUNNING" and fresh and healthy and (user_config is None or uc == dict(user_config)):
                return
            bad = [f"{n}: {x.get('message')}" for n, x in deps.items() if _enum(x.get("status")) == "UNHEALTHY"]
            last = f"{status}" + (f"; {'; '.join(bad)}" if bad else "")
        if time.monotonic() >= deadline:
            raise RaypipeError(f"serving app {app!r} not ready after {timeout_s:g}s ({last or 'not started'})")
        time.sleep(0.2)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [x for x in str(text).strip().splitlines() if x.strip()]
    return " | ".join(lines[-n:]) if lines else "no message"


def _open_meta(db: str | None) -> MetadataStore:
    return open_existing(db, hint="run a pipeline that registers the model first, or pass --db")


def _check_loadable(r: ResolvedVariant, model: str) -> None:
    meta = r.meta
    if not meta.get("features"):
        raise RaypipeError(f"{model} {r.label}: the model package lists no `features`; requests cannot be validated")
    if not meta.get("spec") and not meta.get("predict"):
        raise RaypipeError(
            f"{model} {r.label} was trained by a user loop without a `predict` function; set `predict` in its train stage"
        )


# ---------------------------------------------------------------------- API
def deploy(spec: ServeSpec, *, db: str | None = None) -> AppStatus:
    """Resolve ``spec``'s variants in the registry (``db``: the metadata store, see
    :func:`raypipe.store.metadata.resolve_db`), reserve their resources and deploy (or
    update) the app; returns once it serves.  Its drift monitor and closed loop are
    started by :func:`raypipe.loop.arming.deploy`, which calls this."""
    meta = _open_meta(db)
    try:
        reg = ModelRegistry(meta)
        resolved = resolve(spec, reg)
        labels = {r.label for r in resolved}
        aliases = {a: f"v{v}" for a, v in reg.summary(spec.model).aliases.items() if f"v{v}" in labels}
        return deploy_resolved(spec, resolved, aliases=aliases)
    finally:
        meta.close()


def _auth(spec: ServeSpec, keep: bool) -> dict[str, Any]:
    """The app's auth record: its references resolved in this process (``keep``: the
    deployed record as it is, if any: the closed loop changing variants from its actor)."""
    previous = load_auth(spec.app)
    if keep and previous is not None:
        return previous
    auth = spec.auth
    record = auth_record(
        spec.app,
        predict_tokens=auth.predict_tokens if auth else (),
        feedback_tokens=auth.feedback_tokens if auth else (),
        force_token=spec.force_variant.token if spec.force_variant else None,
        secret=spec.secret,
        has_auth=auth is not None,
        previous=previous,
    )
    if spec.monitor is not None and not record["feedback"]:
        log.warning(
            "app %s: labels sent to /feedback will not feed performance drift: only authenticated feedback "
            "does (give the app auth.feedback_tokens)",
            spec.app,
        )
    return record


def deploy_resolved(
    spec: ServeSpec,
    resolved: Sequence[ResolvedVariant],
    *,
    aliases: Mapping[str, str] | None = None,
    hint: str = "",
    keep_auth: bool = False,
) -> AppStatus:
    """Deploy variants already pinned to versions (the ``deploy`` stage resolves them on
    the driver and calls this from its task).  ``keep_auth``: keep the app's deployed auth
    record instead of resolving the spec's references again."""
    need_ray()
    check_distinct(resolved, spec.model)
    for r in resolved:
        _check_loadable(r, spec.model)
    auth = _auth(spec, keep_auth)  # a reference that does not resolve fails here, before anything changes
    shadow = shadow_label(spec, resolved)
    weights = {r.label: float(r.spec.weight) for r in resolved}
    user_config: UserConfig = {
        "weights": weights,
        "shadow": shadow,
        "aliases": dict(aliases or {}),
        "auth": str(auth["rev"]),
    }
    plan = colocation.layout(spec, resolved)  # colocated or routed; the replicas to book
    bundles = plan.bundles

    client = _serve_client(spec)
    prev = load_state(spec.app)
    job: dict[str, Any] | None = None
    old_job = prev["reservation"] if prev else None
    if spec.reserve and bundles:
        held = reservation.poll(old_job) if old_job else None
        if held is not None and reservation.same_bundles(held, bundles):
            job = held
        else:
            if old_job:
                reservation.release(old_job)
                old_job = None
            job = reservation.reserve(spec.app, bundles, timeout_s=spec.reserve_timeout_s, hint=hint)
    elif old_job:
        reservation.release(old_job)
    placement = reservation.selector(job) if job else {}

    def actor_options(options: Mapping[str, Any]) -> dict[str, Any]:
        return {**options, "label_selector": placement} if placement else dict(options)

    args = {
        "router": {
            "app": spec.app,
            "model": spec.model,
            "salt": spec.salt,
            "key": spec.key.model_dump(exclude_none=True) if spec.key else None,
            "force": spec.force_variant.model_dump(include={"header", "token_header"}) if spec.force_variant else None,
            "feedback": spec.feedback.model_dump(mode="json"),
            "max_body_bytes": spec.max_body_bytes,
            "collector": collector_name(spec.app),
            "variants": {
                r.label: {
                    "version": r.version,
                    "sha256": r.sha256,
                    "features": list(r.meta.get("features") or []),
                    "input_schema": dict(r.meta.get("input_schema") or {}),
                    "inputs": describe_inputs(r.meta),
                    "replicas": r.spec.max_replicas,
                }
                for r in resolved
            },
        },
        "mode": plan.mode,
        "mode_reason": plan.reason,
        "ingress": {
            "replicas": plan.ingress_replicas,
            "ray_actor_options": actor_options(plan.ingress_options),
            "max_ongoing_requests": spec.ingress.max_ongoing_requests,
        },
        "variants": {
            r.label: {
                "replicas": r.spec.replicas,
                "autoscaling": r.spec.autoscaling.model_dump(exclude_none=True) if r.spec.autoscaling else None,
                "ray_actor_options": actor_options(r.spec.ray_actor_options),
                "max_ongoing_requests": r.spec.max_ongoing_requests,
                "model": {
                    "label": r.label,
                    "uri": r.uri,
                    "sha256": r.sha256,
                    "size": r.size,
                    "fail_rate": r.spec.fail_rate,
                },
            }
            for r in resolved
        },
    }
    state: AppState = {
        "app": spec.app,
        "model": spec.model,
        "spec": spec.model_dump(mode="json"),
        "route_prefix": spec.prefix,
        "variants": [{**r.to_dict(), "spec": r.spec.model_dump(mode="json")} for r in resolved],
        "user_config": user_config,
        "args": args,
        "reservation": job["job_id"] if job else None,
        "deployed_at": time.time(),
    }
    try:
        collector = get_collector(spec.app, create=True)
        import ray

        ray.get(collector.configure.remote(state["reservation"], spec.feedback.window_s))
        with config_lock():
            save_auth(spec.app, auth)  # before Serve's config: the routers load it when they get its rev
            before = _apply(client, spec.app, _app_config(state))
            save_state(spec.app, state)
        _wait(client, spec.app, timeout_s=spec.deploy_timeout_s, before=before, user_config=user_config)
    except BaseException:
        if prev is None:  # a new app that did not come up: leave nothing behind
            try:
                with config_lock():
                    _apply(client, spec.app, None)
            finally:
                _teardown(spec.app, state)
        raise
    return status(spec.app)


def set_weights(app: str, weights: Mapping[str, float] | Sequence[str]) -> AppStatus:
    """Change the split live (``{"v3": 50, "v4": 50}`` or ``["v3=50", "v4=50"]``); the
    router replicas are reconfigured in place.  Raises WeightsError naming the problem."""
    state = require_state(app)
    new = parse_weights(weights, [v["label"] for v in state["variants"]])
    return _update(app, weights=new)


def set_shadow(app: str, variant: str | None) -> AppStatus:
    """Send a copy of every request not routed to ``variant`` (a deployed ``v<N>``) to it,
    live; its answers are ignored and its metrics recorded.  None stops shadowing."""
    state = require_state(app)
    labels = [v["label"] for v in state["variants"]]
    if variant is not None and variant not in labels:
        raise WeightsError(f"shadow: unknown variant {variant}; known variants: {', '.join(labels)}")
    return _update(app, shadow=variant)


def _update(app: str, **changes: Any) -> AppStatus:
    """Change the router's user_config (weights, shadow) and wait until every router
    replica runs it (Serve reconfigures them in place)."""
    client = _serve_client()
    with config_lock():
        state = require_state(app)
        state["user_config"] = cast(UserConfig, {**state["user_config"], **changes})
        before = _apply(client, app, _app_config(state))
        save_state(app, state)
    timeout = float(state["spec"].get("deploy_timeout_s", 300.0))
    _wait(client, app, timeout_s=timeout, before=before, user_config=state["user_config"])
    return status(app)


def change_variants(
    app: str,
    registry: ModelRegistry,
    *,
    add: Sequence[tuple[ModelVersion, Mapping[str, Any]]] = (),
    remove: Sequence[str] = (),
) -> AppStatus:
    """Add variants (a registered version and its VariantSpec fields, at weight 0) to a running
    app, or remove variants that get no traffic; the other variants stay as they are, pinned to
    the versions they serve now (an alias that moved since does not move them).  Used by the
    closed loop to deploy a retrained candidate before its canary and to retire the loser."""
    state = require_state(app)
    weights = {k: float(w) for k, w in state["user_config"]["weights"].items()}
    labels = [v["label"] for v in state["variants"]]
    for label in remove:
        if label not in labels:
            raise RaypipeError(f"app {app!r} has no variant {label}; variants: {', '.join(labels)}")
        if weights.get(label, 0.0) > 0:
            raise RaypipeError(
                f"variant {label} of app {app!r} gets {weights[label]:g}% of the traffic; set it to 0 first"
            )
    kept = [v for v in state["variants"] if v["label"] not in remove]
    if not kept and not add:
        raise RaypipeError(f"app {app!r} would have no variant left")
    variants = []
    for v in kept:
        fields = {**v["spec"], "version": v["label"], "weight": weights.get(v["label"], 0.0)}
        if fields.get("autoscaling"):
            fields.pop("replicas", None)
        variants.append(fields)
    for mv, options in add:
        label = f"v{mv.version}"
        if label in labels and label not in remove:
            raise RaypipeError(f"app {app!r} already serves {label}")
        variants.append({**options, "version": label, "weight": 0.0})
    shadow = state["user_config"].get("shadow")
    doc = {
        **state["spec"],
        "variants": variants,
        "shadow": {"variant": shadow} if shadow and shadow not in remove else None,
    }
    try:
        spec = ServeSpec.model_validate(doc)
    except ValueError as e:
        raise RaypipeError(f"app {app!r}: cannot change its variants: {e}") from None
    resolved = [from_version(vs, registry.get(f"{spec.model}:{ref_text(vs.version)[1:]}")) for vs in spec.variants]
    served = {r.label for r in resolved}
    aliases = {a: f"v{n}" for a, n in registry.summary(spec.model).aliases.items() if f"v{n}" in served}
    return deploy_resolved(spec, resolved, aliases=aliases, keep_auth=True)


def status(app: str) -> AppStatus:
    """The app's variants, weights, aliases, URL, Serve status and reservation."""
    state = require_state(app)
    client = _serve_client()
    details = _details(client)
    d = (details.get("applications") or {}).get(app) or {}
    deps = d.get("deployments") or {}
    uc = state["user_config"]
    variants = {}
    router = deps.get("router") or {}
    mode = colocation.mode_of(state["args"])
    for v in state["variants"]:
        dep = (router if mode == colocation.COLOCATED else deps.get(v["label"])) or {}  # colocated: in the router
        vs = v["spec"]
        variants[v["label"]] = VariantStatus(
            label=v["label"],
            version=int(v["version"]),
            ref=v["ref"],
            sha256=v["sha256"],
            weight=float(uc["weights"].get(v["label"], 0.0)),
            replicas=int((vs.get("autoscaling") or {}).get("max_replicas") or vs.get("replicas") or 1),
            target_replicas=int(dep.get("target_num_replicas") or 0),
            running_replicas=sum(1 for r in dep.get("replicas") or [] if _enum(r.get("state")) == "RUNNING"),
            status=_enum(dep.get("status")) if dep else "MISSING",
            ray_actor_options=dict(vs.get("ray_actor_options") or {}),
            resources=replica_resources(vs.get("ray_actor_options") or {}).to_dict(),
            autoscaling=vs.get("autoscaling"),
            fail_rate=float(vs.get("fail_rate") or 0.0),
            shadow=uc.get("shadow") == v["label"],
        )
    job = None
    held = state.get("reservation")
    if held:
        view = reservation.poll(held)
        job = {"job_id": held, "state": view.get("state") if view else "unknown"}
        if view:
            job.update({"demand": view.get("demand"), "nodes": view.get("nodes"), "reason": view.get("reason")})
    spec = state["spec"]
    return AppStatus(
        app=app,
        model=state["model"],
        status=_enum(d.get("status")) if d else "NOT_STARTED",
        message=_last_lines(d.get("message", "")) if d.get("message") else "",
        url=_url(details, state["route_prefix"]),
        route_prefix=state["route_prefix"],
        variants=variants,
        weights={k: float(w) for k, w in uc["weights"].items()},
        aliases=dict(uc.get("aliases") or {}),
        shadow=uc.get("shadow"),
        key=spec.get("key"),
        force_header=(spec.get("force_variant") or {}).get("header"),
        auth=describe(load_auth(app)),
        reservation=job,
        mode=mode,
        mode_reason=str(state["args"].get("mode_reason") or ""),
        ingress={
            "target_replicas": int(router.get("target_num_replicas") or 0),
            "running_replicas": sum(1 for r in router.get("replicas") or [] if _enum(r.get("state")) == "RUNNING"),
            "status": _enum(router.get("status")) if router else "MISSING",
            "replicas": int(state["args"]["ingress"]["replicas"]),
            "ray_actor_options": {
                k: v for k, v in state["args"]["ingress"]["ray_actor_options"].items() if k != "label_selector"
            },
        },
    )


def _url(details: Mapping[str, Any], prefix: str) -> str:
    http = details.get("http_options") or {}
    host = http.get("host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{http.get('port', 8000)}{'' if prefix == '/' else prefix}"


def url(app: str) -> str:
    """``http://HOST:PORT/<route_prefix>`` of a served app (POST {url}/predict)."""
    state = require_state(app)
    return _url(_details(_serve_client()), state["route_prefix"])


def shutdown(app: str) -> None:
    """Delete the app from Serve, release its reservation and stop its metrics collector; its
    rollout controller and drift monitor stop first (recorded events stay in the metadata
    store).  Its closed loop is stopped by :func:`raypipe.loop.arming.shutdown`, which calls this."""
    state = require_state(app)
    kill_actor(controller_name(app))
    stop_monitor(app)
    try:
        client = _serve_client()
    except RaypipeError:  # Serve itself is gone: only the reservation and the collector are left
        client = None
    if client is not None:
        with config_lock():
            _apply(client, app, None)
        _wait(client, app, timeout_s=120.0, before=0.0, gone=True)
    _teardown(app, state)


def _teardown(app: str, state: Mapping[str, Any]) -> None:
    if state.get("reservation"):
        reservation.release(state["reservation"])
    kill_actor(collector_name(app))
    save_state(app, None)
    save_auth(app, None)
