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

Modules: :mod:`.model` (the values and :class:`TraceOptions`), :mod:`.reading`
(CSV rows, bad-row policy, windowing and sampling), one module per source
(:mod:`.philly`, :mod:`.alibaba`, :mod:`.synthetic`).
"""

from __future__ import annotations

import os
from typing import Any

from raypipe.scheduler.errors import TraceError
from raypipe.scheduler.traces.alibaba import ALIBABA_PODS_FILE, ALIBABA_QOS_PRIORITY, load_alibaba
from raypipe.scheduler.traces.model import SHOWN_BAD_ROWS, BadRow, Trace, TraceJob, TraceMeta, TraceOptions
from raypipe.scheduler.traces.philly import load_philly, write_philly_csv
from raypipe.scheduler.traces.synthetic import PHILLY_GPU_MIX, SYNTHETIC_TEAMS, synthetic_philly

__all__ = [
    "ALIBABA_PODS_FILE",
    "ALIBABA_QOS_PRIORITY",
    "FORMATS",
    "PHILLY_GPU_MIX",
    "SHOWN_BAD_ROWS",
    "SYNTHETIC_TEAMS",
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
