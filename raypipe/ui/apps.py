"""The served apps' pages (``/apps``, ``/apps/APP``): what the cluster says now (the split, the
A/B report from the app's metrics collector, the drift monitor's windows), read with a time
limit so a slow or gone cluster never hangs a page, and what the metadata store keeps (the
rollout timeline, the closed loop's events, the app's audit entries), readable without one."""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from markupsafe import Markup

from raypipe import api
from raypipe.exceptions import RaypipeError
from raypipe.monitoring.drift_tests.registry import get_drift_test
from raypipe.store.metadata import MetadataStore
from raypipe.store.migrations import _has_table
from raypipe.store.rollouts import LoopStore, RolloutStore
from raypipe.ui.graphs import line_chart

T = TypeVar("T")

#: The note a page shows without ``--address``.
NO_CLUSTER = "No cluster given: connect with --address ADDR to see the live split, the A/B report and drift."


class Cluster:
    """Calls into the cluster with a time limit: a call that does not answer in ``timeout_s`` is
    left to finish in its thread, and the page says the cluster is unreachable."""

    def __init__(self, address: str | None, timeout_s: float = 2.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="raypipe-ui-cluster")
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        """``fn()`` in a worker thread (this thread's context, so a principal established for the
        request goes along); a RaypipeError when it fails or does not answer in time."""
        ctx = contextvars.copy_context()
        future = self._pool.submit(ctx.run, fn)
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            return future.result(timeout=limit)
        except cf.TimeoutError:
            raise RaypipeError(f"cluster unreachable: {self.address} did not answer in {limit:g} s") from None

    def read(self, fn: Callable[[], T]) -> tuple[T | None, str | None]:
        """``fn()``'s value and None, or None and the note saying why there is none."""
        try:
            return self.call(fn), None
        except RaypipeError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - whatever the cluster raises, the page still answers
            return None, f"cluster unreachable: {type(e).__name__}: {e}"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _event_logs(meta: MetadataStore) -> tuple[RolloutStore | None, LoopStore | None]:
    """The store's rollout and loop event logs, None for one never used (opening one creates
    its table: a page does not write)."""
    return (
        RolloutStore(meta) if _has_table(meta._conn, RolloutStore.TABLE) else None,
        LoopStore(meta) if _has_table(meta._conn, LoopStore.TABLE) else None,
    )


def store_apps(meta: MetadataStore) -> list[str]:
    """Apps the metadata store has records of (rollouts, closed loops, splits)."""
    names: set[str] = set()
    for log in _event_logs(meta):
        if log is not None:
            rows = meta._conn.execute(f"SELECT DISTINCT app FROM {log.TABLE}").fetchall()
            names.update(str(r[0]) for r in rows)
    for row in meta.audit_log(None, 1000, action="serve"):
        names.add(str(row["target"]))
    return sorted(names)


def apps_doc(cluster: Cluster, meta: MetadataStore) -> dict[str, Any]:
    known = store_apps(meta)
    if not cluster.address:
        return {"connected": False, "note": NO_CLUSTER, "apps": [], "recorded": known}
    statuses, note = cluster.read(lambda: [s.to_dict() for s in api.serve_status(None, address=cluster.address)])
    return {"connected": statuses is not None, "note": note, "apps": statuses or [], "recorded": known}


def store_doc(app: str, meta: MetadataStore) -> dict[str, Any]:
    """What the store keeps of ``app``: its rollouts and the latest one's events, the closed
    loop's events, its audit entries."""
    rollouts, loops = _event_logs(meta)
    latest = rollouts.latest_rollout_id(app) if rollouts is not None else None
    return {
        "rollouts": rollouts.rollouts(app) if rollouts is not None else [],
        "rollout_id": latest,
        "rollout_events": [e.to_dict() for e in rollouts.events(app, latest)] if rollouts and latest else [],
        "loop_events": [e.to_dict() for e in loops.all_events(app)][-200:] if loops is not None else [],
        "audit": meta.audit_log(app, 50)[::-1],  # the newest first
    }


def app_doc(app: str, cluster: Cluster, meta: MetadataStore, db: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"app": app, **store_doc(app, meta), "status": None, "ab": None, "monitor": None}
    if not cluster.address:
        return {**doc, "connected": False, "note": NO_CLUSTER, "notes": {}}
    notes: dict[str, str | None] = {}
    address = cluster.address
    status, notes["status"] = cluster.read(lambda: api.serve_status(app, address=address)[0].to_dict())
    doc["connected"] = status is not None
    doc["status"] = status
    if status is not None:
        doc["ab"], notes["ab"] = cluster.read(lambda: api.ab_report(app, db=db, address=address))
        doc["monitor"], notes["monitor"] = cluster.read(lambda: api.monitor_status(app, db=db, address=address))
    doc["notes"] = {k: v for k, v in notes.items() if v}
    doc["note"] = notes.get("status")
    return doc


#: The series of a feature's drift: per window its id, statistic, p-value, threshold, verdict and note.
SERIES_KEYS = ("statistic", "p_value", "threshold", "drifted", "note")


def _decides_by_p(method: str | None) -> bool:
    """Whether drift test ``method`` compares its p-value with the threshold (KS, chi-square)
    rather than its statistic (PSI); an unknown test: by its statistic."""
    if not method:
        return False
    try:
        return get_drift_test(method).decision == "p_value"
    except Exception:  # noqa: BLE001 - a test registered on the cluster only: draw its statistic
        return False


def drift_series(monitor: Mapping[str, Any] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """Per variant, per feature: its test (``method``, and ``decides_by``: ``p_value`` or
    ``statistic``, what the threshold is compared with) and per window, oldest first, the
    window id, statistic, p-value, threshold, whether it drifted and the note of a window
    without a statistic (``insufficient data: 20 values (needs 30)``), from the monitor's
    recent windows."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, v in ((monitor or {}).get("variants") or {}).items():
        methods = {f: (r or {}).get("method") for f, r in (v.get("features") or {}).items()}
        feats: dict[str, dict[str, Any]] = {}
        for w in v.get("windows_brief") or []:
            for f, r in (w.get("features") or {}).items():
                s = feats.get(f)
                if s is None:
                    by = "p_value" if _decides_by_p(methods.get(f)) else "statistic"
                    s = feats[f] = {"method": methods.get(f), "decides_by": by, "window": []}
                    s.update({k: [] for k in SERIES_KEYS})
                s["window"].append(w.get("window_id"))
                for k in SERIES_KEYS:
                    s[k].append(r.get(k))
        out[variant] = feats
    return out


def drift_notes(series: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Why windows have no statistic: each distinct note of the latest windows, with how many
    features it holds for (``insufficient data: 20 values (needs 30)`` for 64 features)."""
    counts: dict[str, int] = {}
    for feats in series.values():
        for s in feats.values():
            note = next(
                (n for st, n in zip(reversed(s["statistic"]), reversed(s["note"]), strict=False) if st is None), None
            )
            if note:
                counts[note] = counts.get(note, 0) + 1
    return [f"{n} ({c} feature{'s' if c > 1 else ''})" for n, c in sorted(counts.items(), key=lambda kv: -kv[1])]


def _natural(name: str) -> list[str | int]:
    """``px2`` before ``px10``: the digit runs of a name compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def drift_charts(series: Mapping[str, Mapping[str, Mapping[str, Any]]], per_variant: int = 12) -> list[Markup]:
    """One chart per variant and feature with a statistic (a constant feature, a window too
    small, have none): what the threshold is compared with (the p-value of a p-value test,
    drifted below it; the statistic of a threshold test, drifted above it) and the threshold
    over the windows: per variant the ``per_variant`` features that drifted most often, then
    by name (``px2`` before ``px10``); a chart rings the windows that drifted and says how many;
    the JSON has them all."""

    def rank(kv: tuple[str, Mapping[str, Any]]) -> tuple[int, bool, list[str | int]]:
        f, s = kv
        return (-sum(1 for d in s["drifted"] if d), all(v is None for v in s["statistic"]), _natural(f))

    charts = []
    for variant, feats in sorted(series.items(), key=lambda kv: _natural(kv[0])):
        ranked = sorted((kv for kv in feats.items() if not rank(kv)[1]), key=rank)  # nothing to draw without one
        for f, s in ranked[:per_variant]:
            xs = [float(i) for i in range(1, len(s["window"]) + 1)]
            by_p = s.get("decides_by") == "p_value"
            value = ("p-value", s["p_value"]) if by_p else ("statistic", s["statistic"])
            title = f"{variant} · {f}" + (f" ({s['method']})" if s.get("method") else "")
            drifted = sum(1 for d in s["drifted"] if d)
            x_label = f"window · drifted (ringed) in {drifted} of {len(xs)}" if drifted else "window"
            charts.append(
                line_chart(
                    title,
                    xs,
                    {value[0]: value[1], "threshold": s["threshold"]},
                    x_label=x_label,
                    flagged=[bool(d) for d in s["drifted"]],
                )
            )
    return charts


__all__ = [
    "NO_CLUSTER",
    "Cluster",
    "app_doc",
    "apps_doc",
    "drift_charts",
    "drift_notes",
    "drift_series",
    "store_apps",
    "store_doc",
]
