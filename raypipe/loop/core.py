"""The closed loop's state machine (pure: no Ray): :class:`LoopCore` over :class:`Ports` (the
monitor's events, a run launcher, the registry, the app's variants, the rollout controller,
the event log), one cycle at a time::

    idle --drift event that triggers--> retraining (a pipeline run, its own driver process)
      retraining --gate missed--> gate_failed            (production untouched)
      retraining --run failed--> retrain_failed          (a dead driver is resumed first)
      retraining --same model as production--> no_new_model
      retraining --registered vN--> canary (vN deployed at 0%, a rollout from the production variant)
      canary --passed every step--> promoted (alias production -> vN, the monitor's reference
                                    becomes vN's training profile, the old variant retired)
      canary --guardrail--> rolled_back (vN at 0%, then removed; production untouched)

A drift event while a cycle runs is recorded and not acted on (the monitor's debouncer
also holds "a retraining in flight"), so a retraining is never started twice.  After a
failed cycle the drift episode stays open: the loop retrains again only when drift ends
and comes back (no retry storm against a broken pipeline)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.notify import Notification

#: The series of events that belong to no cycle (armed, stopped, drift not acted on).
LOOP_SERIES = "loop"
#: Rollout states after which the canary is over.
ROLLOUT_DONE = ("promoted", "rolled_back", "aborted", "failed")


class CyclePhase(StrEnum):
    RETRAINING = "retraining"
    CANARY = "canary"


@dataclass
class Cycle:
    """The cycle in progress: the drift event that started it, the retraining run (and how
    often its driver was resumed), the version it registered, the canary's variant and rollout."""

    cycle_id: str
    drift: dict[str, Any] | None = None
    phase: CyclePhase = CyclePhase.RETRAINING
    run_id: str | None = None
    resumes: int = 0
    version: int | None = None
    label: str | None = None
    rollout_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``loop status``): fields not reached yet are left out."""
        always = ("cycle_id", "phase", "run_id", "resumes")
        return {k: (str(v) if k == "phase" else v) for k, v in asdict(self).items() if k in always or v is not None}


@dataclass
class Ports:
    """What the loop does to the world (real ones in :class:`LoopController`, fakes in tests)."""

    #: Monitor events with ``event_id > since``: ``{"started_at", "events": [...]}``.
    poll: Callable[[int], Mapping[str, Any]]
    begin_retraining: Callable[[int, str], Any]
    end_retraining: Callable[[bool], Any]
    #: (cycle id, drift event) -> the run id of the retraining run it launched.
    start_run: Callable[[str, Mapping[str, Any]], str]
    #: run id -> {"status", "error", "driver_alive", "gate": message of a missed gate or None}.
    run_state: Callable[[str], Mapping[str, Any]]
    resume_run: Callable[[str], Any]
    #: run id -> {"version", "production" (version or None), "metrics"}, or None (nothing registered).
    registered: Callable[[str], Mapping[str, Any] | None]
    #: version -> the variant label it is deployed as (at weight 0).
    add_candidate: Callable[[int], str]
    #: candidate label -> rollout id.
    start_rollout: Callable[[str], str]
    #: rollout id -> {"state", "reason", "weights"}.
    rollout_state: Callable[[str], Mapping[str, Any]]
    #: (version, candidate label, rollout state) after a promotion: new reference, old variant retired.
    promoted: Callable[[int, str, Mapping[str, Any]], Mapping[str, Any]]
    #: candidate label after a rollback: the variant removed.
    rolled_back: Callable[[str], Any]
    #: (version, kind, value): a registry link.
    link: Callable[[int, str, Mapping[str, Any]], Any]
    #: (series, event, detail): the event log.
    record: Callable[[str, str, Mapping[str, Any]], Any]


def _instance(started_at: Any) -> str:
    return f"{float(started_at):.6f}" if started_at is not None else "?"


def drift_detail(ev: Mapping[str, Any]) -> dict[str, Any]:
    """What a cycle keeps of the monitor's event (also the ``drift_event`` registry link)."""
    keys = ("variant", "kind", "windows", "trigger", "note", "signals", "drifted_features", "drift_share")
    out = {"monitor_event_id": ev.get("event_id"), "detected_at": ev.get("at"), **{k: ev.get(k) for k in keys}}
    if ev.get("statistics") is not None:
        out["statistics"] = ev["statistics"]
    if ev.get("performance") is not None:
        out["performance"] = ev["performance"]
    return out


class LoopCore:
    """One app's loop (see :mod:`raypipe.loop.core`).  ``tick()`` does one step; the actor calls it
    every ``retrain.poll_s``."""

    def __init__(
        self,
        app: str,
        ports: Ports,
        *,
        max_resumes: int = 2,
        clock: Callable[[], float] = time.time,
        history: Sequence[Any] = (),
    ) -> None:
        self.app = app
        self.ports = ports
        self.max_resumes = max_resumes
        self.clock = clock
        self.since = 0
        self.monitor_started: float | None = None
        #: Per monitor instance (its start time), the last event id a previous controller saw
        #: (``history``: the app's stored loop events), so a new controller never acts on them again.
        self.seen: dict[str, int] = {}
        for e in history:
            if e.event == "drift" and e.detail.get("monitor_started_at") is not None:
                key = _instance(e.detail["monitor_started_at"])
                self.seen[key] = max(self.seen.get(key, 0), int(e.detail.get("monitor_event_id") or 0))
        #: The cycle in progress: cycle_id, drift, phase (retraining | canary), run_id, resumes,
        #: version, label, rollout_id.
        self.cycle: Cycle | None = None
        self.cycles = 0
        self.outcomes: dict[str, int] = {}

    @property
    def state(self) -> str:
        return "idle" if self.cycle is None else str(self.cycle.phase)

    def tick(self) -> None:
        self._poll()
        if self.cycle is None:
            return
        try:
            if self.cycle.phase == CyclePhase.RETRAINING:
                self._check_run()
            elif self.cycle.phase == CyclePhase.CANARY:
                self._check_rollout()
        except RaypipeError as e:
            self._fail("failed", f"{e}")

    # ------------------------------------------------------------------ drift
    def _poll(self) -> None:
        got = self.ports.poll(self.since)
        started = got.get("started_at")
        if started != self.monitor_started:
            # A monitor instance first seen by this controller (what an earlier controller saw of
            # it is skipped), or a restarted monitor (its event ids start again from 1).
            base = self.seen.get(_instance(started), 0) if self.monitor_started is None else 0
            self.monitor_started = started
            if base != self.since:
                self.since = base
                got = self.ports.poll(base)
        for ev in got.get("events") or []:
            self.since = max(self.since, int(ev["event_id"]))
            detail = drift_detail(ev)
            detail["monitor_started_at"] = started
            if ev.get("trigger") and self.cycle is None:
                self._start_cycle(detail)
            else:
                if self.cycle is not None:
                    detail["note"] = f"not acted on: cycle {self.cycle.cycle_id} is {self.cycle.phase}"
                self.ports.record(LOOP_SERIES, "drift", detail)

    def _start_cycle(self, drift: dict[str, Any]) -> None:
        self.cycles += 1
        cycle_id = f"{self.app}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(self.clock()))}-{uuid.uuid4().hex[:4]}"
        self.cycle = Cycle(cycle_id, drift=drift)
        self.ports.record(cycle_id, "drift", drift)
        self.ports.begin_retraining(int(drift["monitor_event_id"] or 0), f"cycle {cycle_id}")
        try:
            run_id = self.ports.start_run(cycle_id, drift)
        except (RaypipeError, OSError) as e:
            self._fail("retrain_failed", f"could not start the retraining run: {e}")
            return
        self.cycle.run_id = run_id
        self.ports.record(cycle_id, "retrain_started", {"run_id": run_id})

    # ------------------------------------------------------------------ retraining
    def _check_run(self) -> None:
        c = self.cycle
        assert c is not None and c.run_id is not None  # a retraining cycle has its run (else it failed)
        st = self.ports.run_state(c.run_id)
        status = st.get("status")
        if status == "succeeded":
            self._after_run()
            return
        if st.get("gate"):
            self._fail("gate_failed", str(st["gate"]), run_id=c.run_id)
            return
        if st.get("driver_alive"):
            return  # starting or running
        if status in ("running", "interrupted", "starting", None) and c.resumes < self.max_resumes:
            c.resumes += 1
            self.ports.resume_run(c.run_id)
            self.ports.record(
                c.cycle_id,
                "retrain_resumed",
                {"run_id": c.run_id, "resume": c.resumes, "why": f"its driver is gone (run {status})"},
            )
            return
        self._fail("retrain_failed", st.get("error") or f"run {c.run_id} is {status}", run_id=c.run_id)

    def _after_run(self) -> None:
        c = self.cycle
        assert c is not None and c.run_id is not None
        reg = self.ports.registered(c.run_id)
        if reg is None:
            self._fail("retrain_failed", f"run {c.run_id} succeeded but registered no model", run_id=c.run_id)
            return
        version = int(reg["version"])
        c.version = version
        if reg.get("production") == version:
            self._fail(
                "no_new_model",
                f"the retraining produced v{version}, the version already in production (same data, same model)",
                run_id=c.run_id,
            )
            return
        self.ports.link(version, "drift_event", {"app": self.app, "cycle_id": c.cycle_id, **(c.drift or {})})
        self.ports.link(version, "retraining", {"app": self.app, "cycle_id": c.cycle_id, "run_id": c.run_id})
        self.ports.record(
            c.cycle_id,
            "retrain_finished",
            {"run_id": c.run_id, "version": version, "metrics": reg.get("metrics") or {}},
        )
        label = self.ports.add_candidate(version)
        c.label = label
        rollout_id = self.ports.start_rollout(label)
        c.rollout_id = rollout_id
        c.phase = CyclePhase.CANARY
        self.ports.record(
            c.cycle_id, "canary_started", {"version": version, "variant": label, "rollout_id": rollout_id}
        )

    # ------------------------------------------------------------------ canary
    def _check_rollout(self) -> None:
        c = self.cycle
        # a canary cycle has its version, variant and rollout (set together when it began)
        assert c is not None and c.rollout_id is not None and c.label is not None and c.version is not None
        st = self.ports.rollout_state(c.rollout_id)
        state = st.get("state")
        if state not in ROLLOUT_DONE:
            return
        if state == "promoted":
            try:
                detail = dict(self.ports.promoted(int(c.version), c.label, st) or {})
            except Exception as e:  # noqa: BLE001 - the promotion stands; what failed after it is recorded
                self.ports.end_retraining(True)
                detail = {"error": f"after the promotion: {type(e).__name__}: {e}"}
            self._end("promoted", {"version": c.version, "rollout_id": c.rollout_id, **detail})
            return
        self.ports.rolled_back(c.label)
        self.ports.end_retraining(False)
        self._end(
            "rolled_back",
            {
                "version": c.version,
                "rollout_id": c.rollout_id,
                "rollout_state": state,
                "reason": st.get("reason"),
                "production": "untouched",
            },
        )

    # ------------------------------------------------------------------ endings
    def _fail(self, event: str, reason: str, **detail: Any) -> None:
        c = self.cycle
        if c is None:
            return
        if c.label:  # deployed at 0% for a canary that did not finish
            try:
                self.ports.rolled_back(c.label)
            except Exception as e:  # noqa: BLE001 - the failure is what gets recorded
                detail["cleanup_error"] = str(e)
        self.ports.end_retraining(False)
        self._end(event, {"reason": reason, **detail})

    def _end(self, event: str, detail: Mapping[str, Any]) -> None:
        c = self.cycle
        assert c is not None
        self.ports.record(c.cycle_id, event, dict(detail))
        self.outcomes[event] = self.outcomes.get(event, 0) + 1
        self.cycle = None

    # ------------------------------------------------------------------ restart
    def restore(self, events: Sequence[Any], final: Sequence[str]) -> None:
        """Continue the unfinished cycle of a previous controller (``events``: the latest
        cycle's stored events, oldest first)."""
        if not events or events[-1].event in final or events[0].series == LOOP_SERIES:
            return
        c = Cycle(events[0].series)
        for e in events:
            if e.event == "drift":
                c.drift = dict(e.detail)
            elif e.event == "retrain_started":
                c.run_id = e.detail.get("run_id")
            elif e.event == "retrain_resumed":
                c.resumes = int(e.detail.get("resume") or 0)
            elif e.event == "retrain_finished":
                c.version = e.detail.get("version")
            elif e.event == "canary_started":
                c.phase = CyclePhase.CANARY
                c.label = e.detail.get("variant")
                c.rollout_id = e.detail.get("rollout_id")
        self.cycle = c
        if c.run_id is None:
            self._fail("retrain_failed", "the loop controller restarted before the retraining run started")
            return
        if c.drift is not None:
            self.ports.begin_retraining(int(c.drift.get("monitor_event_id") or 0), f"cycle {c.cycle_id}")

    def status(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "state": self.state,
            "cycle": self.cycle.to_dict() if self.cycle else None,
            "cycles": self.cycles,
            "outcomes": dict(self.outcomes),
            "monitor_events_seen": self.since,
        }


def cycle_notification(
    app: str, series: str, event: str, detail: Mapping[str, Any], final: Sequence[str]
) -> Notification | None:
    """``loop_cycle_ended`` when ``event`` (one of ``final``, the store's ``LOOP_FINAL``) ends
    cycle ``series``, else None."""
    if event not in final or series == LOOP_SERIES:
        return None
    text = f"raypipe: loop cycle {series} of app {app} ended: {event}"
    if detail.get("reason"):
        text += f": {detail['reason']}"
    return Notification("loop_cycle_ended", text, {"app": app, "cycle": series, "outcome": event, **detail})
