"""Why a stage failed, in the user's words, and what to do about it (pure, no Ray).

Every failed stage run is classified here, in one place, into a *category*:

* deterministic -- running it again on the same inputs and config fails the same way,
  so ``raypipe resume`` cannot help; the user must change something, then run again:
  ``gate`` (an evaluation gate was missed), ``validation`` (``data.validate`` found rows
  or columns that break its rules), ``missing_input`` (a file or path the stage reads is
  not there), ``data`` (other unusable input data), ``config`` (the pipeline file, or a
  name it refers to, is wrong), ``stage`` (the stage itself: a bad return value, an
  import that fails), ``unschedulable`` (the stage asks for more than the cluster has);
* transient -- a later attempt may pass, so ``raypipe resume RUN`` continues the run:
  ``crash`` (a worker or node died, a system error), ``timeout``, ``preempted``,
  ``interrupted`` (the driver was stopped or killed), ``io`` (storage or network), and
  ``error``: any other exception of the stage's code (a bug fixed in the code is picked
  up by ``resume`` too).

The category comes from the exception type (:func:`classify`, the user's exception
inside Ray's ``RayTaskError``) or from the stage run's status (``timeout``,
``rejected``, ``interrupted``).  What the executor stores in ``stage_runs.error`` is
:func:`record`: the clean message (``DataError: ...``, multi-line when the exception
has a report; no Ray traceback, no colour codes), then a marker line naming the
category, then the traceback.  :func:`parse` reads it back (and makes the same clean
message out of records written before the marker existed: Ray's traceback and ANSI
codes stripped, the exception's own message kept).
"""

from __future__ import annotations

import re
import traceback as _tb
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

GATE = "gate"
VALIDATION = "validation"
MISSING_INPUT = "missing_input"
DATA = "data"
CONFIG = "config"
STAGE = "stage"
UNSCHEDULABLE = "unschedulable"
CRASH = "crash"
TIMEOUT = "timeout"
PREEMPTED = "preempted"
INTERRUPTED = "interrupted"
IO = "io"
ERROR = "error"

#: Category -> what to change before running again (``{stage}`` is the stage's name).
#: Only deterministic failures are here: resuming would fail the same way.
ADVICE: dict[str, str] = {
    GATE: "the gate failed: change the model or the gate, then run again",
    VALIDATION: "fix the data, or set `on_error: quarantine` on stage {stage} to set bad rows aside, then run again",
    MISSING_INPUT: "an input is missing: create it or fix its path, then run again",
    DATA: "fix the input data or stage {stage} (its params or function), then run again",
    CONFIG: "fix the pipeline file (or what it names), then run again",
    STAGE: "fix stage {stage} (its code or params), then run again",
    UNSCHEDULABLE: "stage {stage} can never fit the cluster: lower its resources or add nodes, then run again",
}
DETERMINISTIC = frozenset(ADVICE)
CATEGORIES = (*ADVICE, CRASH, TIMEOUT, PREEMPTED, INTERRUPTED, IO, ERROR)

#: Exception class names (looked up along the class's MRO, most derived first) -> category.
#: Names, not classes: the same table classifies a live exception and a stored record.
_BY_TYPE: dict[str, str] = {
    "GateFailed": GATE,
    "ValidationFailed": VALIDATION,
    "InputNotFound": MISSING_INPUT,
    "FileNotFoundError": MISSING_INPUT,
    "ConfigError": CONFIG,
    "ModelNotFoundError": CONFIG,
    "RunNotFoundError": CONFIG,
    "DataError": DATA,
    "StagePreempted": PREEMPTED,
    "PickleRefused": CONFIG,  # the stage needs `pickle: true`: running again fails the same way
    "StorageError": IO,
    "StageError": STAGE,
    "RaypipeError": STAGE,
    "UserCodeException": ERROR,  # Ray Data's wrapper of an exception of the user's function
    "RayTaskError": ERROR,  # a task's own exception (when Ray could not keep it as its cause)
    "ExecutionTimeoutError": TIMEOUT,  # Ray Data made no progress
    "TimeoutError": TIMEOUT,
    "OSError": IO,
    "MemoryError": CRASH,
    "RayError": CRASH,  # a worker, actor or node died, an object was lost (not a task's own error)
}

#: A stage run's status -> category, for failures recorded without an exception.
_BY_STATUS = {
    "timeout": TIMEOUT,
    "rejected": UNSCHEDULABLE,
    "interrupted": INTERRUPTED,
    "stopped": INTERRUPTED,
    "preempted": PREEMPTED,
    "lost": CRASH,
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b")
_MARK = re.compile(r"\n\n--- raypipe failure: ([a-z_]+) ---\n?")
#: The first line of Ray's text of a task's error: ``ray::NAME() (pid=N, ip=A)``.
_RAY_HEADER = re.compile(r"^\S*\(\) \(pid=\d+, ip=", re.MULTILINE)
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?:: ?(.*))?$", re.DOTALL)
#: Characters kept of a message (the start) and of a traceback (the end).
MAX_MESSAGE = 20_000
MAX_TRACEBACK = 20_000


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes."""
    return _ANSI.sub("", text)


def _is_ray_task_error(exc: BaseException) -> bool:
    return any(c.__name__ == "RayTaskError" for c in type(exc).__mro__)


def user_exception(exc: BaseException) -> BaseException:
    """The exception the stage raised: inside Ray's ``RayTaskError`` (nested ones too), its ``cause``."""
    for _ in range(10):
        cause = getattr(exc, "cause", None)
        if not (_is_ray_task_error(exc) and isinstance(cause, BaseException)) or cause is exc:
            break
        exc = cause
    return exc


def classify(exc: BaseException) -> str:
    """The category of a failure from its exception (see the module docstring)."""
    err = user_exception(exc)
    for cls in type(err).__mro__:
        if cls.__name__ in _BY_TYPE:
            return _BY_TYPE[cls.__name__]
    return ERROR


def is_system_failure(exc: BaseException) -> bool:
    """A worker, node or object lost, a stalled execution: not the data's or the code's fault.
    A stage that turns its library's errors into a ``DataError`` passes these on as they are."""
    return classify(exc) in (CRASH, TIMEOUT)


def is_deterministic(category: str) -> bool:
    return category in DETERMINISTIC


def retryable(exc: BaseException) -> bool:
    """Whether another attempt may pass: not for a deterministic failure (a missed gate,
    a failed validation, a bad config...)."""
    return not is_deterministic(classify(exc))


def _from_traceback(text: str) -> tuple[str, str] | None:
    """``(type name, message)`` of the exception that ends a Python (or Ray) traceback."""
    if "Traceback (most recent call last):" not in text and _RAY_HEADER.search(text) is None:
        return None
    lines = text.splitlines()
    last = max((i for i, line in enumerate(lines) if line.startswith('  File "')), default=None)
    if last is None:
        return None
    i = last + 1
    while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
        i += 1
    m = _EXC_LINE.match("\n".join(lines[i:]).strip())
    if m is None:
        return None
    return m.group(1).rsplit(".", 1)[-1], (m.group(2) or "").strip()


def clean_text(text: str) -> str:
    """A message fit for the console: no colour codes, and for a traceback (Ray's, say)
    only the exception it ends with (``DataError: ...``)."""
    text = strip_ansi(text).strip()
    found = _from_traceback(text)
    if found is None:
        return text
    name, message = found
    return f"{name}: {message}" if message else name


def message(exc: BaseException) -> str:
    """The user's exception as the user should read it: ``DataError: input 'data' failed
    validation: ...`` and, on the next lines, the rest of its message (a report)."""
    err = user_exception(exc)
    text = clean_text(str(err)) if str(err).strip() else ""
    name = getattr(type(err), "shown_as", None) or type(err).__name__
    out = f"{name}: {text}" if text and not text.startswith(f"{name}:") else (text or name)
    if len(out) > MAX_MESSAGE:
        out = out[:MAX_MESSAGE] + f"\n... ({len(out) - MAX_MESSAGE:,} more characters)"
    return out


def short(exc: BaseException) -> str:
    """The first line of :func:`message`: what a progress line or a run's summary shows."""
    return message(exc).splitlines()[0]


def traceback_of(exc: BaseException) -> str:
    """The traceback where the user's exception was raised (for Ray tasks, on the worker)."""
    if _is_ray_task_error(exc):  # Ray's text: the worker's traceback, not the driver's ray.get
        text = str(exc)
    else:
        text = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
    return strip_ansi(text).strip()[-MAX_TRACEBACK:]


def encode(text: str, category: str, traceback: str | None = None) -> str:
    """What ``stage_runs.error`` holds: the clean message, the category's marker, the traceback."""
    return f"{text}\n\n--- raypipe failure: {category} ---" + (f"\n{traceback}" if traceback else "")


def record(exc: BaseException) -> str:
    """``stage_runs.error`` for a stage run that raised ``exc``."""
    return encode(message(exc), classify(exc), traceback_of(exc))


@dataclass(frozen=True)
class Failure:
    """A failed stage run as the user reads it."""

    message: str
    category: str
    traceback: str | None = None

    @property
    def deterministic(self) -> bool:
        return is_deterministic(self.category)

    @property
    def summary(self) -> str:
        lines = self.message.splitlines()
        return lines[0] if lines else ""

    def advice(self, stage: str) -> str | None:
        """What to change before running again; None when ``resume`` may pass."""
        text = ADVICE.get(self.category)
        return text.format(stage=stage) if text else None

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "error_category": self.category, "traceback": self.traceback}


def _legacy_category(name: str, text: str) -> str:
    """The category of a record stored before categories were (from its exception's name)."""
    if name == "DataError" and " failed validation: " in text:
        return VALIDATION
    if name == "DataError" and text.startswith("path not found"):
        return MISSING_INPUT
    return _BY_TYPE.get(name, ERROR)


def parse(status: str, stored: str | None) -> Failure | None:
    """The failure of a stage run from its status and ``stage_runs.error``; None when it did
    not fail (a skipped stage, whose upstream stage failed, did not fail itself)."""
    if status in ("succeeded", "cached", "running", "queued") or not stored:
        return None
    m = _MARK.search(stored)
    if m is not None:
        tb = stored[m.end() :].strip() or None
        return Failure(stored[: m.start()].strip(), m.group(1), tb)
    if status == "skipped":
        return None
    raw = strip_ansi(stored).strip()
    found = _from_traceback(raw)
    if found is not None:
        name, text = found
        category = _BY_STATUS.get(status) or _legacy_category(name, text)
        return Failure(f"{name}: {text}" if text else name, category, raw[-MAX_TRACEBACK:])
    head = _EXC_LINE.match(raw)
    name = head.group(1).rsplit(".", 1)[-1] if head and head.group(2) is not None else ""
    category = _BY_STATUS.get(status) or (_legacy_category(name, head.group(2) or "") if head and name else ERROR)
    return Failure(raw, category)


class _StageRun(Protocol):
    @property
    def stage(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...


def stage_failures(stage_runs: Iterable[_StageRun]) -> dict[str, Failure]:
    """Stage -> the failure of its latest run, for the stages of a run that did not finish
    (the runs in order, as the metadata store lists them)."""
    latest: dict[str, _StageRun] = {}
    for sr in stage_runs:
        latest[sr.stage] = sr
    out: dict[str, Failure] = {}
    for name, sr in latest.items():
        failure = parse(sr.status, sr.error)
        if failure is not None:
            out[name] = failure
    return out


def next_step(failures: Mapping[str, Failure], run_id: str, rerun: str | None) -> str:
    """The last line after a failed run: resume when every failure may pass on another
    attempt, else run again (after the change each deterministic failure names)."""
    if failures and any(f.deterministic for f in failures.values()):
        how = f": {rerun}" if rerun else ""
        return f"resuming would fail the same way; after the change, run it again{how}"
    return f"continue it with: raypipe resume {run_id}"
