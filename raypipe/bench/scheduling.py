"""``raypipe bench scheduling``: replay a job trace through each scheduling policy.

The same trace and cluster go through every policy named, simulated
(:mod:`raypipe.scheduler.simulator`), live on Ray (:func:`raypipe.bench.live.replay_live`),
or both.  Each replay becomes the metrics of :mod:`raypipe.scheduler.metrics`;
``out`` receives ``results.json``, ``summary.md`` and PNG plots.

Layout of ``results.json``::

    {"trace": {...}, "cluster": {...},
     "options": {..., "placement": {"consolidation", "node_choice", "task_mix", "source"},
                 "spread_slowdown": 1.0 | {...}, "policy_args": {POLICY: {...}}},
     "policies": {NAME: {"mode": "sim"|"ray", "jobs": ..., "avg_jct_s": ..., ...,
                         "live": {...same keys...},            # --mode both
                         "sim_error": {"avg_jct": r, "makespan": r}}},  # --mode both
     "best_policy": NAME, "best_vs_fifo_avg_jct": r}
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from raypipe._json import json_safe
from raypipe.bench.live import LiveCluster, replay_live, replay_plain_ray
from raypipe.bench.options import parse_policy_args, parse_spread_slowdown, placement_summary, resolve_placement
from raypipe.bench.plots import plot_all
from raypipe.config import StrictModel
from raypipe.exceptions import RaypipeError
from raypipe.scheduler.cluster_spec import ClusterSpec
from raypipe.scheduler.metrics import METRIC_KEYS, ReplayResult, relative_error, summarize
from raypipe.scheduler.placement_settings import PlacementSettings, SpreadSlowdown
from raypipe.scheduler.policies.registry import available_policies, get_policy_class
from raypipe.scheduler.simulator import SimOptions, simulate
from raypipe.scheduler.traces import FORMATS, Trace, load_trace, synthetic_philly

ProgressFn = Callable[[str, int, int], None]
#: Jobs of a synthetic trace when ``jobs`` is not given.
DEFAULT_SYNTHETIC_JOBS = 1000
#: Offered load of a synthetic trace when ``load`` is not given.
DEFAULT_SYNTHETIC_LOAD = 0.85
ALIBABA_NODES_FILE = "openb_node_list_gpu_node.csv"

_FLAG = {
    "trace": "--trace",
    "format": "--format",
    "gpus": "--gpus",
    "gpus_per_node": "--gpus-per-node",
    "cluster": "--cluster",
    "cluster_fraction": "--cluster-fraction",
    "policies": "--policies",
    "mode": "--mode",
    "jobs": "--jobs",
    "window_h": "--window-h",
    "seed": "--seed",
    "sample": "--sample",
    "time_scale": "--time-scale",
    "round_s": "--round-s",
    "restart_cost_s": "--restart-cost-s",
    "spread_slowdown": "--spread-slowdown",
    "consolidation": "--consolidation",
    "node_choice": "--node-choice",
    "task_mix": "--task-mix",
    "policy_args": "--policy-arg",
    "skip_bad_rows": "--skip-bad-rows",
    "load": "--load",
    "max_duration_s": "--max-duration-s",
    "durations_known": "--durations-known",
    "out": "--out",
}


class BenchError(RaypipeError):
    """A benchmark was asked for something invalid (bad flags, missing files...)."""


class SchedulingBenchConfig(StrictModel):
    """Everything ``raypipe bench scheduling`` takes (validated; unknown keys are errors)."""

    trace: str | None = Field(default=None, description="trace file (philly), file or directory (alibaba)")
    format: Literal["philly", "alibaba", "synthetic"]
    gpus: int | None = Field(default=None, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=1)
    cluster: str | None = Field(default=None, description="cluster YAML (node_groups)")
    cluster_fraction: float = Field(default=1.0, gt=0, le=1, description="keep this fraction of each node group")
    policies: list[str] = Field(default_factory=lambda: list(available_policies()), min_length=1)
    mode: Literal["sim", "ray", "both"] = "sim"
    jobs: int | None = Field(default=None, ge=1)
    window_h: float | None = Field(default=None, gt=0)
    seed: int = 0
    sample: Literal["first", "random"] = "first"
    time_scale: float = Field(default=3600.0, gt=0, description="trace seconds per wall second (live replay)")
    round_s: float = Field(default=0.0, ge=0)
    restart_cost_s: float = Field(default=0.0, ge=0)
    spread_slowdown: SpreadSlowdown | None = Field(
        default=None, description="a number, or per_extra_node/by_nodes/cross_rack (None: the cluster's, else 1)"
    )
    consolidation: Literal["strict", "prefer", "none"] | None = Field(
        default=None, description="None: the cluster YAML's, else strict"
    )
    node_choice: Literal["first_fit", "best_fit", "least_fragmenting", "fgd"] | None = Field(
        default=None, description="None: the cluster YAML's, else first_fit (whole-GPU traces) or best_fit"
    )
    task_mix: Literal["observed", "trace"] = Field(
        default="observed", description="fgd's task mix: observed from arrivals so far, or the whole trace's"
    )
    policy_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="POLICY -> keyword arguments (or POLICY.NAME=VALUE strings)"
    )
    skip_bad_rows: bool = False
    load: float | None = Field(default=None, gt=0, description="synthetic: target load; real traces: rescale arrivals")
    max_duration_s: float | None = Field(default=None, gt=0)
    durations_known: bool = False
    out: str | None = None
    plots: bool = True

    @field_validator("spread_slowdown", mode="before")
    @classmethod
    def _slowdown_text(cls, v: Any) -> Any:
        return parse_spread_slowdown(v) if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _policy_arg_texts(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("policy_args"), (list, tuple)):
            policies = data.get("policies") or list(available_policies())
            data = {**data, "policy_args": parse_policy_args(data["policy_args"], policies)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SchedulingBenchConfig:
        if (self.gpus is None) != (self.gpus_per_node is None):
            given, other = ("--gpus", "--gpus-per-node") if self.gpus is not None else ("--gpus-per-node", "--gpus")
            raise ValueError(f"{given} needs {other}")
        if self.cluster is not None and self.gpus is not None:
            raise ValueError("give either --cluster FILE or --gpus N --gpus-per-node K, not both")
        if self.format == "synthetic":
            if self.trace is not None:
                raise ValueError("--trace is not used with --format synthetic (the trace is generated)")
            if self.cluster is None and self.gpus is None:
                raise ValueError("--format synthetic needs a cluster: --gpus N --gpus-per-node K or --cluster FILE")
        elif self.trace is None:
            raise ValueError(f"--format {self.format} needs --trace PATH")
        elif self.format == "philly" and self.cluster is None and self.gpus is None:
            raise ValueError("--format philly needs a cluster: --gpus N --gpus-per-node K or --cluster FILE")
        seen: set[str] = set()
        for p in self.policies:
            get_policy_class(p)  # UnknownPolicyError lists the valid names
            if p in seen:
                raise ValueError(f"policy {p!r} is listed twice")
            seen.add(p)
        for p in self.policy_args:
            if p not in seen:
                raise ValueError(f"policy_args for {p!r}, which is not compared (policies {', '.join(self.policies)})")
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> SchedulingBenchConfig:
        """Validate, turning pydantic errors into one :class:`BenchError` naming the flags."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            issues = []
            for err in e.errors():
                loc = [str(p) for p in err.get("loc", ())]
                ctx_err = (err.get("ctx") or {}).get("error")
                if isinstance(ctx_err, RaypipeError):
                    raise ctx_err from None  # e.g. UnknownPolicyError: its own message
                msg = str(ctx_err) if ctx_err is not None and err["type"] == "value_error" else err["msg"]
                if loc:
                    flag = _FLAG.get(loc[0], loc[0])
                    got = err.get("input")
                    issues.append(f"{flag}: {msg}" + (f" (got {got!r})" if not isinstance(got, dict) else ""))
                else:
                    issues.append(msg)
            raise BenchError("; ".join(issues)) from None

    def sim_options(self, durations_known: bool, placement: PlacementSettings | None = None) -> SimOptions:
        return SimOptions(
            round_s=self.round_s,
            restart_cost_s=self.restart_cost_s,
            spread_slowdown=self.spread_slowdown,
            placement=placement,
            durations_known=durations_known,
        )


# ----------------------------------------------------------------------------- inputs


def build_cluster(cfg: SchedulingBenchConfig) -> ClusterSpec:
    """The cluster of a run: ``--cluster``, ``--gpus/--gpus-per-node``, or Alibaba's node list beside the
    trace; then ``--cluster-fraction`` of each node group."""
    return _base_cluster(cfg).scaled(cfg.cluster_fraction)


def _base_cluster(cfg: SchedulingBenchConfig) -> ClusterSpec:
    if cfg.cluster is not None:
        return ClusterSpec.from_yaml(cfg.cluster)
    if cfg.gpus is not None and cfg.gpus_per_node is not None:
        return ClusterSpec.from_flags(cfg.gpus, cfg.gpus_per_node)
    # alibaba without a cluster: the trace's own node list
    if cfg.trace is None:
        raise BenchError("no cluster: pass --cluster FILE or --gpus N --gpus-per-node K")
    base = cfg.trace if os.path.isdir(cfg.trace) else os.path.dirname(cfg.trace) or "."
    nodes = os.path.join(base, ALIBABA_NODES_FILE)
    if not os.path.exists(nodes):
        raise BenchError(
            f"no cluster given and no {ALIBABA_NODES_FILE} beside {cfg.trace}; "
            "pass --cluster FILE or --gpus N --gpus-per-node K"
        )
    return ClusterSpec.from_alibaba_nodes(nodes)


def build_trace(cfg: SchedulingBenchConfig, cluster: ClusterSpec) -> Trace:
    """Load or generate the trace; ``load`` rescales a real trace's arrivals on ``cluster``."""
    if cfg.format == "synthetic":
        return synthetic_philly(
            jobs=cfg.jobs or DEFAULT_SYNTHETIC_JOBS,
            total_gpus=cluster.total_gpus,
            load=cfg.load or DEFAULT_SYNTHETIC_LOAD,
            seed=cfg.seed,
            max_duration_s=cfg.max_duration_s,
            durations_known=cfg.durations_known,
            window_h=cfg.window_h,
        )
    trace = load_trace(
        cfg.trace,
        cfg.format,
        window_h=cfg.window_h,
        max_jobs=cfg.jobs,
        sample=cfg.sample,
        seed=cfg.seed,
        max_duration_s=cfg.max_duration_s,
        skip_bad_rows=cfg.skip_bad_rows,
        durations_known=cfg.durations_known,
    )
    if cfg.load is not None:
        trace = trace.with_load(cfg.load, cluster.total_gpus)
    return trace


# ----------------------------------------------------------------------------- running


def _run_live(
    trace: Trace,
    cluster: ClusterSpec,
    policy: str,
    cfg: SchedulingBenchConfig,
    on_progress: ProgressFn | None,
    placement: PlacementSettings | None = None,
    on: LiveCluster | None = None,
) -> ReplayResult:
    return replay_live(
        trace,
        cluster,
        policy,
        cfg.time_scale,
        policy_args=cfg.policy_args.get(policy),
        options=cfg.sim_options(trace.meta.durations_known, placement),
        on_progress=(lambda done, total: on_progress(policy, done, total)) if on_progress else None,
        on=on,
    )


def _run_sim(
    trace: Trace,
    cluster: ClusterSpec,
    policy: str,
    cfg: SchedulingBenchConfig,
    on_progress: ProgressFn | None,
    placement: PlacementSettings | None = None,
) -> ReplayResult:
    from dataclasses import replace

    t0 = time.perf_counter()
    result = simulate(
        trace,
        cluster,
        policy,
        options=cfg.sim_options(trace.meta.durations_known, placement),
        policy_args=cfg.policy_args.get(policy),
        timer=time.perf_counter,
        on_progress=(lambda done, total: on_progress(policy, done, total)) if on_progress else None,
    )
    return replace(result, wall_s=time.perf_counter() - t0)


def run_scheduling_benchmark(
    config: SchedulingBenchConfig | Mapping[str, Any],
    *,
    on_progress: ProgressFn | None = None,
    on_start: Callable[[Trace, ClusterSpec], None] | None = None,
) -> dict[str, Any]:
    """Replay the trace through each policy; return the results.json document (also written to ``out``).

    ``on_progress(policy, finished jobs, total jobs)`` reports progress;
    ``on_start(trace, cluster)`` is called once both are loaded.
    """
    cfg = config if isinstance(config, SchedulingBenchConfig) else SchedulingBenchConfig.parse(config)
    cluster = build_cluster(cfg)
    trace = build_trace(cfg, cluster)
    if on_start is not None:
        on_start(trace, cluster)
    placement, source = resolve_placement(
        cluster, trace, consolidation=cfg.consolidation, node_choice=cfg.node_choice, task_mix=cfg.task_mix
    )
    slowdown = cfg.spread_slowdown or cluster.spread_slowdown or SpreadSlowdown()
    # the live replays (each policy's and plain Ray's) share one local cluster: started once
    live_on = LiveCluster(cluster, trace) if cfg.mode in ("ray", "both") else None
    try:
        return _replay_all(cfg, trace, cluster, placement, source, slowdown, live_on, on_progress)
    finally:
        if live_on is not None:
            live_on.close()


def _replay_all(
    cfg: SchedulingBenchConfig,
    trace: Trace,
    cluster: ClusterSpec,
    placement: PlacementSettings,
    source: Mapping[str, str],
    slowdown: SpreadSlowdown,
    live_on: LiveCluster | None,
    on_progress: ProgressFn | None,
) -> dict[str, Any]:
    sims: dict[str, ReplayResult] = {}
    lives: dict[str, ReplayResult] = {}
    policies: dict[str, Any] = {}
    for name in cfg.policies:
        if cfg.mode in ("sim", "both"):
            sims[name] = _run_sim(trace, cluster, name, cfg, on_progress, placement)
        if cfg.mode in ("ray", "both"):
            lives[name] = _run_live(trace, cluster, name, cfg, on_progress, placement, live_on)
        if cfg.mode == "sim":
            policies[name] = summarize(sims[name])
        elif cfg.mode == "ray":
            policies[name] = summarize(lives[name])
        else:
            entry = summarize(sims[name])
            live = summarize(lives[name])
            entry["live"] = live
            entry["sim_error"] = {
                "avg_jct": relative_error(entry["avg_jct_s"], live["avg_jct_s"]),
                "makespan": relative_error(entry["makespan_s"], live["makespan_s"]),
            }
            policies[name] = entry
    doc: dict[str, Any] = {
        "trace": {**trace.summary(), "offered_load": trace.offered_load(cluster.total_gpus)},
        "cluster": cluster.to_dict(),
        "options": {
            "mode": cfg.mode,
            "policies": list(cfg.policies),
            "round_s": cfg.round_s,
            "restart_cost_s": cfg.restart_cost_s,
            "spread_slowdown": slowdown.summary(),
            "placement": placement_summary(placement, source),
            "policy_args": cfg.policy_args,
            "durations_known": trace.meta.durations_known,
            "time_scale": cfg.time_scale,
        },
        "policies": policies,
    }
    doc.update(_best(policies))
    if cfg.mode in ("ray", "both"):
        plain = summarize(
            replay_plain_ray(
                trace,
                cluster,
                cfg.time_scale,
                on_progress=(lambda done, total: on_progress("plain_ray", done, total)) if on_progress else None,
                on=live_on,
            )
        )
        doc["baseline"] = {"plain_ray": plain}
        for name in cfg.policies:
            live = policies[name].get("live", policies[name])
            live["vs_plain_ray_avg_jct"] = _ratio(live.get("avg_jct_s"), plain.get("avg_jct_s"))
            live["vs_plain_ray_makespan"] = _ratio(live.get("makespan_s"), plain.get("makespan_s"))
    if cfg.out is not None:
        write_outputs(Path(cfg.out), doc, sims or lives, lives if sims else {}, plots=cfg.plots)
    return doc


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _best(policies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    scored = [(p["avg_jct_s"], name) for name, p in policies.items() if p.get("avg_jct_s") is not None]
    if not scored:
        return {"best_policy": None, "best_vs_fifo_avg_jct": None}
    best_jct, best = min(scored)
    fifo = policies.get("fifo", {}).get("avg_jct_s")
    return {
        "best_policy": best,
        "best_vs_fifo_avg_jct": best_jct / fifo if fifo else None,
        "best_vs_lower_bound_avg_jct": policies[best].get("avg_jct_ratio_to_bound"),
    }


# ----------------------------------------------------------------------------- outputs

#: (results.json key, summary.md header, unit conversion) of the summary table.
SUMMARY_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("finished", "jobs", 1.0),
    ("avg_jct_s", "avg JCT (h)", 1 / 3600),
    ("p50_jct_s", "p50 JCT (h)", 1 / 3600),
    ("p95_jct_s", "p95 JCT (h)", 1 / 3600),
    ("p99_jct_s", "p99 JCT (h)", 1 / 3600),
    ("avg_queue_s", "avg queue (h)", 1 / 3600),
    ("makespan_s", "makespan (h)", 1 / 3600),
    ("utilization", "GPU util", 1.0),
    ("fragmentation_gpu_s", "frag (GPU-h)", 1 / 3600),
    ("unallocated_share_waiting", "idle GPU share while waiting", 1.0),
    ("jobs_waited_share", "jobs waited", 1.0),
    ("preemptions_per_job", "preempt/job", 1.0),
    ("ftf_worst", "FTF worst", 1.0),
    ("avg_jct_ratio_to_bound", "JCT / LB", 1.0),
    ("makespan_ratio_to_bound", "makespan / LB", 1.0),
    ("decision_latency_p99_ms", "decide p99 (ms)", 1.0),
    ("wall_s", "wall (s)", 1.0),
)


def fmt_value(v: Any, scale: float = 1.0) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) and scale == 1.0:
        return str(v)
    if isinstance(v, (int, float)):
        x = float(v) * scale
        if not math.isfinite(x):
            return "-"
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(v)


def summary_rows(doc: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any], float | None]]:
    """(policy, mode, metrics, avg JCT vs fifo) for each replay in ``doc`` (live ones after sims)."""
    rows: list[tuple[str, str, Mapping[str, Any], float | None]] = []
    pol = doc["policies"]
    fifo = pol.get("fifo", {})
    for name, m in pol.items():
        rows.append((name, m["mode"], m, _vs(m, fifo)))
        if "live" in m:
            rows.append((name, m["live"]["mode"], m["live"], _vs(m["live"], fifo.get("live", {}))))
    return rows


def _vs(m: Mapping[str, Any], fifo: Mapping[str, Any]) -> float | None:
    a, b = m.get("avg_jct_s"), fifo.get("avg_jct_s")
    return a / b if a is not None and b else None


def summary_markdown(doc: Mapping[str, Any]) -> str:
    """One markdown table: a row per policy (and per mode with ``--mode both``)."""
    tr, cl = doc["trace"], doc["cluster"]
    pl = doc.get("options", {}).get("placement")
    load = tr.get("offered_load")
    head = (
        f"Trace `{tr['source']}` ({tr['format']}): {tr['jobs']:,} jobs"
        + (f", offered load {load:.2f}" if load is not None else "")
        + f"; cluster: {cl['nodes']} nodes, {cl['total_gpus']:g} GPUs"
        + (f" ({', '.join(cl['gpu_types'])})" if cl.get("gpu_types") else "")
        + (f"; placement: {pl['consolidation']} + {pl['node_choice']}" if pl else "")
        + f". Lower bounds: avg JCT >= max(mean duration, SRPT on one {cl['total_gpus']:g}x machine)."
    )
    cols = ["policy", "mode", *[h for _, h, _ in SUMMARY_COLUMNS], "avg JCT / fifo"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, mode, m, vs in summary_rows(doc):
        cells = [
            name,
            mode,
            *[fmt_value(m.get(k), s) for k, s in ((k, s) for k, _, s in SUMMARY_COLUMNS)],
            fmt_value(vs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, m in doc["policies"].items():
        if "sim_error" in m:
            e = m["sim_error"]
            lines.append(
                f"\n{name}: simulator error vs live: avg JCT {fmt_value(e['avg_jct'])}, makespan {fmt_value(e['makespan'])}"
            )
    return "\n".join(lines) + "\n"


def write_outputs(
    out: Path,
    doc: Mapping[str, Any],
    primary: Mapping[str, ReplayResult],
    live: Mapping[str, ReplayResult],
    *,
    plots: bool = True,
) -> list[Path]:
    """``results.json``, ``summary.md`` and the PNG plots; returns the written paths."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create output directory {out}: {e}") from None
    written = []
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    written.append(path)
    md = out / "summary.md"
    md.write_text(summary_markdown(doc))
    written.append(md)
    if plots:
        source = os.path.basename(str(doc["trace"]["source"]).rstrip("/")) or str(doc["trace"]["source"])
        written += plot_all(out, primary, live, title=f"{source} on {doc['cluster']['total_gpus']:g} GPUs")
    return written


def metric_keys() -> Sequence[str]:
    """The per-policy keys of results.json."""
    return ("mode", *METRIC_KEYS)


__all__ = [
    "FORMATS",
    "BenchError",
    "SchedulingBenchConfig",
    "build_cluster",
    "build_trace",
    "metric_keys",
    "run_scheduling_benchmark",
    "summary_markdown",
    "write_outputs",
]
