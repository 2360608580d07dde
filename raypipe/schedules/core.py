"""What a schedule does at one tick (pure: no Ray, no store, the clock injected).

:func:`decide` takes the schedule's triggers, its stored :class:`State` (the time up to which
its times were considered, the file snapshot and model version it saw, an open debounce
window), what is :class:`Observed` now (the watched files, the model's version, its runs still
going, its queued fires) and ``now``; it returns the :class:`Fire`\\ s (each with why it fired
and what happens to it), the new state, the runs to stop and the queued fire to start.  The
controller records the fires and the new state in one transaction before it starts any run,
so a restart never fires the same time twice."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from raypipe.config.cron import CronExpr, describe
from raypipe.config.triggers import ScheduleSpec, TriggersConfig
from raypipe.schedules.files import Snapshot, changed

#: What becomes of a fire: ``start`` a run, ``queued`` (starts when the previous run ends),
#: ``skipped`` (a run was going), ``replaced`` (a later fire of the same tick won),
#: ``missed`` (catch-up policy: a time that passed while nobody was looking).
FIRE_STATUSES = ("start", "queued", "skipped", "replaced", "missed")


@dataclass
class State:
    """What a schedule remembers between ticks (stored as JSON with it)."""

    #: Times up to here were considered (the apply time at first).
    cursor: float
    #: ``every``: the time its intervals count from.
    anchor: float
    #: ``on_data``: the snapshot last seen (path -> size, mtime, sha256).
    files: Snapshot = field(default_factory=dict)
    #: ``on_data``: when the open debounce window opened (None: none open).
    pending_since: float | None = None
    #: ``on_model``: the version last seen (0: none).
    model: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> State:
        return cls(
            cursor=float(doc["cursor"]),
            anchor=float(doc.get("anchor", doc["cursor"])),
            files=dict(doc.get("files") or {}),
            pending_since=doc.get("pending_since"),
            model=int(doc.get("model") or 0),
        )


@dataclass
class Observed:
    """The world at this tick."""

    #: ``on_data``: the watched files now.
    files: Snapshot | None = None
    #: ``on_model``: the alias's version now (the latest version without an alias); None: none.
    model_version: int | None = None
    #: Run ids of this schedule's runs still going (oldest first).
    running: Sequence[str] = ()
    #: Ids of this schedule's queued fires, oldest first.
    queued: Sequence[int] = ()


@dataclass
class Fire:
    """One fire: its unique key in the schedule, when it was due, why, and what becomes of it."""

    key: str
    due: float
    kind: str  # schedule | data | model
    reason: str
    status: str = "start"
    #: ``on_data``: the files the run reads (path -> size, mtime, sha256).
    files: Snapshot | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    fires: list[Fire]
    state: State
    #: Runs to stop (``concurrency: replace``).
    stop: list[str] = field(default_factory=list)
    #: A queued fire to start now (``concurrency: queue``, nothing running).
    start_queued: int | None = None


def initial_state(triggers: TriggersConfig, now: float, observed: Observed) -> State:
    """The state at apply: times from now on, the files and model version there now (they do not fire)."""
    return State(cursor=now, anchor=now, files=dict(observed.files or {}), model=observed.model_version or 0)


def due_times(spec: ScheduleSpec, after: float, until: float, anchor: float, limit: int) -> list[float]:
    """The schedule's times in ``(after, until]``, oldest first, at most the newest ``limit``."""
    if until <= after:
        return []
    every = spec.every_s()
    if every is None:
        assert spec.cron is not None  # the model's validator: cron or every
        return CronExpr.parse(spec.cron).between(after, until, spec.timezone, limit=limit)
    first = int((after - anchor) // every) + 1
    last = int((until - anchor) // every)
    return [anchor + k * every for k in range(max(first, last - limit + 1), last + 1)]


def _label(spec: ScheduleSpec) -> str:
    return f"cron {spec.cron}" if spec.cron is not None else f"every {spec.every}"


def _schedule_fires(spec: ScheduleSpec, state: State, now: float) -> list[Fire]:
    limit = spec.max if spec.catch_up == "all" else 1
    # One more than kept, to know that older ones were missed (their count is not needed).
    dues = due_times(spec, state.cursor, now, state.anchor, limit + 1)
    if not dues:
        return []
    label = _label(spec)

    def fire(t: float, status: str = "start", note: str = "") -> Fire:
        return Fire(f"time:{t:.3f}", t, "schedule", f"{label} at {describe(t, spec.timezone)}", status, note=note)

    on_time = [t for t in dues if now - t <= spec.grace_s]
    if spec.catch_up == "skip":
        keep = on_time[-1:]
    elif spec.catch_up == "latest":
        keep = dues[-1:]
    else:
        keep = dues[-spec.max :]
    missed = [t for t in dues if not keep or t < keep[0]]
    out = []
    if missed:
        note = f"missed (catch_up: {spec.catch_up})"
        out.append(fire(missed[-1], "missed", note))
    return out + [
        fire(t, note="caught up (catch_up: " + spec.catch_up + ")" if now - t > spec.grace_s else "") for t in keep
    ]


def _names(paths: Sequence[str], limit: int = 10) -> str:
    names = [os.path.basename(p.rstrip("/")) or p for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _data_fire(triggers: TriggersConfig, state: State, files: Snapshot, now: float) -> Fire | None:
    spec = triggers.on_data
    assert spec is not None
    new = changed(state.files, files)
    if state.pending_since is None:
        if not new:
            state.files = dict(files)  # removals are remembered, and do not fire
            return None
        state.pending_since = now
    if now - state.pending_since < spec.debounce_s:
        return None
    state.pending_since = None
    state.files = dict(files)
    if not new:
        return None  # changed back within the window
    passed = files if spec.read == "all" else {p: files[p] for p in new}
    return Fire(f"data:{now:.3f}", now, "data", f"files changed: {_names(new)}", files=dict(passed))


def _model_fire(triggers: TriggersConfig, state: State, version: int | None, now: float) -> Fire | None:
    spec = triggers.on_model
    assert spec is not None
    v = version or 0
    if v == state.model:
        return None
    before, state.model = state.model, v
    if v == 0:
        return None  # the alias was removed: nothing to run on
    if spec.alias is not None:
        was = f"v{before}" if before else "unset"
        reason = f"alias {spec.alias} -> v{v} (was {was})"
    else:
        reason = f"new version {spec.model}:{v}"
    return Fire(f"model:{spec.alias or ''}:v{v}:{now:.3f}", now, "model", reason)


def _concurrency(mode: str, fires: list[Fire], observed: Observed) -> tuple[list[str], int | None]:
    """Set each new fire's fate; the runs to stop and the queued fire to start."""
    starting = [f for f in fires if f.status == "start"]
    busy = list(observed.running)
    stop: list[str] = []
    if mode == "skip":
        for i, f in enumerate(starting):
            if busy:
                f.status, f.note = "skipped", f"run {busy[-1]} is still going (concurrency: skip)"
            elif i > 0:
                f.status, f.note = "skipped", "another fire of this tick started a run (concurrency: skip)"
    elif mode == "queue":
        for i, f in enumerate(starting):
            if busy or observed.queued or i > 0:
                f.status, f.note = "queued", "waits for the previous run (concurrency: queue)"
        if not busy and not starting and observed.queued:
            return stop, observed.queued[0]
    else:  # replace
        for f in starting[:-1]:
            f.status, f.note = "replaced", "a later fire of this tick replaced it (concurrency: replace)"
        if starting and busy:
            stop = busy
            starting[-1].note = f"replaces run {', '.join(busy)} (concurrency: replace)"
    return stop, None


def decide(triggers: TriggersConfig, state: State, observed: Observed, now: float) -> Decision:
    """The fires of one tick at ``now`` (see the module docstring); ``state`` is not changed."""
    new = State.from_json(state.to_json())
    fires: list[Fire] = []
    if triggers.schedule is not None:
        fires += _schedule_fires(triggers.schedule, new, now)
    new.cursor = max(new.cursor, now)
    if triggers.on_data is not None and observed.files is not None:
        f = _data_fire(triggers, new, observed.files, now)
        if f is not None:
            fires.append(f)
    if triggers.on_model is not None:
        f = _model_fire(triggers, new, observed.model_version, now)
        if f is not None:
            fires.append(f)
    stop, queued = _concurrency(triggers.concurrency, fires, observed)
    return Decision(fires, new, stop, queued)
