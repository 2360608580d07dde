"""What each page shows, built from the store's records (:mod:`raypipe.ui.queries`): the
figures (a run's DAG, a model's lineage, training curves) and the template filters."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup

from raypipe.ui.graphs import Node, dag_svg, history_charts, line_chart, x_label_of

#: Status -> the CSS class of its colour.
STATUS_CLASS = {
    "succeeded": "ok",
    "cached": "cached",
    "reused": "cached",
    "running": "running",
    "queued": "waiting",
    "waiting": "waiting",
    "pending": "waiting",
    "failed": "bad",
    "timeout": "bad",
    "rejected": "bad",
    "lost": "bad",
    "skipped": "muted",
    "preempted": "warn",
    "interrupted": "warn",
    "stopped": "warn",
}


def status_class(status: str | None) -> str:
    return "st-" + STATUS_CLASS.get(str(status or ""), "muted")


def ts(t: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM:SS``."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


def dur(s: float | None) -> str:
    """Seconds as ``0.84 s``, ``12.3 s``, ``4m 05s``, ``2h 03m``."""
    if s is None or not math.isfinite(s):
        return "-"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return f"{n} B"


def num(v: Any) -> str:
    """A metric for a table: 4 significant digits for floats."""
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def cell(v: Any) -> str:
    """A value of a table preview: floats to 6 significant digits, nulls as ∅."""
    if v is None:
        return "∅"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def pretty(v: Any) -> str:
    return json.dumps(v, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def resources_text(resources: Mapping[str, Any] | None, gang: int | None = 1) -> str:
    """``cpu 1, gpu 0.5`` (x gang size)."""
    parts = []
    for k, v in (resources or {}).items():
        if isinstance(v, Mapping):
            parts += [f"{kk} {vv}" for kk, vv in v.items() if vv]
        elif v not in (None, 0, 0.0, "", {}):
            parts.append(f"{k} {v}")
    text = ", ".join(parts) or "-"
    return f"{gang} x ({text})" if gang and gang > 1 else text


def url(path: str, *parts: str) -> str:
    """``path`` with each of ``parts`` quoted as one path segment."""
    return path + "".join("/" + quote(str(p), safe="") for p in parts)


def stage_url(run_id: str, stage: str) -> str:
    """The page of a stage of a run."""
    return url("/runs", run_id, "stages", stage)


def query(base: Mapping[str, Any], **changes: Any) -> str:
    """A query string: ``base`` with ``changes`` (None or "" drops a key)."""
    merged = {**base, **changes}
    return "?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def run_dag(run_id: str, stages: Sequence[Mapping[str, Any]]) -> Markup:
    """A run's stages as a DAG: each node its status colour, duration and attempts."""
    nodes = []
    for s in stages:
        sub = s["status"] + (f" · {dur(s['duration_s'])}" if s.get("duration_s") is not None else "")
        if s.get("attempts", 0) > 1:
            sub += f" · {s['attempts']} tries"
        nodes.append(
            Node(
                id=s["name"],
                label=s["name"],
                sub=sub,
                css=status_class(s["status"]),
                href=stage_url(run_id, s["name"]),
                title=f"{s['name']} ({s.get('kind') or '?'}): {sub}",
            )
        )
    edges = [(u, s["name"]) for s in stages for u in s.get("upstream", [])]
    return dag_svg(nodes, edges, label=f"stages of run {run_id}")


def lineage_dag(nodes: Sequence[Mapping[str, Any]], edges: Sequence[tuple[str, str]]) -> Markup:
    """A model's lineage: raw files on the left, the model on the right; a node links to the
    stage that made it."""
    boxes = []
    for n in nodes:
        fmt = n["format"]
        if fmt == "source":
            label, sub = os.path.basename(str(n["uri"])) or str(n["uri"]), f"raw file · {size(n.get('size'))}"
        else:
            label = f"{n['stage']}.{n['output']}" if n.get("stage") and n.get("output") else (n.get("stage") or fmt)
            rows = f" · {n['rows']:,} rows" if isinstance(n.get("rows"), int) else ""
            sub = f"{fmt} {str(n['sha256'])[:8]}{rows}"
        href = stage_url(str(n["run_id"]), str(n["stage"])) if n.get("run_id") and n.get("stage") else None
        title = f"{fmt} {n['sha256']}\n{n['uri']}" + (f"\nmade by {n['stage']} in run {n['run_id']}" if href else "")
        boxes.append(Node(id=n["sha256"], label=label, sub=sub, css=f"fmt-{fmt}", href=href, title=title))
    return dag_svg(boxes, edges, node_w=190, label="lineage")


def curves(history: Any) -> list[Markup]:
    """Training curves of a stored ``history`` (a list of dicts, one per report)."""
    if not isinstance(history, list):
        return []
    label = x_label_of(history)
    return [line_chart(title, xs, series, x_label=label) for title, xs, series in history_charts(history)[:12]]


def metric_columns(versions: Sequence[Mapping[str, Any]], limit: int = 12) -> list[str]:
    """The metric names of a page of versions that hold numbers, most common first."""
    counts: dict[str, int] = {}
    for v in versions:
        for k, x in (v.get("metrics") or {}).items():
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                counts[k] = counts.get(k, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))[:limit]


# ------------------------------------------------------------------------------- times


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """``24h``/``7d``/``30m`` ago, an ISO date or date-time (local time), or epoch seconds:
    a ValueError naming the forms otherwise."""
    t = text.strip()
    m = _RELATIVE.match(t)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return time.mktime(time.strptime(t, fmt))
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a time: give 30m, 24h, 7d (ago), 2026-01-31, 2026-01-31T14:00 or epoch seconds")


# ------------------------------------------------------------------------------- bench


def find_bench(root: str, max_files: int = 50) -> list[dict[str, Any]]:
    """Benchmark results under ``root``: each ``results.json`` (at most 3 folders down) with its
    goals, scalar results and the PNG plots beside it (paths relative to ``root``)."""
    base = Path(root)
    found: list[dict[str, Any]] = []
    for folder, dirs, files in os.walk(base):
        rel = Path(folder).relative_to(base)
        if len(rel.parts) >= 3:
            dirs[:] = []
        dirs.sort()
        if "results.json" not in files:
            continue
        try:
            doc = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            found.append({"path": str(rel / "results.json"), "error": str(e)})
            continue
        if not isinstance(doc, dict):
            continue
        found_results = doc.get("results")
        results: dict[str, Any] = found_results if isinstance(found_results, dict) else {}
        found.append(
            {
                "path": str(rel / "results.json"),
                "benchmark": doc.get("benchmark"),
                "time_utc": (doc.get("env") or {}).get("time_utc") if isinstance(doc.get("env"), dict) else None,
                "goals": doc.get("goals") if isinstance(doc.get("goals"), dict) else {},
                "results": {k: v for k, v in results.items() if isinstance(v, (int, float, str, bool)) or v is None},
                "plots": sorted(str(rel / f) for f in files if f.lower().endswith(".png")),
            }
        )
        if len(found) >= max_files:
            break
    return found


def bench_file(root: str, rel: str) -> Path:
    """A PNG under the bench folder, by its relative path (never outside it)."""
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if base not in path.parents or path.suffix.lower() != ".png" or not path.is_file():
        raise FileNotFoundError(rel)
    return path
