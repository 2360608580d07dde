"""The state machine of one rollout (pure: no Ray): :class:`RolloutRun` over four ports
(``set_weights``, ``snapshot``, ``set_production``, ``record``) and a clock; it sets the
weights of each step, ticks, acts on decisions and records every event.  Also what
``rollout status`` says from the recorded events alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from raypipe._json import json_safe
from raypipe.exceptions import RaypipeError
from raypipe.serving.abtest.stats import VariantStats
from raypipe.serving.rollout.decisions import ADVANCE, HOLD, PROMOTE, ROLLBACK, Decision, decide
from raypipe.serving.rollout.settings import RolloutPlan

# --------------------------------------------------------------------------- the state machine


@dataclass
class Ports:
    """What a rollout touches.  ``set_production(version, reason)`` returns the previous
    production version (None if there was none)."""

    set_weights: Callable[[dict[str, float]], Any]
    snapshot: Callable[[float], Mapping[str, Mapping[str, Any]]]
    set_production: Callable[[int, str], int | None]
    record: Callable[[str, dict[str, Any]], Any]


ACTIVE = ("running", "paused")


class RolloutRun:
    """One rollout: sets each step's weights, judges every tick, records every event.

    States: ``pending`` -> ``running`` <-> ``paused`` -> ``promoted`` | ``rolled_back`` |
    ``aborted``.  A port that fails (e.g. ``set_weights`` while Serve is busy) leaves
    the state as it was; the action is retried on the next tick (a rollback or an abort
    stays pending until done)."""

    def __init__(self, plan: RolloutPlan, ports: Ports, clock: Callable[[], float] = time.time) -> None:
        self.plan = plan
        self.ports = ports
        self.clock = clock
        self.state = "pending"
        self.step_index = 0
        self.step_started_at: float | None = None
        self.weights: dict[str, float] = {}
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.last_decision: dict[str, Any] | None = None
        self.end_reason: str | None = None
        self._pending_stop: tuple[str, str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ transitions
    def begin(self) -> None:
        """Record ``started`` and enter the first step."""
        self.started_at = self.clock()
        self.ports.record(
            "started",
            {
                "plan": self.plan.model_dump(mode="json"),
                "baseline": self.plan.baseline,
                "candidate": self.plan.candidate,
                "steps": self.plan.steps,
            },
        )
        self._enter_step(0, "rollout started", {})

    def resume(self, step_index: int, started_at: float | None, reason: str) -> None:
        """Continue at ``step_index`` (a restarted controller): the step's window starts again."""
        self.started_at = started_at
        self.ports.record("resumed", {"step_index": step_index, "reason": reason})
        self._enter_step(step_index, f"resumed: {reason}", {})

    def _weights(self, candidate_percent: float) -> dict[str, float]:
        return {self.plan.baseline: 100.0 - candidate_percent, self.plan.candidate: candidate_percent}

    def _enter_step(self, i: int, reason: str, window: dict[str, Any]) -> None:
        weights = self._weights(self.plan.steps[i])
        self.ports.set_weights(weights)
        self.step_index, self.weights, self.step_started_at = i, weights, self.clock()
        self.state = "running"
        self.ports.record(
            "step",
            {
                "step_index": i,
                "step": i + 1,
                "percent": self.plan.steps[i],
                "weights": weights,
                "reason": reason,
                "previous_window": window,
            },
        )

    def abort(self, reason: str = "aborted by the user") -> None:
        if self.state not in ACTIVE and self._pending_stop is None:
            raise RaypipeError(f"rollout {self.plan.rollout_id} is {self.state}; nothing to abort")
        self._pending_stop = ("aborted", reason, {"step_index": self.step_index, "reason": reason})
        self._finish_stop()

    def _finish_stop(self) -> None:
        assert self._pending_stop is not None
        event, reason, detail = self._pending_stop
        weights = self._weights(0.0)
        self.ports.set_weights(weights)  # raises: stays pending, retried next tick
        self.weights = weights
        self._pending_stop = None
        self.state = event
        self.ended_at = self.clock()
        self.end_reason = reason
        self.ports.record(event, {**detail, "weights": weights})

    # ------------------------------------------------------------------ ticks
    def window(self) -> tuple[VariantStats, VariantStats, dict[str, Any]]:
        assert self.step_started_at is not None
        snap = self.ports.snapshot(self.step_started_at)
        base = VariantStats.from_snapshot(self.plan.baseline, snap.get(self.plan.baseline))
        cand = VariantStats.from_snapshot(self.plan.candidate, snap.get(self.plan.candidate))
        doc = {
            "since": self.step_started_at,
            "seconds": self.clock() - self.step_started_at,
            "baseline": _brief(base),
            "candidate": _brief(cand),
        }
        return base, cand, doc

    def tick(self) -> Decision | None:
        """Judge the current window and act.  None when the rollout is over."""
        if self._pending_stop is not None:
            self._finish_stop()
            return None
        if self.state not in ACTIVE:
            return None
        base, cand, window = self.window()
        assert self.step_started_at is not None
        done = self.clock() - self.step_started_at >= self.plan.interval_s
        d = decide(self.plan.steps, self.plan.guardrails, self.step_index, base, cand, done)
        self.last_decision = {**d.to_dict(), "at": self.clock(), "window": window}
        if d.action == ROLLBACK:
            observed = next(c.observed for c in d.checks if c.name == d.guardrail)
            allowed = next(c.allowed for c in d.checks if c.name == d.guardrail)
            self._pending_stop = (
                "rolled_back",
                d.reason,
                {
                    "step_index": self.step_index,
                    "percent": self.plan.steps[self.step_index],
                    "guardrail": d.guardrail,
                    "observed": json_safe(observed),
                    "allowed": allowed,
                    "reason": d.reason,
                    "window": window,
                },
            )
            self._finish_stop()
        elif d.action == HOLD:
            if self.state != "paused":
                self.state = "paused"
                self.ports.record(
                    "paused",
                    {
                        "step_index": self.step_index,
                        "percent": self.plan.steps[self.step_index],
                        "reason": d.reason,
                        "window": window,
                    },
                )
        elif d.action == ADVANCE:
            self._enter_step(self.step_index + 1, d.reason, window)
        elif d.action == PROMOTE:
            self._promote(d, window)
        return d

    def _promote(self, d: Decision, window: dict[str, Any]) -> None:
        weights = {self.plan.baseline: 0.0, self.plan.candidate: 100.0}
        self.ports.set_weights(weights)
        self.weights = weights
        version = self.plan.candidate_version
        previous: int | None = None
        note = ""
        if self.plan.model and version is not None:
            why = f"rollout {self.plan.rollout_id} of app {self.plan.app}: {d.reason}"
            previous = self.ports.set_production(version, why[:500])
        else:
            note = "no registry model for this app: the production alias was not moved"
        self.state = "promoted"
        self.ended_at = self.clock()
        self.end_reason = d.reason
        self.ports.record(
            "promoted",
            {
                "weights": weights,
                "model": self.plan.model,
                "production": version,
                "previous_production": previous,
                "reason": d.reason,
                "window": window,
                **({"note": note} if note else {}),
            },
        )

    def status(self) -> dict[str, Any]:
        """The rollout as it is.  ``step`` counts the steps as listed (1 to ``len(steps)``; the
        last, 100%, is the promotion); after a stop it is the step the rollout stopped at.
        ``stopping``: a rollback or abort whose weights are not set yet (retried every tick)."""
        now = self.clock()
        return json_safe(
            {
                "rollout_id": self.plan.rollout_id,
                "app": self.plan.app,
                "model": self.plan.model,
                "baseline": self.plan.baseline,
                "candidate": self.plan.candidate,
                "state": self.state,
                "stopping": self._pending_stop[0] if self._pending_stop is not None else None,
                "steps": self.plan.steps,
                "step_index": self.step_index,
                "step": len(self.plan.steps) if self.state == "promoted" else self.step_index + 1,
                "percent": self.plan.steps[self.step_index]
                if self.state in ACTIVE
                else self.weights.get(self.plan.candidate),
                "weights": dict(self.weights),
                "interval_s": self.plan.interval_s,
                "step_elapsed_s": (now - self.step_started_at)
                if self.step_started_at and self.state in ACTIVE
                else None,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "end_reason": self.end_reason,
                "last_decision": self.last_decision,
                "guardrails": self.plan.guardrails.model_dump(mode="json"),
            }
        )


# --------------------------------------------------------------------------- what `rollout status` says


def status_from_events(events: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A rollout's status as its recorded events tell it (no controller to ask): state, steps,
    the step it is at or stopped at, weights, the reason it ended; the keys of
    :meth:`RolloutRun.status` that the events hold (``events``: ``StoredEvent.to_dict()``)."""
    if not events or events[0]["event"] != "started":
        return None
    first = events[0]["detail"]
    plan = first.get("plan") or {}
    steps = [float(x) for x in first.get("steps") or plan.get("steps") or []]
    st: dict[str, Any] = {
        "rollout_id": plan.get("rollout_id"),
        "app": events[0].get("app"),
        "baseline": first.get("baseline"),
        "candidate": first.get("candidate"),
        "state": "pending",
        "stopping": None,
        "steps": steps,
        "step_index": 0,
        "step": 1,
        "percent": None,
        "weights": {},
        "interval_s": plan.get("interval_s"),
        "step_elapsed_s": None,
        "started_at": events[0].get("at"),
        "ended_at": None,
        "end_reason": None,
        "last_decision": None,
    }
    for e in events[1:]:
        kind, d = e["event"], e.get("detail") or {}
        if kind == "step":
            st.update(state="running", step_index=int(d.get("step_index", 0)), percent=d.get("percent"))
            st["weights"] = dict(d.get("weights") or {})
        elif kind == "paused":
            st["state"] = "paused"
        elif kind in ("promoted", "rolled_back", "aborted", "failed"):
            st.update(state=kind, ended_at=e.get("at"), end_reason=d.get("reason"))
            if "step_index" in d:
                st["step_index"] = int(d["step_index"])
            if d.get("weights"):
                st["weights"] = dict(d["weights"])
            st["percent"] = st["weights"].get(st["candidate"])
    st["step"] = len(steps) if st["state"] == "promoted" else st["step_index"] + 1
    return st


def progress_text(st: Mapping[str, Any]) -> str:
    """Where a rollout is, in one line, counting the steps as listed (the last, 100%, is the
    promotion): ``step 2 of 4 (5% -> 25% -> 50% -> 100%): v4 at 25% for 12 s of 60 s``, or
    the step it stopped at: ``aborted at step 1 of 4 (...): v4 was at 5%, now 0%``."""
    steps = list(st.get("steps") or [])
    n = len(steps)
    i = int(st.get("step_index") or 0)
    plan = " -> ".join(f"{x:g}%" for x in steps)
    cand = st.get("candidate")
    state = st.get("state")
    at = steps[i] if 0 <= i < n else None
    now = st.get("percent")
    now_text = "-" if now is None else f"{now:g}%"
    if state == "promoted":
        return f"promoted: step {n} of {n} ({plan}): {cand} at {now_text}"
    was = f"{cand} was at {at:g}%, now {now_text}" if at is not None else f"{cand} now at {now_text}"
    if st.get("stopping"):
        verb = "aborting" if st["stopping"] == "aborted" else "rolling back"
        return f"{verb} at step {i + 1} of {n} ({plan}): {cand} at {now_text} until its weight is set to 0 (retried)"
    if state in ("aborted", "rolled_back"):
        return f"{state.replace('_', ' ')} at step {i + 1} of {n} ({plan}): {was}"
    if state == "failed":
        return f"failed before its first step ({plan})"
    if state in ACTIVE:
        elapsed = st.get("step_elapsed_s")
        interval = st.get("interval_s")
        text = f"step {i + 1} of {n} ({plan}): {cand} at {now_text}"
        if elapsed is not None and interval:
            text += f" for {elapsed:.0f} s of {interval:g} s"
        return text + (" (paused: too little traffic to judge the step)" if state == "paused" else "")
    return f"{state} ({plan})"


def _brief(v: VariantStats) -> dict[str, Any]:
    return {
        "requests": v.requests,
        "errors": v.errors,
        "error_rate": v.error_rate,
        "p99_ms": v.p99_ms,
        "outcomes": v.outcomes,
        "conversion": v.conversion,
        "mean_outcome": v.mean_outcome,
    }


def tick_seconds(interval_s: float) -> float:
    """How often a controller judges: a quarter interval, between 0.2 and 5 s."""
    return min(max(interval_s / 4.0, 0.2), 5.0)
