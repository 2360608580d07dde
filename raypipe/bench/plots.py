"""PNG plots of scheduling replays (matplotlib, Agg backend): JCT CDF, GPU utilization, queue length."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raypipe.scheduler.metrics import ReplayResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(
    out: Path,
    primary: Mapping[str, ReplayResult],
    live: Mapping[str, ReplayResult] | None = None,
    *,
    title: str = "",
) -> list[Path]:
    """``jct_cdf.png``, ``utilization.png`` and ``queue_length.png`` in ``out``.

    One line per policy; with live replays too, live lines are dashed.
    """
    plt = _pyplot()
    series: list[tuple[str, str, ReplayResult]] = [(name, "-", r) for name, r in primary.items()]
    series += [(f"{name} (live)", "--", r) for name, r in (live or {}).items()]
    colors = {name: f"C{i}" for i, name in enumerate(primary)}
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, style, r in series:
        jcts = sorted(rec.jct_s / 3600 for rec in r.records if rec.jct_s is not None)
        if not jcts:
            continue
        n = len(jcts)
        ax.step(
            jcts,
            [(i + 1) / n for i in range(n)],
            where="post",
            linestyle=style,
            label=label,
            color=colors.get(r.policy),
        )
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("job completion time (hours, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"JCT CDF · {title}" if title else "JCT CDF", fontsize=10)
    fig.tight_layout()
    paths.append(out / "jct_cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    lines = []
    for label, style, r in series:
        ts, used, waiting = r.timeline().downsample(800)
        lines.append((label, style, r, [t / 3600 for t in ts], [u / r.total_gpus for u in used], waiting))
    for fname, idx, ylabel, what in (
        ("utilization.png", 4, "GPU utilization", "GPU utilization over time"),
        ("queue_length.png", 5, "jobs waiting", "queue length over time"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.2))
        for row in lines:
            label, style, r = row[0], row[1], row[2]
            ax.plot(row[3], row[idx], linestyle=style, linewidth=1, label=label, color=colors.get(r.policy))
        ax.set_xlabel("time (hours)")
        ax.set_ylabel(ylabel)
        if idx == 4:
            ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{what} · {title}" if title else what, fontsize=10)
        fig.tight_layout()
        paths.append(out / fname)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
