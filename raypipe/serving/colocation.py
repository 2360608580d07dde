"""Colocated or routed: how an app's requests reach its variants' models, and what its
replicas take.

- **routed**: the router (ingress) deployment calls one Serve deployment per variant
  (``v<N>``): a second process hop per request, but each variant scales, and takes GPUs
  or memory, on its own.  For large models.
- **colocated**: every router replica loads every variant's model package in-process
  (:class:`raypipe.serving.model_variant.LocalVariant`, the same ``predict_many`` contract the
  router's batcher calls) and predicts on its own event loop: no second hop.  Routing,
  stickiness, shadow, forced variants, metrics, drift logging, ``/feedback`` and rollouts are
  the same code in both modes.

``serving.mode: auto`` (the default) colocates when the variants' model packages sum to less
than ``serving.colocate_max_bytes`` (256 MiB) and no variant asks for GPUs, custom resources
the router does not have, or autoscaling (a colocated router has a fixed replica count).

A colocated router replica (:func:`colocated_router`):

- ``num_replicas`` = the largest of the ingress's ``replicas`` and every variant's
  ``replicas`` (autoscaling: ``max_replicas``): the app keeps at least the parallelism
  each variant asked for;
- ``num_cpus`` = the ingress's + the largest variant's: a replica runs one forward pass at a
  time on its event loop (small batches inline), so it needs the router's share plus the
  biggest variant's, not their sum;
- ``memory`` = the ingress's + the sum of the variants' (each replica holds every model);
  ``num_gpus`` and custom ``resources``: the largest asked by any of them.

The scheduler's reservation books exactly these replicas (:func:`layout`'s ``bundles``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raypipe.resources import Resources
from raypipe.serving.resolve import ResolvedVariant
from raypipe.serving.spec import IngressSpec, ServeSpec, VariantSpec, replica_resources

COLOCATED = "colocated"
ROUTED = "routed"


@dataclass(frozen=True)
class Layout:
    """The app's mode, why, and its replicas: the router's count and options, the reservation's bundles."""

    mode: str
    reason: str
    ingress_replicas: int
    ingress_options: dict[str, Any]
    bundles: list[Resources] = field(default_factory=list)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def choose_mode(spec: ServeSpec, resolved: Sequence[ResolvedVariant]) -> tuple[str, str]:
    """``(mode, reason)``: the spec's ``serving.mode``, or ``auto``'s choice and why."""
    want = spec.serving.mode
    total = sum(int(r.size) for r in resolved)
    if want != "auto":
        return want, f"serving.mode: {want}"
    limit = spec.serving.colocate_max_bytes
    if total >= limit:
        return ROUTED, f"auto: the variants' models sum to {_mib(total)} (>= {_mib(limit)})"
    router_custom = set((spec.ingress.ray_actor_options.get("resources") or {}).keys())
    for r in resolved:
        opts = r.spec.ray_actor_options
        if float(opts.get("num_gpus") or 0.0) > 0:
            return ROUTED, f"auto: {r.label} asks for GPUs"
        extra = sorted(set((opts.get("resources") or {}).keys()) - router_custom)
        if extra:
            return ROUTED, f"auto: {r.label} asks for resources the router does not have ({', '.join(extra)})"
        if r.spec.autoscaling is not None:
            return ROUTED, f"auto: {r.label} autoscales"
    return COLOCATED, f"auto: the variants' models sum to {_mib(total)} (< {_mib(limit)})"


def colocated_router(ingress: IngressSpec, variants: Sequence[VariantSpec]) -> tuple[int, dict[str, Any]]:
    """A colocated router's ``num_replicas`` and per-replica ``ray_actor_options`` (see the module)."""
    replicas = max([ingress.replicas, *(v.max_replicas for v in variants)])
    base = ingress.ray_actor_options
    opts: dict[str, Any] = {
        "num_cpus": float(base.get("num_cpus", 0.0))
        + max((float(v.ray_actor_options.get("num_cpus", 0.0)) for v in variants), default=0.0)
    }
    gpus = max(
        [float(base.get("num_gpus") or 0.0), *(float(v.ray_actor_options.get("num_gpus") or 0.0) for v in variants)]
    )
    if gpus > 0:
        opts["num_gpus"] = gpus
    memory = float(base.get("memory") or 0.0) + sum(float(v.ray_actor_options.get("memory") or 0.0) for v in variants)
    if memory > 0:
        opts["memory"] = memory
    custom: dict[str, float] = {}
    for o in [base, *(v.ray_actor_options for v in variants)]:
        for k, amount in (o.get("resources") or {}).items():
            custom[k] = max(custom.get(k, 0.0), float(amount))
    if custom:
        opts["resources"] = custom
    return replicas, opts


def layout(spec: ServeSpec, resolved: Sequence[ResolvedVariant]) -> Layout:
    """The app's mode, its router's replicas and options, and the replicas the scheduler books:
    routed: the ingress's and every variant's (autoscaling: ``max_replicas``); colocated: the
    router's only (they hold the variants)."""
    mode, reason = choose_mode(spec, resolved)
    if mode == COLOCATED:
        replicas, options = colocated_router(spec.ingress, [r.spec for r in resolved])
        bundles = [replica_resources(options)] * replicas
    else:
        replicas, options = spec.ingress.replicas, dict(spec.ingress.ray_actor_options)
        bundles = [replica_resources(options)] * replicas
        for r in resolved:
            bundles += [replica_resources(r.spec.ray_actor_options)] * r.spec.max_replicas
    return Layout(mode, reason, replicas, options, [b for b in bundles if not b.is_zero()])


def mode_of(args: Mapping[str, Any]) -> str:
    """The mode of a deployed app's Serve ``args`` (apps deployed before modes existed: routed)."""
    return str(args.get("mode") or ROUTED)


__all__ = ["COLOCATED", "ROUTED", "Layout", "choose_mode", "colocated_router", "layout", "mode_of"]
