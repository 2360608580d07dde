"""Job traces for the scheduling simulator (pure: no Ray, no clock).

A :class:`Trace` is a tuple of immutable :class:`TraceJob` records, sorted by
submit time and shifted so the first job arrives at ``t = 0``, plus
:class:`TraceMeta` (source, rows read, rows skipped, window...).

Sources:

* :func:`load_philly` -- Philly-style CSV: ``timestamp`` or ``submit_time``
  (seconds, or an ISO-8601 date), ``duration`` (seconds), ``num_gpus``;
  optional ``job_id``, ``cluster`` (or ``vc``; becomes the team),
  ``priority``, ``gpu_type`` (``a|b``), ``num_cpus``, ``memory_mb``.
* :func:`load_alibaba` -- Alibaba's GPU cluster trace v2023 ("openb"):
  ``name, cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec, qos,
  pod_phase, creation_time, deletion_time, scheduled_time``.
* :func:`synthetic_philly` -- a seeded Philly-like workload: Poisson arrivals
  at a target load on a given number of GPUs, heavy-tailed durations, gangs of
  1/2/4/8 GPUs (the distributions of Gavel's Philly-derived generator).

Bad rows (missing or unparsable fields, negative durations, zero GPUs where
GPUs are required, duplicate ids) are collected with their line numbers.  By
default loading fails with a :class:`TraceError` listing the first few and the
count; with ``skip_bad_rows=True`` they are skipped and counted in
``meta.rows_skipped``.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raypipe.scheduler.errors import TraceError

__all__ = [
    "FORMATS",
    "BadRow",
    "Trace",
    "TraceError",
    "TraceJob",
    "TraceMeta",
    "TraceOptions",
    "load_alibaba",
    "load_philly",
    "load_trace",
    "synthetic_philly",
    "write_philly_csv",
]

FORMATS: tuple[str, ...] = ("philly", "alibaba", "synthetic")
#: How many bad rows a TraceError (and ``meta.bad_rows``) lists.
SHOWN_BAD_ROWS = 5
#: Alibaba ``qos`` -> job priority (higher runs first under the ``priority`` policy).
ALIBABA_QOS_PRIORITY: Mapping[str, int] = MappingProxyType({"LS": 2, "Guaranteed": 2, "Burstable": 1, "BE": 0})
ALIBABA_PODS_FILE = "openb_pod_list_default.csv"


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace.

    ``gpus`` may be fractional (below 1) for a pod sharing one GPU;
    ``gpu_types`` lists the GPU models it may run on (empty: any);
    ``single_node`` jobs (pods) must run on one node, others are gangs of one
    bundle per GPU that may spread over nodes.
    """

    job_id: str
    submit_s: float
    duration_s: float
    gpus: float
    cpus: float = 0.0
    memory_mb: float = 0.0
    team: str = "default"
    priority: int = 0
    gpu_types: tuple[str, ...] = ()
    single_node: bool = False

    @property
    def work_gpu_s(self) -> float:
        """GPU-seconds of work: ``gpus * duration_s``."""
        return self.gpus * self.duration_s


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not be turned into a job."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class TraceMeta:
    """Where a trace came from and what loading did to it.

    ``rows_filtered`` counts rows dropped on purpose (not errors), by reason:
    ``cpu_only``, ``never_scheduled``, ``outside_window``, ``sampled_out``.
    ``time_offset_s`` is the original time of ``t = 0``; ``arrival_scale`` the
    factor submit times were multiplied by (:meth:`Trace.with_load`).
    """

    source: str
    format: str
    rows_read: int = 0
    rows_skipped: int = 0
    rows_filtered: Mapping[str, int] = field(default_factory=dict)
    bad_rows: tuple[BadRow, ...] = ()
    window_h: float | None = None
    max_jobs: int | None = None
    sample: str = "first"
    seed: int = 0
    max_duration_s: float | None = None
    durations_capped: int = 0
    durations_known: bool = False
    time_offset_s: float = 0.0
    arrival_scale: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "rows_read": self.rows_read,
            "rows_skipped": self.rows_skipped,
            "rows_filtered": dict(self.rows_filtered),
            "bad_rows": [str(b) for b in self.bad_rows],
            "window_h": self.window_h,
            "max_jobs": self.max_jobs,
            "sample": self.sample,
            "seed": self.seed,
            "max_duration_s": self.max_duration_s,
            "durations_capped": self.durations_capped,
            "durations_known": self.durations_known,
            "time_offset_s": self.time_offset_s,
            "arrival_scale": self.arrival_scale,
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class Trace:
    """Jobs sorted by ``submit_s`` (first at 0) and their metadata."""

    jobs: tuple[TraceJob, ...]
    meta: TraceMeta

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def span_s(self) -> float:
        """Time from the first to the last arrival."""
        return self.jobs[-1].submit_s - self.jobs[0].submit_s if self.jobs else 0.0

    def total_work_gpu_s(self) -> float:
        return math.fsum(j.work_gpu_s for j in self.jobs)

    def offered_load(self, total_gpus: float) -> float | None:
        """``work / (total_gpus * span)``: the fraction of the cluster the arrivals ask for."""
        span = self.span_s
        if span <= 0 or total_gpus <= 0:
            return None
        return self.total_work_gpu_s() / (total_gpus * span)

    def with_load(self, load: float, total_gpus: float) -> Trace:
        """The same jobs with submit times scaled so the offered load on ``total_gpus`` is ``load``.

        Durations are unchanged; only inter-arrival times shrink or stretch.
        """
        if not load > 0:
            raise TraceError(f"load must be > 0, got {load}")
        offered = self.offered_load(total_gpus)
        if offered is None or offered <= 0:
            raise TraceError("cannot rescale to a load: the trace needs two arrival times and some GPU work")
        factor = offered / load
        jobs = tuple(replace(j, submit_s=j.submit_s * factor) for j in self.jobs)
        params = {**self.meta.params, "target_load": load, "load_gpus": total_gpus}
        return Trace(jobs, replace(self.meta, arrival_scale=self.meta.arrival_scale * factor, params=params))

    def summary(self) -> dict[str, Any]:
        """Metadata plus job counts and totals, for results.json."""
        n = len(self.jobs)
        return {
            **self.meta.to_dict(),
            "jobs": n,
            "span_s": self.span_s,
            "total_work_gpu_s": self.total_work_gpu_s(),
            "mean_duration_s": math.fsum(j.duration_s for j in self.jobs) / n if n else None,
            "mean_gpus": math.fsum(j.gpus for j in self.jobs) / n if n else None,
        }


class TraceOptions(BaseModel):
    """What to keep of a trace (validated; unknown options are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_h: float | None = Field(default=None, gt=0, description="keep arrivals within H hours of the first")
    max_jobs: int | None = Field(default=None, ge=1, description="keep at most N jobs")
    sample: Literal["first", "random"] = Field(default="first", description="which N jobs: first, or random")
    seed: int = Field(default=0, description="seed of random sampling and of the synthetic generator")
    max_duration_s: float | None = Field(default=None, gt=0, description="cap durations at this")
    skip_bad_rows: bool = False
    durations_known: bool = Field(default=False, description="the scheduler is told each job's duration")


def _options(kw: Mapping[str, Any]) -> TraceOptions:
    try:
        return TraceOptions(**kw)
    except ValidationError as e:
        raise TraceError(
            "invalid trace option(s): "
            + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})" for err in e.errors()
            )
        ) from None


# ----------------------------------------------------------------------------- CSV reading


class _RowError(ValueError):
    pass


def _open_csv(path: str) -> Iterator[tuple[int, dict[str, str], list[str]]]:
    """Yield ``(line number, row, header)``; header problems raise TraceError."""
    if os.path.isdir(path):
        raise TraceError(f"{path}: is a directory, expected a CSV file")
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceError(f"{path}: empty file; expected a CSV header")
            header = [h.strip().lstrip("\ufeff") for h in header]
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                values = dict(zip(header, (c.strip() for c in row), strict=False))
                if len(row) != len(header):
                    values["__width__"] = f"{len(row)} fields, header has {len(header)}"
                yield reader.line_num, values, header
        except UnicodeDecodeError as e:
            raise TraceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except csv.Error as e:
            raise TraceError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None


def _field(row: Mapping[str, str], *names: str) -> str:
    for n in names:
        v = row.get(n)
        if v is not None and v != "":
            return v
    raise _RowError(f"missing {names[0]}")


def _number(row: Mapping[str, str], *names: str) -> float:
    raw = _field(row, *names)
    try:
        x = float(raw)
    except ValueError:
        raise _RowError(f"{names[0]}: not a number: {raw!r}") from None
    if not math.isfinite(x):
        raise _RowError(f"{names[0]}: not a finite number: {raw!r}")
    return x


def _time(row: Mapping[str, str], *names: str) -> float:
    raw = _field(row, *names)
    try:
        x = float(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise _RowError(f"{names[0]}: neither seconds nor an ISO date: {raw!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    if not math.isfinite(x):
        raise _RowError(f"{names[0]}: not a finite number: {raw!r}")
    return x


def _optional_number(row: Mapping[str, str], *names: str, default: float = 0.0) -> float:
    if all(row.get(n) in (None, "") for n in names):
        return default
    return _number(row, *names)


def _types(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(sorted({t.strip() for t in raw.split("|") if t.strip()}))


def _require_columns(path: str, header: Sequence[str], groups: Sequence[Sequence[str]], hint: str = "") -> None:
    missing = [" or ".join(g) for g in groups if not any(c in header for c in g)]
    if missing:
        raise TraceError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(header)}"
            + (f" ({hint})" if hint else "")
        )


def _bad_rows_error(path: str, bad: Sequence[BadRow]) -> TraceError:
    shown = "\n".join(f"  {b}" for b in bad[:SHOWN_BAD_ROWS])
    more = f"\n  ... and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
    return TraceError(
        f"{path}: {len(bad)} bad row(s):\n{shown}{more}\n"
        "fix them, or skip them with skip_bad_rows=True (CLI: --skip-bad-rows)"
    )


def _finish(
    jobs: list[TraceJob],
    bad: list[BadRow],
    opts: TraceOptions,
    *,
    source: str,
    fmt: str,
    rows_read: int,
    filtered: dict[str, int],
    params: Mapping[str, Any] | None = None,
) -> Trace:
    """Bad-row policy, window, sampling, duration cap, shift to t=0."""
    if bad and not opts.skip_bad_rows:
        raise _bad_rows_error(source, bad)
    jobs.sort(key=lambda j: j.submit_s)  # stable: file order among equal times
    filtered = dict(filtered)
    if jobs and opts.window_h is not None:
        end = jobs[0].submit_s + opts.window_h * 3600.0
        kept = [j for j in jobs if j.submit_s < end]
        if len(kept) < len(jobs):
            filtered["outside_window"] = len(jobs) - len(kept)
        jobs = kept
    if opts.max_jobs is not None and len(jobs) > opts.max_jobs:
        if opts.sample == "first":
            kept = jobs[: opts.max_jobs]
        else:
            idx = sorted(random.Random(opts.seed).sample(range(len(jobs)), opts.max_jobs))
            kept = [jobs[i] for i in idx]
        filtered["sampled_out"] = len(jobs) - len(kept)
        jobs = kept
    capped = 0
    if opts.max_duration_s is not None:
        cap = opts.max_duration_s
        out = []
        for j in jobs:
            if j.duration_s > cap:
                capped += 1
                j = replace(j, duration_s=cap)
            out.append(j)
        jobs = out
    offset = jobs[0].submit_s if jobs else 0.0
    if offset:
        jobs = [replace(j, submit_s=j.submit_s - offset) for j in jobs]
    if not jobs:
        raise TraceError(f"{source}: no jobs left" + (" after the window and filters" if rows_read else ""))
    meta = TraceMeta(
        source=source,
        format=fmt,
        rows_read=rows_read,
        rows_skipped=len(bad),
        rows_filtered={k: v for k, v in filtered.items() if v},
        bad_rows=tuple(bad[:SHOWN_BAD_ROWS]),
        window_h=opts.window_h,
        max_jobs=opts.max_jobs,
        sample=opts.sample,
        seed=opts.seed,
        max_duration_s=opts.max_duration_s,
        durations_capped=capped,
        durations_known=opts.durations_known,
        time_offset_s=offset,
        params=dict(params or {}),
    )
    return Trace(tuple(jobs), meta)


# ----------------------------------------------------------------------------- Philly


def load_philly(path: str | os.PathLike[str], **options: Any) -> Trace:
    """Read a Philly-style CSV; ``options`` are :class:`TraceOptions` fields.

    Columns: ``timestamp`` or ``submit_time`` (seconds or ISO-8601),
    ``duration`` (seconds, >= 0), ``num_gpus`` (> 0); optional ``job_id``
    (default ``job-<line>``), ``cluster``/``vc`` (team), ``priority``,
    ``gpu_type`` (``a|b``), ``num_cpus``, ``memory_mb``.
    """
    opts = _options(options)
    p = os.fspath(path)
    jobs: list[TraceJob] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    rows = 0
    checked = False
    for line, row, header in _open_csv(p):
        if not checked:
            _require_columns(p, header, [("timestamp", "submit_time"), ("duration",), ("num_gpus",)])
            checked = True
        rows += 1
        try:
            if "__width__" in row:
                raise _RowError(row["__width__"])
            submit = _time(row, "timestamp", "submit_time")
            duration = _number(row, "duration")
            if duration < 0:
                raise _RowError(f"negative duration {duration:g}")
            gpus = _number(row, "num_gpus")
            if gpus <= 0:
                raise _RowError(f"num_gpus must be > 0, got {gpus:g}")
            prio = _optional_number(row, "priority")
            if prio != int(prio):
                raise _RowError(f"priority must be an integer, got {prio:g}")
            cpus = _optional_number(row, "num_cpus", "cpus")
            mem = _optional_number(row, "memory_mb")
            if cpus < 0 or mem < 0:
                raise _RowError("num_cpus and memory_mb must be >= 0")
            job_id = row.get("job_id") or row.get("jobid") or f"job-{line}"
            if job_id in seen:
                raise _RowError(f"duplicate job id {job_id!r} (first at line {seen[job_id]})")
        except _RowError as e:
            bad.append(BadRow(p, line, str(e)))
            continue
        seen[job_id] = line
        jobs.append(
            TraceJob(
                job_id=job_id,
                submit_s=submit,
                duration_s=duration,
                gpus=gpus,
                cpus=cpus,
                memory_mb=mem,
                team=row.get("cluster") or row.get("vc") or "default",
                priority=int(prio),
                gpu_types=_types(row.get("gpu_type")),
                single_node=gpus < 1 or gpus != int(gpus),
            )
        )
    if not checked:
        raise TraceError(f"{p}: no rows")
    return _finish(jobs, bad, opts, source=p, fmt="philly", rows_read=rows, filtered={})


def write_philly_csv(trace: Trace, path: str | os.PathLike[str]) -> None:
    """Write ``trace`` as a Philly-style CSV that :func:`load_philly` reads back."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job_id", "submit_time", "duration", "num_gpus", "cluster", "priority", "gpu_type"])
        for j in trace.jobs:
            gpus = int(j.gpus) if j.gpus == int(j.gpus) else j.gpus
            w.writerow(
                [j.job_id, f"{j.submit_s:.3f}", f"{j.duration_s:.3f}", gpus, j.team, j.priority, "|".join(j.gpu_types)]
            )


# ----------------------------------------------------------------------------- Alibaba


def load_alibaba(path: str | os.PathLike[str], *, include_cpu_only: bool = False, **options: Any) -> Trace:
    """Read Alibaba's GPU trace v2023 pod list (a CSV, or a directory holding ``openb_pod_list_default.csv``).

    Per pod: ``submit = creation_time``; ``duration = deletion_time -
    scheduled_time`` (the time it ran; ``creation_time`` when not scheduled);
    ``gpus = num_gpu``, or ``gpu_milli / 1000`` for a one-GPU pod (fractional
    sharing); ``cpus = cpu_milli / 1000``; ``memory_mb = memory_mib``;
    ``gpu_types`` from ``gpu_spec`` (``a|b``); ``team = qos`` and priority
    from :data:`ALIBABA_QOS_PRIORITY`.  Pods must run on one node.

    Filtered (counted in ``meta.rows_filtered``, not errors): CPU-only pods
    (``num_gpu == 0``) unless ``include_cpu_only``, and pods never scheduled
    in production (empty ``scheduled_time``: no run time is known).
    """
    opts = _options(options)
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, ALIBABA_PODS_FILE)
    jobs: list[TraceJob] = []
    bad: list[BadRow] = []
    filtered = {"cpu_only": 0, "never_scheduled": 0}
    seen: dict[str, int] = {}
    rows = 0
    checked = False
    has_sched = False
    for line, row, header in _open_csv(p):
        if not checked:
            _require_columns(
                p,
                header,
                [
                    ("name",),
                    ("cpu_milli",),
                    ("memory_mib",),
                    ("num_gpu",),
                    ("gpu_milli",),
                    ("creation_time",),
                    ("deletion_time",),
                ],
                hint="the pod list of Alibaba's cluster-trace-gpu-v2023, e.g. openb_pod_list_default.csv",
            )
            checked = True
            has_sched = "scheduled_time" in header
        rows += 1
        try:
            if "__width__" in row:
                raise _RowError(row["__width__"])
            name = _field(row, "name")
            cpu_milli = _number(row, "cpu_milli")
            mem = _number(row, "memory_mib")
            num_gpu = _number(row, "num_gpu")
            gpu_milli = _number(row, "gpu_milli")
            created = _number(row, "creation_time")
            deleted = _number(row, "deletion_time")
            if cpu_milli < 0 or mem < 0:
                raise _RowError("cpu_milli and memory_mib must be >= 0")
            if num_gpu < 0 or num_gpu != int(num_gpu):
                raise _RowError(f"num_gpu must be a whole number >= 0, got {num_gpu:g}")
            if num_gpu == 1 and not 0 < gpu_milli <= 1000:
                raise _RowError(f"gpu_milli must be in (0, 1000] for a one-GPU pod, got {gpu_milli:g}")
            if num_gpu == 0 and not include_cpu_only:
                filtered["cpu_only"] += 1
                continue
            started = created
            if has_sched:
                raw = row.get("scheduled_time", "")
                if raw == "":
                    filtered["never_scheduled"] += 1
                    continue
                started = _number(row, "scheduled_time")
                if started < created:
                    raise _RowError(f"scheduled_time {started:g} before creation_time {created:g}")
            duration = deleted - started
            if duration < 0:
                raise _RowError(f"negative duration: deletion_time {deleted:g} before start {started:g}")
            if name in seen:
                raise _RowError(f"duplicate pod name {name!r} (first at line {seen[name]})")
        except _RowError as e:
            bad.append(BadRow(p, line, str(e)))
            continue
        seen[name] = line
        qos = row.get("qos") or "default"
        gpus = gpu_milli / 1000.0 if num_gpu == 1 else float(num_gpu)
        jobs.append(
            TraceJob(
                job_id=name,
                submit_s=created,
                duration_s=duration,
                gpus=gpus,
                cpus=cpu_milli / 1000.0,
                memory_mb=mem,
                team=qos,
                priority=ALIBABA_QOS_PRIORITY.get(qos, 0),
                gpu_types=_types(row.get("gpu_spec")),
                single_node=True,
            )
        )
    if not checked:
        raise TraceError(f"{p}: no rows")
    return _finish(jobs, bad, opts, source=p, fmt="alibaba", rows_read=rows, filtered=filtered)


# ----------------------------------------------------------------------------- synthetic

#: (GPUs, probability) of Gavel's Philly-derived generator.
PHILLY_GPU_MIX: tuple[tuple[int, float], ...] = ((1, 0.70), (2, 0.10), (4, 0.15), (8, 0.05))
#: Teams (Philly "virtual clusters") and their share of jobs.
SYNTHETIC_TEAMS: tuple[tuple[str, float], ...] = (("vc0", 0.4), ("vc1", 0.3), ("vc2", 0.2), ("vc3", 0.1))


def _philly_duration(rng: random.Random) -> float:
    """Heavy tail: 80% of jobs 10^U(1.5, 3) minutes, 20% 10^U(3, 4) minutes (Gavel)."""
    if rng.random() < 0.8:
        return 60.0 * 10 ** rng.uniform(1.5, 3.0)
    return 60.0 * 10 ** rng.uniform(3.0, 4.0)


def _pick(rng: random.Random, mix: Sequence[tuple[Any, float]]) -> Any:
    r = rng.random() * math.fsum(w for _, w in mix)
    acc = 0.0
    for v, w in mix:
        acc += w
        if r < acc:
            return v
    return mix[-1][0]


def synthetic_philly(
    *,
    jobs: int = 1000,
    total_gpus: float = 64,
    load: float = 0.85,
    seed: int = 0,
    max_duration_s: float | None = None,
    gpu_mix: Sequence[tuple[int, float]] = PHILLY_GPU_MIX,
    teams: Sequence[tuple[str, float]] = SYNTHETIC_TEAMS,
    cpus_per_gpu: float = 0.0,
    memory_mb_per_gpu: float = 0.0,
    durations_known: bool = False,
    window_h: float | None = None,
) -> Trace:
    """A seeded Philly-like trace: Poisson arrivals at ``load`` on ``total_gpus``.

    GPU counts and durations are drawn first (capped at ``max_duration_s``);
    the arrival rate is then ``load * total_gpus / mean(gpus * duration)``, so
    the offered load is ``load`` in expectation.  Same arguments, same trace.
    """
    try:
        TraceOptions(max_jobs=jobs, seed=seed, max_duration_s=max_duration_s, window_h=window_h)
    except ValidationError as e:
        raise TraceError(
            "synthetic trace: " + "; ".join(f"{err['loc'][0]}: {err['msg']}" for err in e.errors())
        ) from None
    if not load > 0:
        raise TraceError(f"synthetic trace: load must be > 0, got {load}")
    if not total_gpus > 0:
        raise TraceError(f"synthetic trace: total_gpus must be > 0, got {total_gpus}")
    if not gpu_mix or any(g <= 0 or w < 0 for g, w in gpu_mix):
        raise TraceError("synthetic trace: gpu_mix needs (gpus > 0, weight >= 0) pairs")
    rng = random.Random(seed)
    draws: list[tuple[int, float, str]] = []
    capped = 0
    for _ in range(jobs):
        g = int(_pick(rng, gpu_mix))
        d = _philly_duration(rng)
        if max_duration_s is not None and d > max_duration_s:
            d, capped = max_duration_s, capped + 1
        draws.append((g, d, str(_pick(rng, teams))))
    mean_work = math.fsum(g * d for g, d, _ in draws) / jobs
    rate = load * total_gpus / mean_work
    t = 0.0
    out: list[TraceJob] = []
    width = len(str(jobs - 1))
    for i, (g, d, team) in enumerate(draws):
        if i:
            t += rng.expovariate(rate)
        out.append(
            TraceJob(
                job_id=f"job-{i:0{width}d}",
                submit_s=round(t, 3),
                duration_s=round(d, 3),
                gpus=float(g),
                cpus=cpus_per_gpu * g,
                memory_mb=memory_mb_per_gpu * g,
                team=team,
            )
        )
    filtered: dict[str, int] = {}
    if window_h is not None:
        kept = [j for j in out if j.submit_s < window_h * 3600.0]
        filtered["outside_window"] = len(out) - len(kept)
        out = kept
    if not out:
        raise TraceError("synthetic trace: no jobs")
    params = {
        "generator": "philly-like (Gavel's distributions)",
        "jobs": jobs,
        "total_gpus": total_gpus,
        "load": load,
        "arrival_rate_per_s": rate,
        "gpu_mix": [list(x) for x in gpu_mix],
        "teams": [list(x) for x in teams],
    }
    meta = TraceMeta(
        source="synthetic",
        format="synthetic",
        rows_read=jobs,
        rows_filtered={k: v for k, v in filtered.items() if v},
        window_h=window_h,
        max_jobs=jobs,
        seed=seed,
        max_duration_s=max_duration_s,
        durations_capped=capped,
        durations_known=durations_known,
        params=params,
    )
    return Trace(tuple(out), meta)


# ----------------------------------------------------------------------------- dispatch


def load_trace(path: str | os.PathLike[str] | None, fmt: str, **options: Any) -> Trace:
    """Load a trace of format ``philly`` or ``alibaba`` (``options``: :class:`TraceOptions` fields,
    plus ``include_cpu_only`` for alibaba).  For ``synthetic`` use :func:`synthetic_philly`."""
    if fmt not in ("philly", "alibaba"):
        raise TraceError(
            f"unknown trace format {fmt!r}; expected one of: philly, alibaba (synthetic: synthetic_philly)"
        )
    if path is None:
        raise TraceError(f"a trace path is required for format {fmt!r}")
    if fmt == "philly":
        return load_philly(path, **options)
    return load_alibaba(path, **options)
