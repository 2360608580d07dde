"""Shared helpers for raypipe benchmarks: arguments, timing, results.json, tables, plots.

Every benchmark takes ``--out DIR``, prints a short table and writes
``DIR/results.json`` shaped as::

    {
      "benchmark": "<name>",
      "env": {...machine and versions...},
      "params": {...what was run...},
      "results": {...raypipe's figures...},
      "baseline": {...the baseline's figures...},
      "ratios": {...results / baseline...},
      "goals": {"<goal>": {"value": x, "limit": y, "unit": "...", "met": bool}},
      "samples": {...raw per-repeat measurements...}
    }

Benchmarks report; they never assert on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def ensure_repo_on_path() -> None:
    """Make ``benchmarks.*`` importable when a benchmark is run as a script, not with ``-m``."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def start_local_ray(num_cpus: int) -> float:
    """A new local Ray of the benchmark's own (``address="local"``: never one left running
    on this machine), its workers' logs kept in Ray's files; seconds it took to start."""
    import logging

    import ray

    started = time.perf_counter()
    ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
    )
    return time.perf_counter() - started


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, type=Path, help="directory for results.json and plots")
    return p


# ----------------------------------------------------------------------------- timing


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["s"]`` is the wall time in seconds."""
    box: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - start


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, return value) of one call."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when undefined (JSON has no inf/nan)."""
    if b == 0 or a != a or b != b:
        return None
    return a / b


def goal(value: float, limit: float, unit: str, *, lower_is_better: bool = True) -> dict[str, Any]:
    met = value <= limit if lower_is_better else value >= limit
    return {"value": value, "limit": limit, "unit": unit, "met": bool(met)}


# ----------------------------------------------------------------------------- environment


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "raypipe": _version("raypipe"),
        "ray": _version("ray"),
        "git_commit": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ----------------------------------------------------------------------------- output


def write_results(out: Path, name: str, **sections: Any) -> Path:
    """Write ``out/results.json`` (``benchmark``, ``env``, then ``sections`` in order); return its path."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "env": environment(), **sections}
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, allow_nan=False, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and v != v:
        return None
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    """A short rich table on stdout; floats are shown with 3 significant digits."""
    from rich.console import Console
    from rich.table import Table

    # Piped output (CI logs) gets a fixed width instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def bar_chart(
    path: Path,
    panels: Sequence[dict[str, Any]],
    *,
    title: str | None = None,
) -> Path:
    """Grouped bar charts side by side, saved as a PNG (matplotlib, Agg backend).

    Each panel: ``{"title": str, "ylabel": str, "groups": [str, ...],
    "series": {label: [value per group, ...]}, "hline": (y, label) | None}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        groups = list(panel["groups"])
        series = panel["series"]
        n = max(len(series), 1)
        width = 0.8 / n
        for i, (label, values) in enumerate(series.items()):
            xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
            bars = ax.bar(xs, values, width, label=label)
            ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
        if panel.get("hline"):
            y, label = panel["hline"]
            ax.axhline(y, color="gray", linestyle="--", linewidth=1, label=label)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(panel.get("title", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.margins(y=0.15)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
