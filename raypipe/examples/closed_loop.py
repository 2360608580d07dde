"""The closed-loop demo (``configs/closed_loop.yaml``): a sensor model that drifts, is
retrained through the scheduler, canaried and promoted, with the timeline at the end.

The data: five sensor readings ``f0..f4`` of true values ``z ~ N(0, 1)`` and a label
``1[z0 + z1 - z2 + 0.5 z3 + noise > 0]``.  A calibration fault makes ``f0``, ``f1`` and
``f2`` read ``shift`` standard deviations high: the label still follows the true values,
so the old model is wrong near its boundary (about 84% accuracy at a 0.5 shift instead of
95%) while a model retrained on fresh readings is right again.

Run the whole loop on this machine (about 4 minutes on 2 cores)::

    raypipe loop demo --out bench-out/closed_loop

It starts a local Ray, runs the pipeline (v1 -> production, served as app ``sensors``
with a drift monitor and the loop armed), sends clean traffic (no drift), then shifted
traffic with labels fed back, and waits for drift -> retraining -> gate -> canary ->
promotion; then prints the timeline and writes ``timeline.json`` and ``timeline.png``.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raypipe.loop.status import loop_status

FEATURES = ["f0", "f1", "f2", "f3", "f4"]
#: The readings a calibration fault shifts.
SHIFTED = ("f0", "f1", "f2")
WEIGHTS = np.array([1.0, 1.0, -1.0, 0.5, 0.0])
NOISE = 0.3


def sensor_frame(rows: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """``rows`` labelled readings with ``SHIFTED`` read ``shift`` standard deviations high."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, len(FEATURES)))
    label = (z @ WEIGHTS + NOISE * rng.standard_normal(rows) > 0).astype("int64")
    x = z.copy()
    for i, name in enumerate(FEATURES):
        if name in SHIFTED:
            x[:, i] += shift
    df = pd.DataFrame(x.astype("float32"), columns=FEATURES)
    df["label"] = label
    return df


def generate(rows: int = 4000, shift: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """The pipeline's ``generate`` stage: the readings as a Ray Dataset."""
    import ray

    return {"data": ray.data.from_pandas(sensor_frame(rows, shift, seed))}


# --------------------------------------------------------------------------- traffic


class Traffic:
    """Threads that POST single readings to ``/predict`` and, for a ``label_share`` of
    them, the true label to ``/feedback`` as its ``label`` (ground truth, for the monitor's
    performance drift).  The demo has no business result, so it sends no ``outcome``: that
    field is for A/B tests and guardrails (a conversion, a reward), never correctness.  The
    shift can change while they run.  Labels feed performance drift only when they come with
    one of the app's ``auth.feedback_tokens`` (``feedback_token``)."""

    def __init__(
        self, url: str, threads: int = 4, label_share: float = 0.5, seed: int = 0, feedback_token: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.feedback_token = feedback_token
        self.shift = 0.0
        self.label_share = label_share
        self.sent = 0
        self.errors = 0
        self.by_variant: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(seed + i,), daemon=True, name=f"traffic-{i}")
            for i in range(threads)
        ]

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _post(self, path: str, body: Mapping[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        batch_seed = seed * 1_000_003
        while not self._stop.is_set():
            batch_seed += 1
            frame = sensor_frame(64, self.shift, batch_seed)
            for row in frame.itertuples(index=False):
                if self._stop.is_set():
                    return
                features = {f: float(getattr(row, f)) for f in FEATURES}
                try:
                    out = self._post("/predict", {"features": features})
                    if rng.random() < self.label_share:
                        body = {"request_id": out["request_id"], "label": int(row.label)}
                        self._post("/feedback", body, self.feedback_token)
                except Exception:  # noqa: BLE001 - counted; the traffic goes on (e.g. a router restarting)
                    with self._lock:
                        self.errors += 1
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.sent += 1
                    v = str(out.get("variant"))
                    self.by_variant[v] = self.by_variant.get(v, 0) + 1


# --------------------------------------------------------------------------- the demo


def _fmt_event(e: Mapping[str, Any]) -> str:
    d = e.get("detail") or {}
    ev = e["event"]
    if e["source"] == "rollout":
        if ev == "step":
            return f"canary step: weights {d.get('weights')}"
        return f"canary {ev}: {d.get('reason') or d.get('note') or ''}".rstrip(": ")
    if ev == "drift":
        stats = d.get("statistics") or {}
        feats = ", ".join(
            f"{f} (KS D={stats[f]['statistic']:.2f}, p={stats[f]['p_value']:.1e})"
            if stats.get(f, {}).get("p_value") is not None
            else f
            for f in d.get("drifted_features") or []
        )
        acted = "retraining" if d.get("trigger") and not str(d.get("note", "")).startswith("not acted") else "noted"
        return f"drift on {d.get('variant')} ({acted}): {feats or d.get('kind')}"
    if ev == "retrain_started":
        return f"retraining run {d.get('run_id')} submitted to the scheduler"
    if ev == "retrain_finished":
        acc = (d.get("metrics") or {}).get("accuracy")
        return f"retrained: v{d.get('version')}" + (f" (test accuracy {acc:.3f})" if acc is not None else "")
    if ev == "canary_started":
        return f"canary of {d.get('variant')} started (rollout {d.get('rollout_id')})"
    if ev == "promoted":
        return (
            f"v{d.get('version')} promoted; monitor reference {d.get('monitor_reference')}; retired {d.get('retired')}"
        )
    if ev in ("rolled_back", "gate_failed", "retrain_failed", "no_new_model", "failed"):
        return f"{ev}: {d.get('reason')}"
    return ev + (f": {json.dumps(d)[:120]}" if d else "")


def print_timeline(timeline: list[dict[str, Any]], t0: float, console: Any) -> None:
    from rich.table import Table

    table = Table(title="closed loop timeline", show_lines=False)
    table.add_column("t (s)", justify="right")
    table.add_column("source")
    table.add_column("event")
    table.add_column("what happened", overflow="fold")
    for e in timeline:
        table.add_row(f"{e['at'] - t0:7.1f}", e["source"], e["event"], _fmt_event(e))
    console.print(table)


def plot(windows: list[dict[str, Any]], timeline: list[dict[str, Any]], t0: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for variant in sorted({w["variant"] for w in windows}):
        ws = [w for w in windows if w["variant"] == variant and w.get("drift_share") is not None]
        ax.plot([w["closed_at"] - t0 for w in ws], [w["drift_share"] for w in ws], "o-", label=f"{variant} drift share")
    colors = {
        "drift": "tab:red",
        "retrain_finished": "tab:orange",
        "canary_started": "tab:purple",
        "promoted": "tab:green",
        "rolled_back": "black",
    }
    marks = [e for e in timeline if e["source"] == "loop" and e["event"] in colors and e.get("cycle_id") != "loop"]
    for i, e in enumerate(marks):
        ax.axvline(e["at"] - t0, color=colors[e["event"]], linestyle="--", alpha=0.7)
        ax.text(e["at"] - t0, 0.97 - 0.08 * (i % 3), f" {e['event']}", fontsize=8, va="top", color=colors[e["event"]])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("seconds since serving started")
    ax.set_ylabel("share of features drifted")
    ax.set_ylim(-0.05, 1.0)
    ax.legend(loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def wait_windows(monitor: Any, n: int, console: Any, traffic: Traffic, timeout: float = 300.0) -> None:
    import ray

    start = ray.get(monitor.status.remote())
    base = sum(v["windows"] for v in start["variants"].values())
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = ray.get(monitor.status.remote())
        done = sum(v["windows"] for v in st["variants"].values()) - base
        if done >= n:
            return
        time.sleep(1.0)
    console.print(f"[yellow]only {done} windows closed in {timeout:g} s ({traffic.sent} requests sent)")


def wait_cycle(app: str, meta: Any, console: Any, traffic: Traffic, timeout: float) -> str:
    from rich.live import Live

    final = ("promoted", "rolled_back", "gate_failed", "retrain_failed", "no_new_model", "failed")
    deadline = time.time() + timeout
    last = None
    with Live(console=console, refresh_per_second=2) as live:
        while time.time() < deadline:
            st = loop_status(app, meta)
            cycle_events = [e for e in st["timeline"] if e["source"] == "loop" and e.get("cycle_id") != "loop"]
            state = (st.get("live") or {}).get("state", "?")
            if cycle_events:
                last = cycle_events[-1]
            live.update(
                f"loop: {state:<10} requests: {traffic.sent:>6} (errors {traffic.errors})  "
                f"by variant: {traffic.by_variant}  last: {last['event'] if last else '-'}"
            )
            if last is not None and last["event"] in final:
                return str(last["event"])
            time.sleep(1.0)
    return "timeout"
