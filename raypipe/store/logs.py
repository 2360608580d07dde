"""Stage attempt logs kept with the run: ``logs/RUN/STAGE/ATTEMPT.log`` under the storage root.

A stage attempt writes its log on the worker while it runs (:mod:`raypipe.runner.stage_log`):
in place on a local storage root (a path every node shares), else in the worker's temporary
folder, uploaded through the root's ``pyarrow.fs`` filesystem when the attempt ends,
succeeded or failed (:func:`publish`).  Readers (``raypipe logs``, ``raypipe ui``) go through
:func:`read_log`, which also finds the layout of earlier versions
(``logs/RUN/STAGE.ATTEMPT.log``).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from raypipe.exceptions import StorageError
from raypipe.store.objects import is_local

LOGS = "logs"
#: A run id or stage name that can name a folder (no separator, not ``.`` or ``..``).
_SAFE_PART = re.compile(r"^(?!\.\.?$)[^/\\\x00]+$")


def check_parts(run_id: str, stage: str, attempt: int) -> None:
    """A StorageError unless the run id, stage and attempt name one file under ``logs/``."""
    if not (_SAFE_PART.match(run_id) and _SAFE_PART.match(stage)) or attempt < 1:
        raise StorageError(f"no log: run {run_id!r}, stage {stage!r}, attempt {attempt} cannot name a log file")


def log_rel(run_id: str, stage: str, attempt: int) -> str:
    """The log's path under the storage root."""
    check_parts(run_id, stage, attempt)
    return f"{LOGS}/{run_id}/{stage}/{attempt}.log"


def _legacy_rel(run_id: str, stage: str, attempt: int) -> str:
    return f"{LOGS}/{run_id}/{stage}.{attempt}.log"


def local_log_path(storage: str, run_id: str, stage: str, attempt: int) -> Path:
    """Where the attempt writes its log while it runs: in place on a local root, else under the
    worker's temporary folder (``<tmp>/raypipe/logs/...``; :func:`publish` uploads it)."""
    root = Path(storage) if is_local(storage) else Path(tempfile.gettempdir()) / "raypipe"
    return root / log_rel(run_id, stage, attempt)


def log_location(storage: str, run_id: str, stage: str, attempt: int) -> str:
    """The log's path (local root) or URI (object store), as people are shown it."""
    rel = log_rel(run_id, stage, attempt)
    return str(Path(storage) / rel) if is_local(storage) else f"{storage.rstrip('/')}/{rel}"


def _fs(storage: str) -> tuple[pafs.FileSystem, str]:
    try:
        if is_local(storage):
            return pafs.LocalFileSystem(), os.path.abspath(storage)
        fs, base = pafs.FileSystem.from_uri(storage)
        return fs, base
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise StorageError(f"storage {storage!r}: cannot open: {e}") from None


def publish(storage: str, run_id: str, stage: str, attempt: int, local: Path) -> str | None:
    """Put the attempt's log where readers find it: nothing to do on a local root; on an object
    store, upload ``local`` (after what the store holds of the attempt already: one requeued
    after a preemption writes on) and remove it.  Returns the stored location, or None when
    ``local`` does not exist.  Raises StorageError when the upload fails (the local file is kept)."""
    if is_local(storage):
        return str(local) if local.exists() else None
    if not local.exists():
        return None
    fs, base = _fs(storage)
    path = f"{base.rstrip('/')}/{log_rel(run_id, stage, attempt)}"
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        before = b""
        if fs.get_file_info(path).type == pafs.FileType.File:  # object stores cannot append
            with fs.open_input_stream(path) as f:
                before = f.read()
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            dst.write(before)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise StorageError(f"cannot upload the log {local} to {storage}: {e}") from None
    local.unlink(missing_ok=True)
    return log_location(storage, run_id, stage, attempt)


def note_killed(storage: str, run_id: str, stage: str, attempt: int, why: str) -> bool:
    """End the attempt's log with the runner's word on why it killed the attempt's task (the
    task could not write its own end).  Never raises: False when it could not be kept."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"===== {stamp} killed by the runner: {why} (its last output may be only in Ray's worker logs)\n"
    try:
        if is_local(storage):
            path = local_log_path(storage, run_id, stage, attempt)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
            return True
        with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False, encoding="utf-8") as tmp:
            tmp.write(text)
        publish(storage, run_id, stage, attempt, Path(tmp.name))  # appended to what the store holds
        return True
    except Exception:  # noqa: BLE001 - the run's outcome never depends on its log
        return False


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a log from ``offset`` (``data``), the file's ``size`` and where it is."""

    location: str
    size: int
    offset: int
    data: bytes


def read_log(
    storage: str, run_id: str, stage: str, attempt: int, offset: int = 0, limit: int | None = None
) -> LogChunk:
    """Up to ``limit`` bytes of an attempt's log from ``offset`` (a negative offset counts from
    the end).  FileNotFoundError when the store holds no such log (yet: a running attempt on an
    object store keeps its log on the worker until it ends); StorageError when it cannot be read."""
    fs, base = _fs(storage)
    for rel in (log_rel(run_id, stage, attempt), _legacy_rel(run_id, stage, attempt)):
        path = f"{base.rstrip('/')}/{rel}"
        try:
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                continue
            size = int(info.size or 0)
            start = max(0, size + offset) if offset < 0 else min(offset, size)
            with fs.open_input_file(path) as f:
                f.seek(start)
                data = f.read(size - start if limit is None else min(limit, size - start))
        except FileNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
            raise StorageError(f"cannot read the log {path}: {e}") from None
        location = path if is_local(storage) else f"{storage.rstrip('/')}/{rel}"
        return LogChunk(location, size, start, bytes(data))
    raise FileNotFoundError(log_location(storage, run_id, stage, attempt))


def logged_attempts(storage: str, run_id: str, stage: str) -> list[int]:
    """The attempts of a stage whose log the store holds, in order."""
    check_parts(run_id, stage, 1)
    fs, base = _fs(storage)
    found: set[int] = set()
    run_dir = f"{base.rstrip('/')}/{LOGS}/{run_id}"
    try:
        for info in fs.get_file_info(pafs.FileSelector(f"{run_dir}/{stage}", allow_not_found=True)):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(".log") and name[:-4].isdigit():
                found.add(int(name[:-4]))
        for info in fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True)):
            head, _, tail = info.base_name.rpartition(".log")[0].rpartition(".")
            if info.type == pafs.FileType.File and head == stage and tail.isdigit():
                found.add(int(tail))
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise StorageError(f"cannot list the logs under {run_dir}: {e}") from None
    return sorted(found)
