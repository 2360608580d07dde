"""A model's versions side by side (``/models/NAME/compare?a=N&b=M``) and a sweep's trials
(the ``trials`` table a ``tune`` stage outputs, shown for a version it trained), read from the
metadata store and the artifact store; plain JSON-able values the pages render and the
``/api`` twins return."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from raypipe.exceptions import StorageError
from raypipe.store.metadata import MetadataStore
from raypipe.ui import previews, queries
from raypipe.ui.graphs import Axis, axis_of, parallel_coordinates

#: Most trials read from a sweep's table (its first file).
MAX_TRIALS = 2000
#: Most hyperparameter axes drawn (the table has them all).
MAX_AXES = 10


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys (``model.hidden: 64``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return None


def _side(meta: MetadataStore, name: str, version: int) -> dict[str, Any]:
    """One version of a comparison: the registry's record, the run that made it and who ran
    it, and what it was trained on (raw files and dataset versions of its lineage)."""
    detail = queries.version_detail(meta, name, version)
    mv = detail["version"]
    nodes, _ = queries.lineage_graph(meta, detail["lineage_tree"])
    run = None
    if mv["run_id"]:
        row = (
            queries._db(meta)
            .execute("SELECT run_id, pipeline, status, actor, created_at FROM runs WHERE run_id = ?", (mv["run_id"],))
            .fetchone()
        )
        run = dict(row) if row is not None else None
    keep = ("sha256", "format", "uri", "rows", "size", "stage", "output", "run_id")
    return {
        "version": mv["version"],
        "sha256": mv["sha256"],
        "size": mv["size"],
        "created_at": mv["created_at"],
        "aliases": mv["aliases"],
        "code": mv["code"],
        "run_id": mv["run_id"],
        "stage": mv["stage"],
        "run": run,
        "actor": run["actor"] if run else None,
        "metrics": mv["metrics"],
        "params": mv["params"],
        "sources": [{k: n[k] for k in keep} for n in nodes if n["format"] == "source"],
        # what the stages before made of them (datasets, tables...), nearest the model first
        "inputs": [{k: n[k] for k in keep} for n in nodes if n["format"] != "source" and n["sha256"] != mv["sha256"]],
    }


def compare_doc(meta: MetadataStore, name: str, a: int, b: int) -> dict[str, Any]:
    """Versions ``a`` and ``b`` of model ``name`` side by side: every metric of either with
    ``b - a`` (numbers only), every param (dotted keys) with whether they differ, what each
    was trained on (``sources``: the raw files of its lineage; ``inputs``: the artifacts the
    stages before made, datasets and tables; ``shared_inputs``: those both have), the run and
    its actor.  An unknown model or
    version raises ModelNotFoundError (a 404)."""
    queries.model_detail(meta, name, 1, 0)  # the model exists (a 404 naming it otherwise)
    left, right = _side(meta, name, a), _side(meta, name, b)
    metrics = []
    for k in dict.fromkeys([*left["metrics"], *right["metrics"]]):
        va, vb = left["metrics"].get(k), right["metrics"].get(k)
        na, nb = _number(va), _number(vb)
        metrics.append({"name": k, "a": va, "b": vb, "diff": nb - na if na is not None and nb is not None else None})
    pa, pb = _flat(left["params"]), _flat(right["params"])
    params = [
        {"name": k, "a": pa.get(k), "b": pb.get(k), "same": pa.get(k) == pb.get(k) and (k in pa) == (k in pb)}
        for k in sorted(set(pa) | set(pb))
    ]
    inputs_a = {n["sha256"] for n in left["sources"] + left["inputs"]}
    inputs_b = {n["sha256"] for n in right["sources"] + right["inputs"]}
    return {
        "name": name,
        "a": left,
        "b": right,
        "metrics": metrics,
        "params": params,
        "same_artifact": left["sha256"] == right["sha256"],
        "shared_inputs": sorted(inputs_a & inputs_b),
    }


# ----------------------------------------------------------------------------- a sweep's trials


def _tune_spec(meta: MetadataStore, run_id: str | None, stage: str | None) -> dict[str, Any] | None:
    if not run_id or not stage:
        return None
    row = queries._db(meta).execute("SELECT config_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    return next((s for s in queries.stage_specs(row["config_json"]) if s["name"] == stage), None)


def trials_doc(
    meta: MetadataStore, mv: Mapping[str, Any], sort: str | None = None, order: str = "asc"
) -> dict[str, Any] | None:
    """The sweep that trained version ``mv`` (a registry record): the ``trials`` output of the
    stage run that made it (a ``tune`` stage), its metric and mode, the best trial (best
    ``<metric>_best`` among trials without an error), the rows sorted by ``sort`` (a column;
    default the metric's best, best first) and ``order``.  None when that stage output no trials."""
    if mv.get("stage_run_id") is None:
        return None
    ref = meta.io_of(int(mv["stage_run_id"]), "out").get("trials")
    if ref is None:
        return None
    try:
        table = previews.table_preview(ref, rows=MAX_TRIALS)
    except (StorageError, OSError) as e:
        return {"error": f"cannot read the trials table {ref.uri}: {e}", "columns": [], "rows": []}
    cols: list[str] = table["columns"]
    spec = _tune_spec(meta, mv.get("run_id"), mv.get("stage")) or {}
    params = spec.get("params") or {}
    metric = params.get("metric") if isinstance(params.get("metric"), str) else None
    if metric is None or f"{metric}_best" not in cols:
        metric = next((c[: -len("_best")] for c in cols if c.endswith("_best")), None)
    mode = params.get("mode") if params.get("mode") in ("min", "max") else "max"
    floats = {c for c, t in zip(cols, table["types"], strict=False) if t in ("double", "float", "halffloat")}
    rows = [
        {c: (None if c in floats and isinstance(v, str) else v) for c, v in zip(cols, r, strict=False)}
        for r in table["rows"]
    ]  # a NaN (an errored trial's metric) comes as text from the preview: missing here
    best_col = f"{metric}_best" if metric else None
    best = None
    if best_col:
        ok = [r for r in rows if _number(r.get(best_col)) is not None and not r.get("error")]
        if ok:
            pick = min if mode == "min" else max
            best = pick(ok, key=lambda r: float(r[best_col]))  # type: ignore[arg-type]
    if sort is not None and sort not in cols:
        raise queries.BadRequest(f"query parameter sort={sort!r}: expected one of {', '.join(cols)}")
    key = sort or best_col
    if key is not None:
        desc = order == "desc" if sort else mode == "max"
        rows = _sorted(rows, key, desc)
    return {
        "stage": mv.get("stage"),
        "run_id": mv.get("run_id"),
        "uri": ref.uri,
        "metric": metric,
        "mode": mode,
        "best_trial": best.get("trial_id") if best else None,
        "columns": cols,
        "params": [c for c in cols if c.startswith("config/")],
        "num_rows": table["num_rows"],
        "sort": sort,
        "order": "desc" if (sort and order == "desc") or (not sort and mode == "max") else "asc",
        "rows": rows,
    }


def _sorted(rows: list[dict[str, Any]], key: str, desc: bool) -> list[dict[str, Any]]:
    """Rows by ``key``: numbers before text, ``desc`` reverses both; missing values last."""
    have = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]

    def value(r: dict[str, Any]) -> tuple[int, float, str]:
        n = _number(r[key])
        return (0, n, "") if n is not None else (1, 0.0, str(r[key]))

    return sorted(have, key=value, reverse=desc) + missing


def trials_figure(doc: Mapping[str, Any]) -> Markup | None:
    """The trials as parallel coordinates: an axis per hyperparameter (``config/...``, at most
    :data:`MAX_AXES`) and the metric's best value last; the best trial highlighted."""
    rows, params = doc.get("rows") or [], list(doc.get("params") or [])[:MAX_AXES]
    if not rows or not params:
        return None
    metric = doc.get("metric")
    cols = params + ([f"{metric}_best"] if metric else [])
    axes: list[Axis] = [axis_of(c.removeprefix("config/"), [r.get(c) for r in rows]) for c in cols]
    lines = [(str(r.get("trial_id", i)), [r.get(c) for c in cols]) for i, r in enumerate(rows)]
    best = doc.get("best_trial")
    return parallel_coordinates(axes, lines, best=str(best) if best is not None else None, label="the sweep's trials")


__all__ = ["compare_doc", "trials_doc", "trials_figure"]
