"""Debouncing drift verdicts into events (:class:`Debouncer`).

``consecutive`` drifted windows in a row (per variant and signal) make one event; while
drift goes on no further event; the episode ends after ``reset_windows`` clean windows in
a row, and only then can a new one begin.  An event *triggers* (retraining) unless a
retraining is already in flight: the triggering event claims it until
:meth:`Debouncer.end_retraining` (or ``in_flight_timeout_s``), so two variants drifting at
once trigger once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DebounceDecision", "Debouncer"]


@dataclass
class _Episode:
    streak: int = 0
    clean: int = 0
    active: bool = False
    windows: list[int] = field(default_factory=list)
    events: int = 0


@dataclass(frozen=True)
class DebounceDecision:
    """An event to record: ``trigger`` says whether it may start a retraining."""

    key: str
    windows: tuple[int, ...]
    trigger: bool
    note: str


class Debouncer:
    """``consecutive`` drifted windows in a row (per key, e.g. ``v3/data``) -> one event;
    no more for that key until ``reset_windows`` clean windows in a row end the episode.
    Each event claims "a retraining in flight" if none is; later events while it is in
    flight do not trigger.  :meth:`begin_retraining` / :meth:`end_retraining` are for the
    retraining loop (:mod:`raypipe.loop`); a claim nobody ends lapses after ``in_flight_timeout_s``.
    A successful retraining (new model, new reference) ends every episode."""

    def __init__(self, consecutive: int = 3, reset_windows: int = 3, in_flight_timeout_s: float = 6 * 3600.0) -> None:
        if consecutive < 1 or reset_windows < 1:
            raise ValueError("consecutive and reset_windows must be >= 1")
        self.consecutive = consecutive
        self.reset_windows = reset_windows
        self.in_flight_timeout_s = in_flight_timeout_s
        self.episodes: dict[str, _Episode] = {}
        #: {"event_id", "key", "since", "started": bool, "note"} while a retraining is claimed.
        self.in_flight: dict[str, Any] | None = None
        self.suppressed = 0

    def _expire(self, now: float) -> None:
        if self.in_flight is not None and now - self.in_flight["since"] > self.in_flight_timeout_s:
            self.in_flight = None

    def observe(self, key: str, drifted: bool | None, window_id: int, now: float) -> DebounceDecision | None:
        """Feed one window's verdict (None: the window could not be judged; ignored)."""
        if drifted is None:
            return None
        self._expire(now)
        ep = self.episodes.setdefault(key, _Episode())
        if not drifted:
            ep.streak = 0
            ep.windows.clear()
            ep.clean += 1
            if ep.active and ep.clean >= self.reset_windows:
                ep.active = False
            return None
        ep.clean = 0
        ep.streak += 1
        ep.windows.append(window_id)
        del ep.windows[: -self.consecutive]
        if ep.active or ep.streak < self.consecutive:
            return None
        ep.active = True
        ep.events += 1
        if self.in_flight is None:
            return DebounceDecision(key, tuple(ep.windows), True, f"{self.consecutive} drifted windows in a row")
        self.suppressed += 1
        return DebounceDecision(
            key,
            tuple(ep.windows),
            False,
            f"not triggered: a retraining is in flight (event {self.in_flight.get('event_id')})",
        )

    def claim(self, event_id: int, key: str, now: float) -> None:
        """Mark a retraining in flight for a triggering event."""
        self.in_flight = {"event_id": event_id, "key": key, "since": now, "started": False, "note": ""}

    def begin_retraining(self, event_id: int | None, now: float, note: str = "") -> None:
        """The retraining loop started work for ``event_id`` (claims if nothing is in flight)."""
        self._expire(now)
        if self.in_flight is None:
            self.in_flight = {"event_id": event_id, "key": None, "since": now, "started": True, "note": note}
        else:
            self.in_flight.update(started=True, since=now, note=note)

    def end_retraining(self, ok: bool, now: float) -> None:
        """The retraining finished; on success every episode ends (the model is new)."""
        self.in_flight = None
        if ok:
            self.episodes.clear()

    def state(self, now: float | None = None) -> dict[str, Any]:
        if now is not None:
            self._expire(now)
        return {
            "consecutive": self.consecutive,
            "reset_windows": self.reset_windows,
            "in_flight": dict(self.in_flight) if self.in_flight else None,
            "suppressed": self.suppressed,
            "episodes": {
                k: {"streak": e.streak, "clean": e.clean, "active": e.active, "events": e.events}
                for k, e in self.episodes.items()
            },
        }
