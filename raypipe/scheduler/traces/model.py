"""The values of a job trace: its jobs, its metadata, and the options that cut it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raypipe.scheduler.errors import TraceError

#: How many bad rows a TraceError (and ``meta.bad_rows``) lists.
SHOWN_BAD_ROWS = 5


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


def parse_options(kw: Mapping[str, Any]) -> TraceOptions:
    """``TraceOptions`` from keyword options; invalid ones raise :class:`TraceError` naming each."""
    try:
        return TraceOptions(**kw)
    except ValidationError as e:
        raise TraceError(
            "invalid trace option(s): "
            + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})" for err in e.errors()
            )
        ) from None
