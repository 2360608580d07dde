"""Alibaba's GPU cluster trace v2023 ("openb"): its pod list as trace jobs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from raypipe.scheduler.errors import TraceError
from raypipe.scheduler.traces.model import BadRow, Trace, TraceJob, parse_options
from raypipe.scheduler.traces.reading import RowError, field, finish, gpu_types, number, open_csv, require_columns

#: Alibaba ``qos`` -> job priority (higher runs first under the ``priority`` policy).
ALIBABA_QOS_PRIORITY: Mapping[str, int] = MappingProxyType({"LS": 2, "Guaranteed": 2, "Burstable": 1, "BE": 0})
ALIBABA_PODS_FILE = "openb_pod_list_default.csv"


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
    opts = parse_options(options)
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
    for line, row, header in open_csv(p):
        if not checked:
            require_columns(
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
                raise RowError(row["__width__"])
            name = field(row, "name")
            cpu_milli = number(row, "cpu_milli")
            mem = number(row, "memory_mib")
            num_gpu = number(row, "num_gpu")
            gpu_milli = number(row, "gpu_milli")
            created = number(row, "creation_time")
            deleted = number(row, "deletion_time")
            if cpu_milli < 0 or mem < 0:
                raise RowError("cpu_milli and memory_mib must be >= 0")
            if num_gpu < 0 or num_gpu != int(num_gpu):
                raise RowError(f"num_gpu must be a whole number >= 0, got {num_gpu:g}")
            if num_gpu == 1 and not 0 < gpu_milli <= 1000:
                raise RowError(f"gpu_milli must be in (0, 1000] for a one-GPU pod, got {gpu_milli:g}")
            if num_gpu == 0 and not include_cpu_only:
                filtered["cpu_only"] += 1
                continue
            started = created
            if has_sched:
                raw = row.get("scheduled_time", "")
                if raw == "":
                    filtered["never_scheduled"] += 1
                    continue
                started = number(row, "scheduled_time")
                if started < created:
                    raise RowError(f"scheduled_time {started:g} before creation_time {created:g}")
            duration = deleted - started
            if duration < 0:
                raise RowError(f"negative duration: deletion_time {deleted:g} before start {started:g}")
            if name in seen:
                raise RowError(f"duplicate pod name {name!r} (first at line {seen[name]})")
        except RowError as e:
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
                gpu_types=gpu_types(row.get("gpu_spec")),
                single_node=True,
            )
        )
    if not checked:
        raise TraceError(f"{p}: no rows")
    return finish(jobs, bad, opts, source=p, fmt="alibaba", rows_read=rows, filtered=filtered)
