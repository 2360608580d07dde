"""The drift monitor's reference for a served app: which variant it compares traffic with
and that version's training profile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raypipe.exceptions import ModelNotFoundError, RaypipeError
from raypipe.monitoring.monitor import get_monitor, start_monitor
from raypipe.serving.resolve import resolve
from raypipe.serving.spec import ServeSpec, ref_text
from raypipe.store.artifacts import ArtifactStore, root_of


def reference_variant(spec: ServeSpec, registry: Any) -> int:
    """The version whose model and profile the monitor compares traffic with: ``monitor.variant``,
    else the variant serving ``@production``, else the one with the most traffic."""

    resolved = resolve(spec, registry)
    if spec.monitor is not None and spec.monitor.variant is not None:
        want = ref_text(spec.monitor.variant)
        return next(r.version for r in resolved if want in (r.ref, r.label))
    try:
        prod = registry.get(f"{spec.model}@production").version
    except ModelNotFoundError:
        prod = None
    if prod is not None and any(r.version == prod for r in resolved):
        return int(prod)
    return max(resolved, key=lambda r: r.spec.weight).version


def attach_monitor(
    spec: ServeSpec,
    registry: Any,
    *,
    version: int | None = None,
    retrained: bool = False,
    notify: list[dict[str, Any]] | None = None,
) -> str:
    """Start the app's drift monitor (or switch it to a new reference): the model of
    ``version`` (default: :func:`reference_variant`) and its training profile
    (``monitor.profile``, else the version's ``reference_profile`` link).  Returns the
    reference id ``MODEL:VERSION/<profile sha256[:12]>``.  ``notify``: who hears of its drift
    events (a new monitor's; ``notify:`` entries)."""
    import ray

    assert spec.monitor is not None
    version = reference_variant(spec, registry) if version is None else version
    mv = registry.get(f"{spec.model}:{version}")
    if spec.monitor.profile is not None and not retrained:
        ref = registry.meta.artifact(spec.monitor.profile)
    else:
        ref = registry.reference_profile(spec.model, version)
    if ref is None:
        raise RaypipeError(
            f"monitor: {spec.model} v{version} has no reference profile; register it with one (a register stage's "
            "input `profile: <data.profile stage>.profile`) or give monitor.profile (an artifact sha256 or URI)"
        )
    profile = ArtifactStore(root_of(ref.uri)).get_value(ref)
    if not isinstance(profile, Mapping) or not isinstance(profile.get("columns"), Mapping):
        raise RaypipeError(f"monitor: artifact {ref.sha256[:12]} is not a data profile (no 'columns')")
    ref_id = f"{spec.model}:{version}/{ref.sha256[:12]}"
    metrics = {k: v for k, v in (mv.metrics or {}).items() if isinstance(v, (int, float))}
    handle = get_monitor(spec.app)
    if handle is not None and retrained:
        ray.get(handle.set_reference.remote(dict(profile), dict(mv.model), None, metrics, True, ref_id), timeout=120)
        return ref_id
    start_monitor(
        spec.app,
        profile,
        mv.model,
        spec.monitor.monitor_spec(),
        reference_metrics=metrics,
        reference_id=ref_id,
        notify=notify,
    )
    return ref_id
