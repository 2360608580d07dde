"""Philly-style CSV traces: read and write."""

from __future__ import annotations

import csv
import os
from typing import Any

from raypipe.scheduler.errors import TraceError
from raypipe.scheduler.traces.model import BadRow, Trace, TraceJob, parse_options
from raypipe.scheduler.traces.reading import (
    RowError,
    finish,
    gpu_types,
    number,
    open_csv,
    optional_number,
    require_columns,
    timestamp,
)


def load_philly(path: str | os.PathLike[str], **options: Any) -> Trace:
    """Read a Philly-style CSV; ``options`` are :class:`TraceOptions` fields.

    Columns: ``timestamp`` or ``submit_time`` (seconds or ISO-8601),
    ``duration`` (seconds, >= 0), ``num_gpus`` (> 0); optional ``job_id``
    (default ``job-<line>``), ``cluster``/``vc`` (team), ``priority``,
    ``gpu_type`` (``a|b``), ``num_cpus``, ``memory_mb``.
    """
    opts = parse_options(options)
    p = os.fspath(path)
    jobs: list[TraceJob] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    rows = 0
    checked = False
    for line, row, header in open_csv(p):
        if not checked:
            require_columns(p, header, [("timestamp", "submit_time"), ("duration",), ("num_gpus",)])
            checked = True
        rows += 1
        try:
            if "__width__" in row:
                raise RowError(row["__width__"])
            submit = timestamp(row, "timestamp", "submit_time")
            duration = number(row, "duration")
            if duration < 0:
                raise RowError(f"negative duration {duration:g}")
            gpus = number(row, "num_gpus")
            if gpus <= 0:
                raise RowError(f"num_gpus must be > 0, got {gpus:g}")
            prio = optional_number(row, "priority")
            if prio != int(prio):
                raise RowError(f"priority must be an integer, got {prio:g}")
            cpus = optional_number(row, "num_cpus", "cpus")
            mem = optional_number(row, "memory_mb")
            if cpus < 0 or mem < 0:
                raise RowError("num_cpus and memory_mb must be >= 0")
            job_id = row.get("job_id") or row.get("jobid") or f"job-{line}"
            if job_id in seen:
                raise RowError(f"duplicate job id {job_id!r} (first at line {seen[job_id]})")
        except RowError as e:
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
                gpu_types=gpu_types(row.get("gpu_type")),
                single_node=gpus < 1 or gpus != int(gpus),
            )
        )
    if not checked:
        raise TraceError(f"{p}: no rows")
    return finish(jobs, bad, opts, source=p, fmt="philly", rows_read=rows, filtered={})


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
