"""A stage attempt's log file: what its task prints and logs, kept after the run.

Inside :func:`capture` (around the stage's task body, on the worker) everything written to
``sys.stdout`` and ``sys.stderr`` still reaches the console (Ray forwards it to the driver)
and is appended to the attempt's log file
(:func:`raypipe.stages.base.stage_log_path`: ``<storage>/logs/<run>/<stage>.<attempt>.log``),
and log records of every logger that propagates to the root go to the file too (those of
``raypipe.stage.*`` from INFO on).  The task's exception is written there with its
traceback.  Output written straight to the file descriptors (C extensions, child
processes) and the Ray workers the stage starts are not captured.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

#: How a log record is written to the file.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Tee(io.TextIOBase):
    """A text stream writing to ``console`` and to ``file``; a failing file never fails the write."""

    def __init__(self, console: TextIO, file: TextIO) -> None:
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


@contextmanager
def capture(path: Path, header: str = "") -> Iterator[TextIO | None]:
    """While inside, tee ``sys.stdout``/``sys.stderr`` and log records into ``path`` (appended;
    an attempt queued again after a preemption writes on).  The file (None if it cannot be
    opened: the stage runs all the same)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file: TextIO = open(path, "a", encoding="utf-8", buffering=1)  # closed at the end
    except OSError:
        yield None
        return
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
    sys.stdout, sys.stderr = Tee(saved[0], file), Tee(saved[1], file)
    try:
        yield file
    except BaseException as e:
        _write(file, f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} failed: {type(e).__name__}\n")
        _write(file, "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        raise
    else:
        _write(file, f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} done\n")
    finally:
        sys.stdout, sys.stderr = saved
        for h in handlers:
            root.removeHandler(h)
        stage_logger.setLevel(level)
        try:
            file.close()
        except OSError:
            pass


def _write(file: Any, text: str) -> None:
    try:
        file.write(text)
    except (OSError, ValueError):
        pass
