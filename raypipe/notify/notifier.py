"""The one delivery path: :class:`Notifier` queues notifications (never blocking, never
raising), sends them from one background thread, retries failed sends with exponential
backoff, and on :meth:`Notifier.close` waits at most a short flush bound."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from raypipe.config.notify import NotifySink
from raypipe.notify.deliver import DeliveryFailed, send
from raypipe.notify.events import Notification

__all__ = ["FLUSH_S", "QUEUE_SIZE", "Attempt", "Notifier", "effective_sinks", "notifier_for"]

_log = logging.getLogger(__name__)

#: Seconds a closing notifier (the end of a run) waits for deliveries in flight
#: (``$RAYPIPE_NOTIFY_FLUSH_S`` overrides).
FLUSH_S = 5.0
#: Notifications queued at most; more are dropped (and logged) rather than block anything.
QUEUE_SIZE = 200

SinkLike = NotifySink | Mapping[str, Any]
Sender = Callable[[NotifySink, Notification, str], None]


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as :attr:`Notifier.attempts` records it."""

    sink: int
    notification: str
    event: str
    attempt: int
    ok: bool
    error: str | None = None
    #: Seconds until the next attempt (None: no retry).
    retry_in: float | None = None


def _sinks(sinks: Sequence[SinkLike] | None) -> list[NotifySink]:
    out = []
    for i, s in enumerate(sinks or ()):
        try:
            out.append(s if isinstance(s, NotifySink) else NotifySink.model_validate(s))
        except ValidationError as e:  # a stored config of another version: skip it, say so
            _log.warning("raypipe: notify[%d] ignored: %s", i, str(e).splitlines()[0])
    return out


def effective_sinks(own: Sequence[SinkLike] | None, platform: Sequence[SinkLike] | None) -> list[NotifySink]:
    """A pipeline's (or app's) own ``notify`` when it has one (``[]``: none at all), else the
    platform config's: the admins' default."""
    return _sinks(own if own is not None else platform)


def flush_s() -> float:
    try:
        return max(0.0, float(os.environ.get("RAYPIPE_NOTIFY_FLUSH_S", FLUSH_S)))
    except ValueError:
        return FLUSH_S


class Notifier:
    """Sends notifications to ``sinks`` in the background.

    :meth:`notify` puts one notification per sink that wants it on a bounded queue and
    returns at once (a full queue drops it, logged).  One daemon thread sends; a failed send
    that may succeed later is tried again after ``backoff_s * 2**k`` seconds (``k`` = 0, 1,
    ...; at most the sink's ``retries`` times) while other deliveries go on.  ``send`` and
    ``environ`` are for tests and actors."""

    def __init__(
        self,
        sinks: Sequence[SinkLike] | None,
        *,
        source: str = "",
        queue_size: int = QUEUE_SIZE,
        sender: Sender | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.sinks = _sinks(sinks)
        self.source = source
        self._send = sender or (lambda sink, n, where: send(sink, n, where, environ))
        self._queue: queue.Queue[tuple[int, Notification, int]] = queue.Queue(maxsize=queue_size)
        self._retries: list[tuple[float, int, tuple[int, Notification, int]]] = []
        self._seq = itertools.count()
        self._sent_keys: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._deadline: float | None = None
        self._busy = 0
        self._thread: threading.Thread | None = None
        #: Every attempt, in order (the last 1000).
        self.attempts: list[Attempt] = []
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def wants(self, i: int, n: Notification) -> bool:
        sink = self.sinks[i]
        if n.event not in sink.events:
            return False
        if n.event == "stage_waiting" and (n.waited_s or 0.0) < sink.waiting_minutes * 60:
            return False
        return n.key is None or (i, n.key) not in self._sent_keys

    def notify(self, n: Notification) -> None:
        """Queue ``n`` for every sink that wants it; never blocks, never raises."""
        try:
            with self._lock:
                if self._closing:
                    return
                for i in range(len(self.sinks)):
                    if not self.wants(i, n):
                        continue
                    if n.key is not None:
                        self._sent_keys.add((i, n.key))
                    try:
                        self._queue.put_nowait((i, n, 0))
                    except queue.Full:
                        self.dropped += 1
                        _log.warning("raypipe: notification %s dropped: the queue is full", n.event)
                        continue
                    self._start()
            self._wake.set()
        except Exception as e:  # noqa: BLE001 - notifications never fail what they report on
            _log.warning("raypipe: notification %s not queued: %s", n.event, e)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="raypipe-notify", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the thread
    def _next(self) -> tuple[int, Notification, int] | None:
        """The next delivery due, waiting for one (or for the deadline when closing)."""
        while True:
            now = time.monotonic()
            with self._lock:
                self._give_up_late()
                if self._retries and self._retries[0][0] <= now:
                    return heapq.heappop(self._retries)[2]
                try:
                    return self._queue.get_nowait()
                except queue.Empty:
                    pass
                if self._closing and (not self._retries or (self._deadline is not None and now >= self._deadline)):
                    return None
                due = self._retries[0][0] if self._retries else None
                self._wake.clear()
            limit = [t - now for t in (due, self._deadline) if t is not None]
            self._wake.wait(max(0.0, min(limit)) if limit else None)

    def _give_up_late(self) -> None:
        """Closing: retries not due by the deadline are given up (logged), not waited for."""
        if not self._closing or self._deadline is None:
            return
        late = [r for r in self._retries if r[0] > self._deadline]
        if late:
            self._retries = [r for r in self._retries if r[0] <= self._deadline]
            heapq.heapify(self._retries)
            self.failed += len(late)
            events = ", ".join(sorted({r[2][1].event for r in late}))
            _log.warning("raypipe: %d notification(s) given up (%s): the receiver is failing", len(late), events)

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            with self._lock:
                self._busy += 1
            try:
                self._deliver(*item)
            finally:
                with self._lock:
                    self._busy -= 1

    def _deliver(self, i: int, n: Notification, attempt: int) -> None:
        sink = self.sinks[i]
        where = f"{self.source}notify[{i}]"
        try:
            self._send(sink, n, where)
        except Exception as e:  # noqa: BLE001 - every failure is a failed delivery
            retry = e.retry if isinstance(e, DeliveryFailed) else True
            error = str(e) or type(e).__name__
            delay = sink.backoff_s * 2**attempt if retry and attempt < sink.retries else None
            self._record(Attempt(i, n.id, n.event, attempt, False, error, delay))
            if delay is None:
                self.failed += 1
                _log.warning(
                    "raypipe: notification %s to %s (%s) failed after %d attempt(s): %s",
                    n.event,
                    sink.describe(),
                    where,
                    attempt + 1,
                    error,
                )
                return
            with self._lock:
                heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), (i, n, attempt + 1)))
            return
        self.delivered += 1
        self._record(Attempt(i, n.id, n.event, attempt, True))

    def _record(self, a: Attempt) -> None:
        self.attempts.append(a)
        del self.attempts[:-1000]

    # ------------------------------------------------------------------ the end
    def pending(self) -> int:
        """Deliveries queued, waiting to retry or being sent."""
        with self._lock:
            return self._queue.qsize() + len(self._retries) + self._busy

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking notifications and wait at most ``timeout`` seconds (default: the flush
        bound, ``$RAYPIPE_NOTIFY_FLUSH_S``, 5 s) for what is queued; retries not due by then
        are given up.  Returns whether everything was delivered or given up; what is left is
        sent on by the daemon thread while the process lives (logged)."""
        wait = flush_s() if timeout is None else max(0.0, timeout)
        with self._lock:
            self._closing = True
            self._deadline = time.monotonic() + wait
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(wait)
        left = self.pending()
        if self._thread.is_alive() and left:
            _log.warning("raypipe: %d notification(s) not delivered within %gs (a slow or dead receiver)", left, wait)
        return not self._thread.is_alive()


def notifier_for(sinks: Sequence[SinkLike] | None, source: str = "") -> Notifier | None:
    """A :class:`Notifier` for ``sinks``, or None when there are none (no thread then)."""
    n = Notifier(sinks, source=source)
    return n if n.sinks else None
