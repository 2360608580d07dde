"""The A/B report of a served app on a connected Ray: what ``raypipe ab report`` prints."""

from __future__ import annotations

import time
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.serving.abtest import stats as abstats
from raypipe.serving.variants import app_view, collector, production_variant, ray_get, resolve_variant
from raypipe.store.metadata import MetadataStore


def check_report_args(since_s: float | None, metric: str, min_samples: int, alpha: float) -> None:
    """The report's options, checked before Ray is touched."""
    if since_s is not None and not since_s > 0:
        raise RaypipeError(f"--since {since_s:g}: expected a number of seconds > 0")
    if metric not in ("auto", "conversion", "mean_outcome"):
        raise RaypipeError(f"--metric {metric!r}: expected auto, conversion or mean_outcome")
    try:
        abstats.check_settings(min_samples, alpha)
    except ValueError as e:
        raise RaypipeError(f"{e}") from None


def ab_report(
    app: str,
    meta: MetadataStore | None,
    *,
    since_s: float | None = None,
    control: str | None = None,
    metric: str = "auto",
    min_samples: int = abstats.DEFAULT_MIN_SAMPLES,
    alpha: float = abstats.DEFAULT_ALPHA,
) -> dict[str, Any]:
    """The app's A/B report as a JSON-able dict (see :func:`raypipe.serving.abtest.stats.ab_report`)."""
    check_report_args(since_s, metric, min_samples, alpha)
    view = app_view(app)
    handle = collector(app)
    now = time.time()
    since = now - since_s if since_s else None
    snaps = ray_get(handle.snapshot.remote(since))
    chosen = resolve_variant(control, view, meta, "control") if control else production_variant(meta, view)
    try:
        rep = abstats.ab_report(
            snaps, view.weights, control=chosen, metric=metric, min_samples=min_samples, alpha=alpha
        )
    except ValueError as e:
        raise RaypipeError(str(e)) from None
    return {
        "app": app,
        "model": view.model,
        "url": view.url,
        "since": since,
        "window_s": since_s,
        "generated_at": now,
        **rep.to_dict(),
    }
