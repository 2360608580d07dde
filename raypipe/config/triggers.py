"""The pipeline file's ``triggers:`` section: when a pipeline runs by itself (see docs/schedules.md).

::

    triggers:
      name: nightly-scoring          # the schedule's name (default: the pipeline's)
      schedule: {cron: "0 3 * * *", timezone: Europe/Berlin, catch_up: latest}
      on_data: {path: data/incoming/, debounce_s: 60}
      on_model: {model: digits, alias: production}
      concurrency: queue

Any of ``schedule``, ``on_data`` and ``on_model`` (at least one); they share ``concurrency``.
A run ignores this section: it only matters to ``raypipe schedule apply``."""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from raypipe.config.strict import StrictModel

_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EVERY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: str | float | int) -> float:
    """``90``, ``"90s"``, ``"15m"``, ``"6h"``, ``"1d"``, ``"2w"`` -> seconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30m, 6h or 1d; got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _EVERY_RE.match(value)
        if not m:
            raise ValueError(f"expected a duration such as 90s, 30m, 6h, 1d or 2w; got {value!r}")
        seconds = float(m[1]) * _UNITS[m[2]]
    if seconds < 1:
        raise ValueError(f"a duration of at least 1 s; got {value!r}")
    return seconds


class ScheduleSpec(StrictModel):
    """A time schedule: ``cron`` (5 fields: minute hour day-of-month month day-of-week, in
    ``timezone``) or ``every`` (a fixed interval from when the schedule was applied)."""

    cron: str | None = None
    timezone: str = "UTC"
    every: str | float | None = None
    #: Missed times (the scheduler was down, or paused): ``skip`` them, run once for the
    #: ``latest``, or run ``all`` of them (the newest ``max``).
    catch_up: Literal["skip", "latest", "all"] = "skip"
    #: With ``catch_up: all``: at most this many missed times are run.
    max: Annotated[int, Field(ge=1, le=1000)] = 10
    #: A time is on time (not missed) if the scheduler sees it within this many seconds.
    grace_s: Annotated[float, Field(ge=0)] = 60.0

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from raypipe.config.cron import CronExpr

            CronExpr.parse(v)  # raises ValueError naming the field of the expression
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; expected an IANA name such as Europe/Berlin or UTC") from None
        return v

    @field_validator("every")
    @classmethod
    def _every(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _one(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every is None):
            raise ValueError('give either cron (e.g. "0 3 * * *") or every (e.g. 6h)')
        return self

    def every_s(self) -> float | None:
        return None if self.every is None else parse_duration(self.every)


class OnDataSpec(StrictModel):
    """New or changed files under ``path`` (a local folder, a glob, or a URI ``pyarrow.fs``
    reads: ``s3://bucket/events/``) start a run; its ``data.read`` stage reads exactly the files
    that were there when it fired."""

    path: Annotated[str, Field(min_length=1)]
    #: One run per window: the first change seen opens it; the run starts this many seconds
    #: later with every change made meanwhile.
    debounce_s: Annotated[float, Field(ge=0)] = 60.0
    #: The ``data.read`` stage whose ``path`` becomes the snapshot's files (default: the
    #: pipeline's only ``data.read`` stage).
    stage: Annotated[str, Field(pattern=_NAME_RE)] | None = None
    #: ``all``: the run reads every file of the snapshot; ``changed``: only the new or changed ones.
    read: Literal["all", "changed"] = "all"


class OnModelSpec(StrictModel):
    """A move of ``model``'s ``alias`` (or, without ``alias``, a new version of ``model``) starts a run."""

    model: Annotated[str, Field(pattern=_NAME_RE)]
    alias: Annotated[str, Field(pattern=_NAME_RE)] | None = None


class TriggersConfig(StrictModel):
    """When the pipeline runs by itself (``raypipe schedule apply FILE``)."""

    #: The schedule's name (default: the pipeline's name).
    name: Annotated[str, Field(pattern=_NAME_RE, max_length=128)] | None = None
    schedule: ScheduleSpec | None = None
    on_data: OnDataSpec | None = None
    on_model: OnModelSpec | None = None
    #: When a trigger fires while the previous run is still going: ``skip`` the new one,
    #: ``queue`` it (it starts when the previous ends), or ``replace`` (stop the previous run).
    concurrency: Literal["skip", "queue", "replace"] = "skip"

    @model_validator(mode="after")
    def _some(self) -> TriggersConfig:
        if self.schedule is None and self.on_data is None and self.on_model is None:
            raise ValueError("give at least one of schedule, on_data, on_model")
        return self
