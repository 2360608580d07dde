"""Five-field cron expressions (``minute hour day-of-month month day-of-week``), ours: no
dependency, and the daylight-saving rules stated and tested (pure, no Ray).

Each field is ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n`` or ``a/n``, or a
comma-separated list of those; months and days of the week may be names (``jan``, ``mon-fri``);
day of week 0 and 7 are Sunday.  As in Vixie cron, when both day-of-month and day-of-week are
restricted (neither is ``*``), a day matches if either does.  Shortcuts: ``@yearly``,
``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``, ``@hourly``.

Times are local times of a time zone (:mod:`zoneinfo`).  A local time that does not exist (the
hour skipped when clocks go forward) is skipped; a local time that happens twice (the hour
repeated when clocks go back) fires once, at its first occurrence."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_FIELDS = (  # name, low, high, names (index + offset)
    ("minute", 0, 59, None, 0),
    ("hour", 0, 23, None, 0),
    ("day of month", 1, 31, None, 0),
    ("month", 1, 12, _MONTHS, 1),
    ("day of week", 0, 7, _DAYS, 0),
)
_SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: How far ahead :meth:`CronExpr.next_after` looks before it gives up (Feb 30 never comes).
_HORIZON_DAYS = 366 * 5


def _value(text: str, name: str, low: int, high: int, names: list[str] | None, offset: int) -> int:
    t = text.strip().lower()
    if names is not None and t in names:
        return names.index(t) + offset
    if not t.isdigit():
        allowed = f" or a name ({', '.join(names)})" if names else ""
        raise ValueError(f"{name}: {text!r} is not a number from {low} to {high}{allowed}")
    v = int(t)
    if not low <= v <= high:
        raise ValueError(f"{name}: {v} is out of range {low}-{high}")
    return v


def _field(text: str, idx: int) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it is unrestricted (``*``)."""
    name, low, high, names, offset = _FIELDS[idx]
    out: set[int] = set()
    star = False
    for part in text.split(","):
        if not part:
            raise ValueError(f"{name}: empty item in {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            a, b = low, high
            star = star or not step_text
        elif "-" in base:
            lo_t, _, hi_t = base.partition("-")
            a = _value(lo_t, name, low, high, names, offset)
            b = _value(hi_t, name, low, high, names, offset)
            if a > b:
                raise ValueError(f"{name}: range {base!r} runs backwards")
        else:
            a = _value(base, name, low, high, names, offset)
            b = high if step_text else a
        out.update(range(a, b + 1, step))
    if idx == 4 and 7 in out:  # Sunday is 0 and 7
        out.discard(7)
        out.add(0)
    return frozenset(out), star


@dataclass(frozen=True)
class CronExpr:
    """A parsed expression; :meth:`next_after` and :meth:`between` give its fire times."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_star: bool
    weekdays_star: bool

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        expr = _SHORTCUTS.get(text.strip().lower(), text)
        parts = expr.split()
        if len(parts) != 5:
            raise ValueError(
                f"cron {text!r}: expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
            )
        try:
            fields = [_field(p, i) for i, p in enumerate(parts)]
        except ValueError as e:
            raise ValueError(f"cron {text!r}: {e}") from None
        return cls(
            text.strip(),
            fields[0][0],
            fields[1][0],
            fields[2][0],
            fields[3][0],
            fields[4][0],
            days_star=fields[2][1],
            weekdays_star=fields[4][1],
        )

    def _day_matches(self, d: dt.date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.days_star or self.weekdays_star:
            return dom and dow
        return dom or dow

    def _local_times(self, start: dt.date, days: int = _HORIZON_DAYS) -> Iterator[dt.datetime]:
        """Naive local times that match, from the day ``start`` on (``days`` days), in order."""
        for n in range(days):
            d = start + dt.timedelta(days=n)
            if not self._day_matches(d):
                continue
            for h in sorted(self.hours):
                for m in sorted(self.minutes):
                    yield dt.datetime(d.year, d.month, d.day, h, m)

    def next_after(self, after: float, tz: str | dt.tzinfo = "UTC") -> float | None:
        """The first fire time strictly after the epoch time ``after`` (None: none in 5 years)."""
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        start = dt.datetime.fromtimestamp(after, zone)
        # Start a day early: a local time of the previous date can be later than `after` around
        # a transition only by an hour, but the day before costs nothing and is always safe.
        for naive in self._local_times(start.date() - dt.timedelta(days=1)):
            t = _resolve(naive, zone)
            if t is not None and t > after:
                return t
        return None

    def between(self, after: float, until: float, tz: str | dt.tzinfo = "UTC", limit: int = 1000) -> list[float]:
        """Fire times in ``(after, until]``, oldest first; at most ``limit``, the newest ones."""
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        start = dt.datetime.fromtimestamp(after, zone).date() - dt.timedelta(days=1)
        last = dt.datetime.fromtimestamp(until, zone).date() + dt.timedelta(days=1)
        out: list[float] = []
        for naive in self._local_times(start, (last - start).days + 1):
            t = _resolve(naive, zone)
            if t is not None and after < t <= until:
                out.append(t)
                if len(out) > limit:
                    out.pop(0)
        return out


def _resolve(naive: dt.datetime, zone: dt.tzinfo) -> float | None:
    """The epoch time of a local time: None if it does not exist (clocks went forward past it);
    the first of the two if it happens twice (clocks went back)."""
    first = naive.replace(tzinfo=zone, fold=0)
    # A nonexistent time does not survive a round trip through UTC.
    back = first.astimezone(dt.timezone.utc).astimezone(zone).replace(tzinfo=None)
    if back != naive:
        return None
    return first.timestamp()


def describe(t: float, tz: str = "UTC") -> str:
    """``2026-12-07T03:00+01:00``: a fire time as the schedule's zone shows it."""
    return dt.datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat(timespec="minutes")
