"""A stage attempt's log file: what its task prints and logs, and what the Ray work it started
printed, kept with the run.

Inside :func:`capture` (around the stage's task body, on the worker) everything written to
``sys.stdout`` and ``sys.stderr`` still reaches the worker's console (Ray's worker log; the
driver shows it with ``raypipe run -v``) and is appended to the attempt's log file
(:func:`raypipe.stages.base.stage_log_path`), and log records of every logger that propagates
to the root go to the file too (those of ``raypipe.stage.*`` from INFO on).  The task's
exception is written there with its traceback.  The output of the Ray tasks and actors the
stage started (:class:`~raypipe.runner.worker_output.WorkerOutput`) is added every
:data:`LIVE_EVERY_S` seconds while it runs and once more at its end.  Then ``on_close`` runs
(the task uploads the file to an object-store root there).  Output the stage task itself
writes past ``sys.stdout`` (C extensions, child processes) stays in Ray's worker log only.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from raypipe.runner.worker_output import RAY_TQDM_TOKEN, WorkerOutput

#: How a log record is written to the file.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: How often the Ray workers' output is added while the stage runs (``$RAYPIPE_WORKER_LOGS_S``;
#: 0: only at the end).
LIVE_EVERY_S = 5.0
#: At the end, how long to wait for the stage's Ray tasks to report that they finished.
FINAL_WAIT_S = 3.0

_log = logging.getLogger(__name__)


def kept(line: str) -> bool:
    """Whether a line goes to the log: not Ray's progress-bar messages (JSON a Ray driver turns
    into bars; a log shows Ray Data's own lines about the same executions)."""
    return RAY_TQDM_TOKEN not in line


class LogFile(io.TextIOBase):
    """The attempt's file, written by several threads: whole lines under one lock (a partial
    line waits for its end), Ray's progress-bar messages left out, and a failing disk never
    fails the stage (what could not be written is dropped)."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._partial = ""

    def _put(self, text: str) -> None:
        try:
            self._file.write(text)
        except (OSError, ValueError):  # the disk is full, the file was closed
            pass

    def write(self, s: str) -> int:
        with self._lock:
            lines = (self._partial + s).split("\n")
            self._partial = lines.pop()
            if lines:
                self._put("".join(line + "\n" for line in lines if kept(line)))
        return len(s)

    def section(self, text: str) -> None:
        """Write ``text`` (whole lines) on lines of its own: a partial line is ended first."""
        with self._lock:
            if self._partial:
                self._put(self._partial + "\n" if kept(self._partial) else "")
                self._partial = ""
            self._put(text if text.endswith("\n") else text + "\n")

    def flush(self) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError):
            pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            if self._partial and kept(self._partial):
                self._put(self._partial + "\n")
            self._partial = ""
        try:
            self._file.close()
        except OSError:
            pass
        super().close()


class Tee(io.TextIOBase):
    """A text stream writing to ``console`` and to ``file``; a failing file never fails the write."""

    def __init__(self, console: TextIO, file: io.TextIOBase) -> None:
        self._console = console
        self._file = file

    def write(self, s: str) -> int:
        n = self._console.write(s)
        try:
            self._file.write(s)
        except (OSError, ValueError):  # the disk is full, the file was closed: the console still gets it
            pass
        return n

    def flush(self) -> None:
        self._console.flush()
        try:
            self._file.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._console.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._console, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True


def live_every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("RAYPIPE_WORKER_LOGS_S", LIVE_EVERY_S)))
    except ValueError:
        return LIVE_EVERY_S


class _Collector:
    """Adds the Ray workers' output to the file: every ``every_s`` on a thread, then at the end."""

    def __init__(self, workers: WorkerOutput, file: LogFile, every_s: float) -> None:
        self.workers, self.file, self.every_s = workers, file, every_s
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one collection at a time
        self._thread: threading.Thread | None = None
        self.failed = ""

    def _once(self) -> None:
        with self._lock:
            if self.failed:
                return
            try:
                text = self.workers.collect()
            except Exception as e:  # noqa: BLE001 - the stage never fails for its log
                self.failed = f"{type(e).__name__}: {e}"
                return
            if text:
                self.file.section(text)

    def start(self) -> None:
        if self.every_s <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(self.every_s):
                self._once()

        self._thread = threading.Thread(target=loop, name="raypipe-worker-logs", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if not self.failed:
                try:
                    self.workers.finish(self.file.section, wait_s=FINAL_WAIT_S)
                except Exception as e:  # noqa: BLE001 - the stage never fails for its log
                    self.failed = f"{type(e).__name__}: {e}"
        if self.failed:
            self.file.section(f"----- the output of the stage's Ray workers could not be read: {self.failed}\n")


@contextmanager
def capture(
    path: Path,
    header: str = "",
    *,
    workers: WorkerOutput | None = None,
    on_close: Callable[[], Any] | None = None,
) -> Iterator[io.TextIOBase | None]:
    """While inside, tee ``sys.stdout``/``sys.stderr`` and log records into ``path`` (appended;
    an attempt queued again after a preemption writes on), and add the output of the Ray work
    ``workers`` finds.  ``on_close`` runs after the file is closed, also when the body raised.
    Yields the file (None if it cannot be opened: the stage runs all the same)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        raw: TextIO = open(path, "a", encoding="utf-8", buffering=1)  # closed at the end
    except OSError:
        yield None
        return
    file = LogFile(raw)
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if not root.handlers:
        # Without a handler anywhere, warnings reach the console through logging's last resort; a
        # handler for the file alone would silence them there, so the console gets one of its own.
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        handlers.append(console)
    to_file = logging.StreamHandler(file)
    to_file.setFormatter(logging.Formatter(FORMAT))
    handlers.append(to_file)
    for h in handlers:
        root.addHandler(h)
    stage_logger = logging.getLogger("raypipe.stage")
    level = stage_logger.level
    if stage_logger.getEffectiveLevel() > logging.INFO:
        stage_logger.setLevel(logging.INFO)
    saved = sys.stdout, sys.stderr
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    file.write(f"===== {stamp} {header} (host {socket.gethostname()}, pid {os.getpid()})\n")
    collector = _Collector(workers, file, live_every_s()) if workers is not None else None
    sys.stdout, sys.stderr = Tee(saved[0], file), Tee(saved[1], file)
    try:
        if collector is not None:
            collector.start()
        yield file
    except BaseException as e:
        file.section(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} failed: {type(e).__name__}\n")
        file.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        raise
    else:
        file.section(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} done\n")
    finally:
        sys.stdout, sys.stderr = saved
        for h in handlers:
            root.removeHandler(h)
        stage_logger.setLevel(level)
        try:
            if collector is not None:
                collector.finish()
        finally:
            file.close()
            if on_close is not None:
                try:
                    on_close()
                except Exception as e:  # noqa: BLE001 - the stage's result stands; the log stays on the worker
                    _log.warning("raypipe: the stage's log %s was not kept: %s", path, e)
