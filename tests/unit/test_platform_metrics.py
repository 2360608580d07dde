"""The platform's Prometheus metrics without Ray: the registry, the scheduler's exporter over
real controller jobs, the runner's stage and run outcomes, and the Grafana dashboard's
queries against the metrics the code defines (both parsed)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from raypipe._ray.metrics import MetricSpec, Registry
from raypipe.resources import Resources
from raypipe.runner.events import RunResult, StageEvent, tee
from raypipe.runner.run_metrics import RUN_METRICS, RunMetrics
from raypipe.runner.states import StageEventKind
from raypipe.scheduler.exporter import SCHEDULER_METRICS, SchedulerExporter
from raypipe.scheduler.jobs import Grant, Job, JobState
from raypipe.scheduler.types import JobRequest
from tests.conftest import REPO

DASHBOARD = Path(REPO) / "deploy" / "grafana" / "raypipe.json"


def series(reg: Registry, name: str) -> dict[tuple[str, ...], Any]:
    return {tuple(row["tags"].values()): row.get("value", row) for row in reg.snapshot()[name]}


def test_the_registry_keeps_every_series_and_checks_names_and_tags() -> None:
    reg = Registry(
        [
            MetricSpec("x_total", "counter", "c", ("a",)),
            MetricSpec("g", "gauge", "g", ("a",)),
            MetricSpec("h", "histogram", "h", ("a",), (1.0, 10.0)),
        ],
        export=False,
    )
    reg.inc("x_total", a="1")
    reg.inc("x_total", 2, a="1")
    reg.set("g", 5, a="2")
    for v in (0.5, 1.0, 3.0, 99.0):
        reg.observe("h", v, a="3")
    assert series(reg, "x_total") == {("1",): 3.0} and series(reg, "g") == {("2",): 5.0}
    (h,) = reg.snapshot()["h"]
    assert (h["count"], h["sum"], h["buckets"]) == (4, 103.5, {"1.0": 2, "10.0": 1, "+Inf": 1})
    with pytest.raises(ValueError, match="tags"):
        reg.inc("x_total", b="1")
    with pytest.raises(ValueError, match="no gauge 'x_total'"):
        reg.set("x_total", 1, a="1")
    with pytest.raises(ValueError, match="ends in _total"):
        MetricSpec("requests", "counter", "c", ())


def job(jid: str, team: str, submit: float, **kw: Any) -> Job:
    req = JobRequest(job_id=jid, bundles=(Resources.of(cpu=2, gpu=1),), submit_time=submit, team=team)
    return Job(request=req, owner="o", **kw)


def test_the_scheduler_exporter_counts_grants_waits_preemptions_and_keeps_queues_by_team() -> None:
    reg = Registry(SCHEDULER_METRICS, export=False)
    ex = SchedulerExporter(reg)
    jobs = {"a": job("a", "vision", 0.0), "b": job("b", "nlp", 1.0), "c": job("c", "nlp", 1.0)}
    jobs["c"].state = JobState.REJECTED
    ex.observe(jobs, {"vision": {"gpu": 4, "cpu": 16}})
    assert series(reg, "raypipe_scheduler_queue_length") == {("vision",): 1.0, ("nlp",): 1.0}
    assert series(reg, "raypipe_scheduler_rejections_total") == {("nlp",): 1.0}
    assert series(reg, "raypipe_scheduler_quota") == {("vision", "cpu"): 16.0, ("vision", "gpu"): 4.0}
    a = jobs["a"]
    a.state, a.start_time, a.grant = JobState.RUNNING, 30.0, Grant.LEDGER
    ex.observe(jobs)
    ex.observe(jobs)  # nothing changed: nothing counted twice
    assert series(reg, "raypipe_scheduler_grants_total") == {("vision", "ledger"): 1.0}
    (w,) = reg.snapshot()["raypipe_scheduler_wait_seconds"]
    assert w["tags"] == {"team": "vision"} and (w["count"], w["sum"]) == (1, 30.0)
    assert series(reg, "raypipe_scheduler_running_jobs")[("vision",)] == 1.0
    assert series(reg, "raypipe_scheduler_allocated")[("vision", "gpu")] == 1.0
    assert series(reg, "raypipe_scheduler_queue_length")[("vision",)] == 0.0
    a.state, a.preemptions = JobState.PREEMPTING, 1  # preempted, requeued, granted again
    ex.observe(jobs)
    a.state, a.start_time = JobState.QUEUED, None
    ex.observe(jobs)
    a.state, a.start_time = JobState.RUNNING, 50.0
    ex.observe(jobs)
    assert series(reg, "raypipe_scheduler_preemptions_total") == {("vision",): 1.0}
    assert series(reg, "raypipe_scheduler_grants_total") == {("vision", "ledger"): 2.0}
    ex.observe({})  # every job gone: the gauges read 0, not their last value
    assert set(series(reg, "raypipe_scheduler_running_jobs").values()) == {0.0}
    restarted = SchedulerExporter(Registry(SCHEDULER_METRICS, export=False))
    restarted.prime(jobs)  # a restarted controller's restored jobs were counted before
    restarted.observe(jobs)
    assert series(restarted.registry, "raypipe_scheduler_grants_total") == {}


def test_the_runner_records_stage_outcomes_and_the_run_and_sends_nothing_without_ray() -> None:
    class Plan:
        class config:
            name = "p"

        stages = {
            "read": type("PS", (), {"spec": type("S", (), {"kind": "data.read"})})(),
            "train": type("PS", (), {"spec": type("S", (), {"kind": "train"})})(),
        }

    m = RunMetrics(Plan())  # type: ignore[arg-type]
    seen: list[str] = []
    hook = tee(m.on_event, lambda e: seen.append(e.stage))
    hook(StageEvent("read", StageEventKind.STARTED))
    hook(StageEvent("read", StageEventKind.SUCCEEDED, 1, 2.5))
    hook(StageEvent("train", StageEventKind.RETRYING, 1))
    hook(StageEvent("train", StageEventKind.FAILED, 2, 7.0))
    with pytest.raises(KeyboardInterrupt):
        m.run(lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    result = m.run(lambda: RunResult("r", "failed", wall_s=12.0))  # type: ignore[arg-type]
    assert result.run_id == "r" and seen == ["read", "read", "train", "train"]
    reg = Registry(RUN_METRICS, export=False)  # what the metrics actor does with the ops
    for method, name, value, tags in m.ops:  # Ray is not connected: kept, not sent
        getattr(reg, method)(name, value, **tags)
    assert series(reg, "raypipe_stage_runs_total") == {
        ("p", "data.read", "succeeded"): 1.0,
        ("p", "train", "retrying"): 1.0,
        ("p", "train", "failed"): 1.0,
    }
    assert series(reg, "raypipe_runs_total") == {("p", "stopped"): 1.0, ("p", "failed"): 1.0}
    (d,) = [r for r in reg.snapshot()["raypipe_run_duration_seconds"]]
    assert d["tags"] == {"pipeline": "p", "status": "failed"} and d["sum"] == 12.0


# --------------------------------------------------------------------------- the dashboard

_KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}


def defined_metrics() -> dict[str, str]:
    """Every metric raypipe's code declares (name -> kind), found by parsing it: the name and
    kind of each ``MetricSpec(...)`` and each ``ray.util.metrics`` ``Counter/Gauge/Histogram(...)``."""
    found: dict[str, str] = {}
    for path in (Path(REPO) / "raypipe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            name = node.args[0].value
            if fn == "MetricSpec" and isinstance(node.args[1], ast.Constant):
                found[name] = node.args[1].value
            elif fn in _KINDS and isinstance(name, str) and name.startswith("raypipe_"):
                found[name] = _KINDS[fn]
    return found


def exported_names(name: str, kind: str) -> set[str]:
    """The series Ray's Prometheus endpoint serves for a metric (``ray_`` prefix; a counter ends
    in ``_total``; a histogram's buckets, sum and count)."""
    base = f"ray_{name}"
    if kind == "counter":
        return {base if base.endswith("_total") else base + "_total"}
    if kind == "histogram":
        return {base + "_bucket", base + "_sum", base + "_count"}
    return {base}


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []

    def panels(items: list[dict[str, Any]]) -> None:
        for p in items:
            queries.extend(t["expr"] for t in p.get("targets", []))
            panels(p.get("panels", []))

    panels(doc["panels"])
    for var in doc["templating"]["list"]:
        q = var.get("query")
        queries.append(q["query"] if isinstance(q, dict) else str(q or ""))
    return queries


def test_the_dashboard_queries_only_metrics_the_code_exports_and_shows_every_one() -> None:
    defined = defined_metrics()
    assert {s.name for s in (*SCHEDULER_METRICS, *RUN_METRICS)} <= set(defined)
    assert {"raypipe_serve_requests", "raypipe_serve_latency_ms", "raypipe_drift_share"} <= set(defined)
    served = {exp: name for name, kind in defined.items() for exp in exported_names(name, kind)}
    used: set[str] = set()
    for q in dashboard_queries():
        for ref in re.findall(r"\b(ray_raypipe_[a-z0-9_]+)", q):
            assert ref in served, f"the dashboard queries {ref}, which no code exports: {q}"
            used.add(served[ref])
    assert set(defined) - used == set(), "metrics no panel shows"


def test_the_dashboard_is_grafana_json_with_unique_panel_ids_and_a_prometheus_source() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 30
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    sources = {t["datasource"]["uid"] for p in doc["panels"] for t in p.get("targets", [])}
    assert sources == {"${datasource}"}
    assert doc["templating"]["list"][0] == {**doc["templating"]["list"][0], "type": "datasource", "query": "prometheus"}
