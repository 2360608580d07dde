"""One tick of every schedule of a metadata store, with the world behind :class:`Ports` (no Ray:
the controller actor gives the real ports, unit tests fakes and a fake clock).

Per schedule not paused: observe (the watched files, the model's version, its runs still going,
its queued fires), :func:`~raypipe.schedules.core.decide`, record the fires and the new state in
one transaction (:meth:`~raypipe.store.schedules.ScheduleStore.record_tick`), then stop and start
runs.  A fire recorded ``starting`` whose run this ticker did not start (the controller died in
between) is started at the next tick: its run id was fixed when it was recorded, and the runner
refuses an id that exists, so it starts at most once."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raypipe.config.triggers import TriggersConfig
from raypipe.schedules.core import Fire, Observed, State, decide
from raypipe.schedules.files import Snapshot, snapshot
from raypipe.store.schedules import ScheduleStore, StoredFire, StoredSchedule

log = logging.getLogger("raypipe.schedules")

#: Fires whose run is (or is about to be) going.
ACTIVE = ("starting", "started")
#: A started run with no run row yet counts as going for this long (its driver is starting).
STARTUP_S = 120.0


@dataclass
class Ports:
    #: Start the run ``run_id`` of ``pipeline_file`` for ``owner`` in ``workdir``, its output in ``log_path``.
    launch: Callable[[str, str, str | None, str, Path], None]
    #: Stop a run (its driver gets SIGTERM and records it ``stopped``).
    stop: Callable[[str], None]
    #: Whether this process's driver of ``run_id`` is alive (None: not started here).
    driver_alive: Callable[[str], bool | None]
    #: The version of ``model`` at ``alias`` (None alias: its latest version); None: none.
    model_version: Callable[[str, str | None], int | None]
    #: The files under a watched path (the previous snapshot lets unchanged files keep their hash).
    snapshot: Callable[[str, Snapshot], Snapshot] = snapshot


def run_id_for(schedule: str, fire: Fire) -> str:
    t = dt.datetime.fromtimestamp(fire.due, dt.timezone.utc)
    return f"{schedule}-{fire.kind}-{t:%Y%m%dT%H%M%S}{int(fire.due * 1000) % 1000:03d}"[:200]


def read_stage(doc: dict[str, Any], wanted: str | None) -> str:
    """The ``data.read`` stage an ``on_data`` trigger feeds: ``wanted``, else the only one."""
    reads = [s.get("name") for s in doc.get("stages") or [] if isinstance(s, dict) and s.get("kind") == "data.read"]
    if wanted is not None:
        if wanted not in reads:
            raise ValueError(f"triggers.on_data.stage: {wanted!r} is not a data.read stage (those: {reads or 'none'})")
        return wanted
    if len(reads) != 1:
        raise ValueError(
            f"triggers.on_data: the pipeline has {len(reads)} data.read stages"
            + (f" ({', '.join(map(str, reads))}): name one in on_data.stage" if reads else "; it needs one")
        )
    return str(reads[0])


def run_document(sched: StoredSchedule, fire: StoredFire, triggers: TriggersConfig) -> dict[str, Any]:
    """The pipeline a fire runs: the applied file without ``triggers``; for an ``on_data`` fire,
    its read stage's ``path`` set to the snapshot's files."""
    doc: dict[str, Any] = yaml.safe_load(sched.pipeline_yaml)
    doc.pop("triggers", None)
    if fire.files is not None and triggers.on_data is not None:
        stage = read_stage(doc, triggers.on_data.stage)
        for s in doc["stages"]:
            if s.get("name") == stage:
                s.setdefault("params", {})["path"] = sorted(fire.files)
    return doc


def storage_dir(sched: StoredSchedule, doc: dict[str, Any]) -> Path:
    storage = str(doc.get("storage") or ".raypipe")
    if "://" in storage:  # an object store: the run files stay on the head node
        storage = ".raypipe"
    return Path(sched.workdir, os.path.expanduser(storage), "schedules", sched.name)


def _same(a: State, b: State) -> bool:
    """Equal but for the cursor (which only moves past times that did not fire)."""
    return {**a.to_json(), "cursor": 0} == {**b.to_json(), "cursor": 0}


class Ticker:
    """Ticks every schedule of ``store`` (see the module docstring)."""

    def __init__(self, store: ScheduleStore, ports: Ports) -> None:
        self.store = store
        self.ports = ports
        self.last_errors: dict[str, str] = {}

    def tick(self, now: float) -> list[StoredFire]:
        """One tick at ``now``; the fires recorded (a failing schedule's error is kept in
        :attr:`last_errors` and the others go on)."""
        out: list[StoredFire] = []
        for sched in self.store.all():
            if sched.paused:
                continue
            try:
                out += self._tick_one(sched, now)
                self.last_errors.pop(sched.name, None)
            except Exception as e:  # noqa: BLE001 - one broken schedule must not stop the others
                self.last_errors[sched.name] = f"{type(e).__name__}: {e}"[:2000]
                log.warning("schedule %s: %s", sched.name, self.last_errors[sched.name])
        return out

    def _going(self, fire: StoredFire, now: float) -> bool:
        if fire.run_id is None:
            return False
        alive = self.ports.driver_alive(fire.run_id)
        if fire.run_status is not None:
            return fire.run_status == "running" and alive is not False
        if alive is not None:
            return alive
        return fire.status == "starting" or now - fire.fired_at < STARTUP_S

    def _tick_one(self, sched: StoredSchedule, now: float) -> list[StoredFire]:
        triggers = TriggersConfig.model_validate(sched.triggers)
        state = State.from_json(sched.state)
        self._recover(sched, triggers)
        active = self.store.fires_with(sched.name, ACTIVE)
        observed = Observed(
            files=self.ports.snapshot(triggers.on_data.path, state.files) if triggers.on_data else None,
            model_version=(
                self.ports.model_version(triggers.on_model.model, triggers.on_model.alias)
                if triggers.on_model
                else None
            ),
            running=[f.run_id for f in active if f.run_id and self._going(f, now)],
            queued=[f.id for f in self.store.fires_with(sched.name, ("queued",))],
        )
        decision = decide(triggers, state, observed, now)
        if not decision.fires and decision.start_queued is None and _same(decision.state, state):
            return []  # nothing happened: no write (a later tick considers the same times again)
        rows = []
        for f in decision.fires:
            doc = f.to_dict()
            if f.status in ("start", "queued"):
                doc["run_id"] = run_id_for(sched.name, f)
            if f.status == "start":
                doc["status"] = "starting"
            rows.append(doc)
        recorded = self.store.record_tick(sched.name, sched.tick, decision.state.to_json(), rows, at=now)
        if recorded is None:
            return []  # changed meanwhile: the next tick sees the new state
        for run_id in decision.stop:
            self.ports.stop(run_id)
        for fire in recorded:
            if fire.status == "starting":
                self._start(sched, triggers, fire)
        if decision.start_queued is not None:
            queued = [f for f in self.store.fires_with(sched.name, ("queued",)) if f.id == decision.start_queued]
            if queued:
                self.store.set_fire(queued[0].id, "starting")
                self._start(sched, triggers, queued[0])
        return recorded

    def _recover(self, sched: StoredSchedule, triggers: TriggersConfig) -> None:
        """Start the fires recorded ``starting`` whose run never started (see the module docstring)."""
        for fire in self.store.fires_with(sched.name, ("starting",)):
            if fire.run_id and fire.run_status is None and self.ports.driver_alive(fire.run_id) is None:
                self._start(sched, triggers, fire)

    def _start(self, sched: StoredSchedule, triggers: TriggersConfig, fire: StoredFire) -> None:
        assert fire.run_id is not None  # fires that start have one (set when recorded)
        try:
            doc = run_document(sched, fire, triggers)
            folder = storage_dir(sched, doc)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{fire.run_id}.yaml"
            header = f"# Run {fire.run_id} of schedule {sched.name} (raypipe schedule): {fire.reason}\n"
            path.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
            self.ports.launch(fire.run_id, str(path), sched.owner, sched.workdir, folder / f"{fire.run_id}.log")
        except Exception as e:  # noqa: BLE001 - recorded with the fire
            self.store.set_fire(fire.id, "failed", note=f"could not start the run: {type(e).__name__}: {e}"[:2000])
            return
        self.store.set_fire(fire.id, "started")
