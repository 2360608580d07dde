"""Graphs drawn as inline SVG on the server: a layered DAG (a run's stages, a model's lineage)
and small line charts (training curves).  No JavaScript, no library: every string that comes
from the store is escaped here, and the result is markup the templates insert as it is.

Colours are CSS classes (``ui.css``): a node's ``css`` (``st-succeeded``...), a series' ``s0``..``s5``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

#: Series classes of a chart, in order (``ui.css`` gives each a colour).
SERIES = 6


@dataclass(frozen=True)
class Node:
    """A box of a DAG: ``label`` on the first line, ``sub`` on the second, ``css`` its class,
    ``href`` where a click goes, ``title`` the tooltip (default: the label and sub in full)."""

    id: str
    label: str
    sub: str = ""
    css: str = ""
    href: str | None = None
    title: str = ""


def _adjacency(
    ids: Sequence[str], edges: Sequence[tuple[str, str]]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each node's upstream and downstream nodes (edges to unknown nodes and loops dropped)."""
    ups: dict[str, list[str]] = {i: [] for i in ids}
    downs: dict[str, list[str]] = {i: [] for i in ids}
    for a, b in edges:
        if a in ups and b in ups and a != b:
            ups[b].append(a)
            downs[a].append(b)
    return ups, downs


def layers(ids: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Each node's layer: the longest path to it from a node without upstream.  Nodes on a
    cycle (a store written by hand) go one layer after everything else."""
    ups, downs = _adjacency(ids, edges)
    pending = {i: len(set(ups[i])) for i in ids}
    layer: dict[str, int] = {}
    ready = [i for i in ids if pending[i] == 0]
    while ready:
        n = ready.pop(0)
        layer[n] = max((layer[u] + 1 for u in set(ups[n]) if u in layer), default=0)
        for d in dict.fromkeys(downs[n]):
            pending[d] -= 1
            if pending[d] == 0:
                ready.append(d)
    last = max(layer.values(), default=-1) + 1
    for i in ids:
        layer.setdefault(i, last)
    return layer


def order_layers(ids: Sequence[str], edges: Sequence[tuple[str, str]], layer: Mapping[str, int]) -> list[list[str]]:
    """Nodes per layer, ordered to cross few edges: declared order first, then a few sweeps
    of the barycenter heuristic (each node at the mean position of its neighbours in the
    layer before, then after)."""
    rows: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for i in ids:
        rows[layer[i]].append(i)
    ups, downs = _adjacency(ids, edges)

    def sweep(order: range, neighbours: dict[str, list[str]], ref_step: int) -> None:
        for k in order:
            ref = rows[k + ref_step] if 0 <= k + ref_step < len(rows) else []
            pos = {n: p for p, n in enumerate(ref)}
            here = {n: p for p, n in enumerate(rows[k])}

            def key(n: str, pos: dict[str, int] = pos, here: dict[str, int] = here) -> tuple[float, int]:
                ps = [pos[m] for m in neighbours[n] if m in pos]
                return (sum(ps) / len(ps) if ps else float(here[n]), here[n])

            rows[k].sort(key=key)

    for _ in range(4):
        sweep(range(1, len(rows)), ups, -1)
        sweep(range(len(rows) - 2, -1, -1), downs, +1)
    return rows


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


#: Height of the slot a long edge takes in a layer it passes through.
LANE_H = 12
#: Widest drawing scaled to the page's width; a wider one keeps its size and scrolls.
FIT_WIDTH = 1900


def dag_svg(
    nodes: Sequence[Node],
    edges: Sequence[tuple[str, str]],
    *,
    node_w: int = 184,
    node_h: int = 46,
    gap_x: int = 54,
    gap_y: int = 16,
    label: str = "graph",
) -> Markup:
    """The DAG left to right (upstream on the left), one column per layer; an ``<a>`` around
    each node that has an ``href``.  An edge longer than one layer passes through a lane in
    every layer between (ordered with the nodes), so it never runs under a box.  ``label``:
    the SVG's accessible name."""
    by_id = {n.id: n for n in nodes}
    ids = list(by_id)
    edges = list(dict.fromkeys((a, b) for a, b in edges if a in by_id and b in by_id and a != b))
    layer = layers(ids, edges)
    # long edges through lanes (virtual nodes), so ordering keeps them clear of the boxes
    all_ids, short, chains = list(ids), [], []
    for a, b in edges:
        if layer[b] - layer[a] <= 1:
            short.append((a, b))
            continue
        chain = [a]
        for k in range(layer[a] + 1, layer[b]):
            lane = f"\x00{a}\x00{b}\x00{k}"
            layer[lane] = k
            all_ids.append(lane)
            chain.append(lane)
        chain.append(b)
        chains.append(chain)
        short.extend(zip(chain, chain[1:], strict=False))
    rows = order_layers(all_ids, short, layer)
    height_of = {i: (node_h if i in by_id else LANE_H) for i in all_ids}
    col_h = [sum(height_of[i] for i in row) + gap_y * max(len(row) - 1, 0) for row in rows]
    width = max(len(rows) * (node_w + gap_x) - gap_x, node_w) + 16
    height = max(max(col_h, default=0), node_h) + 16
    where: dict[str, tuple[float, float]] = {}
    for k, row in enumerate(rows):
        y = 8 + (height - 16 - col_h[k]) / 2
        for n in row:
            where[n] = (8 + k * (node_w + gap_x), y)
            y += height_of[n] + gap_y
    fit = ' class="dag fit"' if width <= FIT_WIDTH else ' class="dag"'
    out = [
        f'<svg{fit} xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
        f'viewBox="0 0 {width} {height:.0f}" role="img" aria-label="{escape(label)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>',
    ]

    def mid_y(n: str) -> float:
        return where[n][1] + height_of[n] / 2

    for chain in [[a, b] for a, b in edges if layer[b] - layer[a] <= 1] + chains:
        x, y = where[chain[0]][0] + node_w, mid_y(chain[0])
        d = [f"M{x:.1f},{y:.1f}"]
        for step in chain[1:]:
            x2, y2 = where[step][0], mid_y(step)
            last = step == chain[-1]
            x2 -= 2 if last else 0
            mid = (x + x2) / 2
            d.append(f"C{mid:.1f},{y:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}")
            if not last:  # across the lane
                d.append(f"L{x2 + node_w:.1f},{y2:.1f}")
                x2 += node_w
            x, y = x2, y2
        out.append(f'<path class="edge" d="{" ".join(d)}" marker-end="url(#arrow)"/>')
    chars = max((node_w - 16) // 7, 4)
    for box in nodes:
        x, y = where[box.id]
        title = box.title or (f"{box.label}\n{box.sub}" if box.sub else box.label)
        body = [
            f'<g class="node {escape(box.css)}" transform="translate({x:.1f},{y:.1f})">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{node_w}" height="{node_h}" rx="6" ry="6"/>',
            f'<text x="10" y="19" class="node-label">{escape(_clip(box.label, chars))}</text>',
        ]
        if box.sub:
            body.append(
                f'<text x="10" y="36" class="node-sub">{escape(_clip(box.sub, int((node_w - 16) / 5.6)))}</text>'
            )
        body.append("</g>")
        if box.href:
            out.append(f'<a href="{escape(box.href)}" class="node-link">{"".join(body)}</a>')
        else:
            out.extend(body)
    out.append("</svg>")
    return Markup("".join(out))


#: At most this many round steps between a chart's y ends (the tightest round range wins).
MAX_STEPS = 10


def _ticks(lo: float, hi: float) -> tuple[float, float]:
    """The y range of a chart holding ``lo``..``hi``: round ends whose middle is round too
    (a multiple of a 1, 2, 2.5 or 5 step times a power of ten), so the three labels read
    ``0``, ``0.5``, ``1`` rather than ``-0.04918``, ``0.5004``, ``1.05``."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return 0.0, 1.0
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / MAX_STEPS
    power = 10.0 ** math.floor(math.log10(raw))
    best: tuple[float, float] | None = None
    for step in (m * power * p for p in (1.0, 10.0, 100.0) for m in (1.0, 2.0, 2.5, 5.0)):
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        last += (last - first) % 2  # an even number of steps: the middle label is round too
        if last - first <= MAX_STEPS and (best is None or (last - first) * step < best[1] - best[0]):
            best = (first * step, last * step)
    return best or (lo, hi)


def _num(v: float) -> str:
    return f"{v:.4g}"


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    x_label: str = "epoch",
    width: int = 360,
    height: int = 190,
    flagged: Sequence[bool] | None = None,
) -> Markup:
    """One small chart: a polyline per series over ``xs`` (None or NaN values leave a gap),
    the y range and the first and last x written on the axes, a legend above; a ring around
    the first series' points whose ``flagged`` is true (a window that drifted)."""
    left, right, top, bottom = 54, 10, 30, 28
    pw, ph = width - left - right, height - top - bottom
    finite = [float(v) for vs in series.values() for v in vs if v is not None and math.isfinite(float(v))]
    y0, y1 = _ticks(min(finite, default=0.0), max(finite, default=1.0))
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 0.5, x1 + 0.5

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        yy = py(yv)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{yy + 4:.1f}" class="tick" text-anchor="end">{_num(yv)}</text>')
    out.append(f'<text x="{left}" y="{height - 8}" class="tick">{_num(x0 if xs else 0)}</text>')
    out.append(f'<text x="{left + pw}" y="{height - 8}" class="tick" text-anchor="end">{_num(x1 if xs else 0)}</text>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" class="tick" text-anchor="middle">{escape(x_label)}</text>'
    )
    legend_x = left + 16 + len(title) * 8
    for k, (name, values) in enumerate(series.items()):
        css = f"s{k % SERIES}"
        runs: list[list[str]] = [[]]
        for x, v in zip(xs, values, strict=False):
            if v is None or not math.isfinite(float(v)):
                runs.append([])
                continue
            runs[-1].append(f"{px(float(x)):.1f},{py(float(v)):.1f}")
        for pts in runs:
            if len(pts) > 1:
                out.append(f'<polyline class="line {css}" points="{" ".join(pts)}"/>')
            if len(pts) == 1 or (pts and len(xs) <= 30):
                out.extend(
                    f'<circle class="dot {css}" cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.5"/>' for p in pts
                )
        if k == 0 and flagged:
            out.extend(
                f'<circle class="flag" cx="{px(float(x)):.1f}" cy="{py(float(v)):.1f}" r="5"/>'
                for x, v, f in zip(xs, values, flagged, strict=False)
                if f and v is not None and math.isfinite(float(v))
            )
        out.append(f'<rect x="{legend_x}" y="6" width="10" height="10" class="key {css}"/>')
        out.append(f'<text x="{legend_x + 14}" y="15" class="tick">{escape(_clip(name, 24))}</text>')
        legend_x += 24 + min(len(name), 24) * 7
    out.append("</svg>")
    return Markup("".join(out))


#: Keys of a training history that are its x axis, in order of preference.
X_KEYS = ("epoch", "step", "training_iteration", "iteration")
#: Prefixes that name the same metric on another split (one chart each metric).
SPLIT_PREFIXES = ("val_", "valid_", "validation_", "train_", "test_", "eval_")


def history_charts(
    history: Sequence[Mapping[str, object]],
) -> list[tuple[str, list[float], dict[str, list[float | None]]]]:
    """A training history (one dict per report) as charts: ``(title, xs, {series: values})``,
    one chart per metric with its splits together (``loss`` and ``val_loss``)."""
    rows = [r for r in history if isinstance(r, Mapping)]
    if not rows:
        return []
    x_key = next((k for k in X_KEYS if all(isinstance(r.get(k), (int, float)) for r in rows)), None)
    xs = [float(r[x_key]) for r in rows] if x_key else [float(i + 1) for i in range(len(rows))]  # type: ignore[arg-type]
    keys = [
        k
        for k in dict.fromkeys(k for r in rows for k in r)
        if k != x_key and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)
    ]
    charts: dict[str, dict[str, list[float | None]]] = {}
    for k in keys:
        base = next((k[len(p) :] for p in SPLIT_PREFIXES if k.startswith(p) and len(k) > len(p)), k)
        values: list[float | None] = []
        for r in rows:
            v = r.get(k)
            values.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
        charts.setdefault(base, {})[k] = values
    return [(title, xs, series) for title, series in charts.items()]


def x_label_of(history: Sequence[Mapping[str, object]]) -> str:
    rows = [r for r in history if isinstance(r, Mapping)]
    return next((k for k in X_KEYS if rows and all(isinstance(r.get(k), (int, float)) for r in rows)), "report")


@dataclass(frozen=True)
class Axis:
    """An axis of a parallel-coordinates view: numbers (a log scale when ``log``) or ordered
    categories (``ticks``, one tick each, bottom to top)."""

    name: str
    ticks: tuple[str, ...] = ()
    lo: float = 0.0
    hi: float = 1.0
    log: bool = False

    @property
    def categorical(self) -> bool:
        return bool(self.ticks)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def axis_of(name: str, values: Sequence[object]) -> Axis:
    """The axis a column's values want: numbers (log when all positive and spanning 100x or
    more, as learning rates do), else categories ordered as numbers when they all are, else
    as text; missing values (None, NaN) take no place on it."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(_is_num(v) for v in present):
        nums = [float(v) for v in present]  # type: ignore[arg-type]
        lo, hi = min(nums), max(nums)
        return Axis(name, lo=lo, hi=hi, log=lo > 0 and hi / lo >= 100)
    keys = list(dict.fromkeys(present))
    keys.sort(key=lambda v: (0, float(v), "") if _is_num(v) else (1, 0.0, str(v)))  # type: ignore[arg-type]
    return Axis(name, ticks=tuple(str(k) for k in keys) or ("-",))


def _axis_pos(axis: Axis, v: object) -> float | None:
    """Where ``v`` sits on ``axis``: 0 (bottom) to 1 (top); None when missing or unknown."""
    if axis.categorical:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        key = str(v)
        if key not in axis.ticks:
            return None
        return 0.5 if len(axis.ticks) == 1 else axis.ticks.index(key) / (len(axis.ticks) - 1)
    if not _is_num(v):
        return None
    x, lo, hi = float(v), axis.lo, axis.hi  # type: ignore[arg-type]
    if axis.log:
        x, lo, hi = math.log10(x), math.log10(lo), math.log10(hi)
    return 0.5 if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def parallel_coordinates(
    axes: Sequence[Axis],
    lines: Sequence[tuple[str, Sequence[object]]],
    *,
    best: str | None = None,
    label: str = "trials",
    height: int = 300,
    axis_gap: int = 150,
) -> Markup:
    """One polyline per line (``(id, values)``, a value per axis) across one vertical axis per
    column; a missing value breaks the line.  Numeric axes are labelled with their range (and
    ``log``), categorical ones with every category (at most 12 written).  The line ``best``
    is drawn last, thicker (``best``).  Each line's ``<title>`` names it and its values."""
    left, right, top, bottom = 84, 84, 34, 26
    width = left + right + axis_gap * max(len(axes) - 1, 1)
    ph = height - top - bottom

    def ax_x(k: int) -> float:
        return left + (k * axis_gap if len(axes) > 1 else axis_gap / 2)

    def py(pos: float) -> float:
        return top + (1 - pos) * ph

    out = [
        f'<svg class="chart parcoords" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
    ]
    ordered = [ln for ln in lines if ln[0] != best] + [ln for ln in lines if ln[0] == best]
    for trial, values in ordered:
        runs: list[list[str]] = [[]]
        for k, (axis, v) in enumerate(zip(axes, values, strict=False)):
            pos = _axis_pos(axis, v)
            if pos is None:
                runs.append([])
                continue
            runs[-1].append(f"{ax_x(k):.1f},{py(pos):.1f}")
        css = "trial best" if trial == best else "trial"
        text = ", ".join(f"{a.name}={v}" for a, v in zip(axes, values, strict=False))
        title = f"<title>{escape(_clip(f'{trial}: {text}', 400))}</title>"
        out.append(f'<g class="{css}">{title}')
        for pts in runs:
            if len(pts) > 1:
                out.append(f'<polyline points="{" ".join(pts)}"/>')
            elif pts:
                cx, cy = pts[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5"/>')
        out.append("</g>")
    for k, axis in enumerate(axes):
        x = ax_x(k)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="axis"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top - 14}" class="chart-title" text-anchor="middle">{escape(_clip(axis.name, 22))}</text>'
        )
        if axis.categorical:
            step = max(1, math.ceil(len(axis.ticks) / 12))
            for i, tick in enumerate(axis.ticks):
                if i % step and i != len(axis.ticks) - 1:
                    continue
                y = py(_axis_pos(axis, tick) or 0.0)
                out.append(f'<line x1="{x - 3:.1f}" x2="{x + 3:.1f}" y1="{y:.1f}" y2="{y:.1f}" class="axis"/>')
                out.append(f'<text x="{x + 5:.1f}" y="{y + 4:.1f}" class="tick">{escape(_clip(tick, 14))}</text>')
        else:
            scale = " (log)" if axis.log else ""
            out.append(f'<text x="{x + 5:.1f}" y="{top + 4}" class="tick">{_num(axis.hi)}</text>')
            out.append(f'<text x="{x + 5:.1f}" y="{top + ph + 4}" class="tick">{_num(axis.lo)}</text>')
            out.append(f'<text x="{x:.1f}" y="{height - 6}" class="tick" text-anchor="middle">{scale.strip()}</text>')
    out.append("</svg>")
    return Markup("".join(out))
