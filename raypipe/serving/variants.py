"""What the A/B report and rollouts read of a served app: its variants and weights (through
the serving core's status), its metrics collector, and variant references resolved against
the registry (``v4``, ``4``, ``MODEL:4``, ``MODEL@ALIAS``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raypipe.exceptions import ModelNotFoundError, RaypipeError
from raypipe.serving import app as serve_app
from raypipe.serving.rollout.controller import (
    NAMESPACE,
)
from raypipe.serving.state import collector_name
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry, parse_ref

_LABEL = re.compile(r"^v?(\d+)$")


@dataclass(frozen=True)
class AppView:
    """What the A/B report and rollouts need of an app's status."""

    app: str
    model: str | None
    #: variant label (``v3``) -> weight (percent)
    weights: dict[str, float]
    url: str | None
    #: alias -> variant label, as the app saw them when deployed
    aliases: dict[str, str]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def app_view(app: str) -> AppView:
    """The app's variants and weights via ``raypipe.serving.app.status``; an unknown app is a RaypipeError."""
    st = serve_app.status(app)
    variants = _get(st, "variants") or {}
    items = variants.items() if isinstance(variants, Mapping) else ((_get(v, "label"), v) for v in variants)
    weights: dict[str, float] = {}
    for label, v in items:
        version = _get(v, "version")
        label = label or (f"v{version}" if version is not None else None)
        if label is None:
            continue
        weights[str(label)] = float(_get(v, "weight", 0.0) or 0.0)
    aliases = {str(k): str(v) for k, v in (_get(st, "aliases") or {}).items()}
    return AppView(app, _get(st, "model"), weights, _get(st, "url"), aliases)


def set_weights(app: str, weights: Mapping[str, float]) -> Any:
    return serve_app.set_weights(app, dict(weights))


def collector(app: str) -> Any:
    import ray

    try:
        return ray.get_actor(collector_name(app), namespace=NAMESPACE)
    except ValueError:
        raise RaypipeError(
            f"app {app!r} has no metrics collector ({collector_name(app)} in namespace {NAMESPACE}); "
            "is it deployed (raypipe deploy)?"
        ) from None


def ray_get(ref: Any, timeout: float = 60.0) -> Any:
    """``ray.get`` that turns a RaypipeError raised inside an actor back into a RaypipeError."""
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, RaypipeError):
            raise RaypipeError(str(cause)) from None
        raise


def production_variant(meta: MetadataStore | None, view: AppView) -> str | None:
    """The variant serving ``MODEL@production`` (the registry's alias now, else the app's
    record of it at deploy time), if that version is deployed."""
    label = None
    if meta is not None and view.model:
        try:
            label = f"v{ModelRegistry(meta).get(f'{view.model}@production').version}"
        except ModelNotFoundError:
            label = None
    if label is None:
        label = view.aliases.get("production")
    return label if label in view.weights else None


def resolve_variant(ref: str, view: AppView, meta: MetadataStore | None, what: str = "candidate") -> str:
    """``v4`` | ``4`` | ``MODEL:4`` | ``MODEL@ALIAS`` -> the variant label ``v4``, deployed in the app."""
    ref = ref.strip()
    m = _LABEL.match(ref)
    if m:
        label = f"v{int(m.group(1))}"
    else:
        name, version, alias = parse_ref(ref)
        if view.model and name != view.model:
            raise RaypipeError(f"{what} {ref!r}: app {view.app!r} serves model {view.model!r}, not {name!r}")
        if version is None:
            if meta is None:
                raise RaypipeError(f"{what} {ref!r}: resolving an alias needs the metadata store (--db)")
            version = ModelRegistry(meta).get(ref).version
        label = f"v{version}"
    if label not in view.weights:
        have = ", ".join(f"{k} ({w:g}%)" for k, w in view.weights.items()) or "none"
        raise RaypipeError(
            f"{what} {ref!r} ({label}) is not a variant of app {view.app!r} (variants: {have}); "
            "deploy it first (at weight 0)"
        )
    return label
