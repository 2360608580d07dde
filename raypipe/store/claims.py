"""Claims: one writer at a time for a content-addressed path of the artifact store.

Two runs of one pipeline compute the same objects and datasets, so they write the same
``objects/<sha>.<ext>`` and ``datasets/<version>/`` at once.  Before a writer puts
anything at such a path it *claims* it (:func:`claim`); the claim lives at
``claims/<kind>-<name>.claim`` under the root and says who holds it: the run, stage
and attempt (:func:`owner`), the process id, the host and when.

- **Atomic.**  On a local root (a path or ``file://``) the claim's JSON is written to a
  temporary file, then hard-linked to the claim's name: ``link`` fails when the name
  exists, so one writer wins and the claim is complete when it appears
  (``O_CREAT | O_EXCL`` where hard links are not supported).
- **Alive.**  The holder touches the claim every ``stale_s / 6`` seconds (a heartbeat,
  through its own file descriptor, so never someone else's claim).
- **Waiting.**  Another writer waits, logging who holds it (again every 30 s), takes
  the claim once it is released, and then finds the path finished and reuses it.  It
  gives up after ``RAYPIPE_CLAIM_WAIT_S`` (default 600 s) with an error naming the holder.
- **Stale.**  A claim whose process is gone (the same host: host name, boot id and
  process-id namespace; then the process id is checked) or whose heartbeat is older
  than ``RAYPIPE_CLAIM_STALE_S`` (default 120 s) is taken over: renamed aside (one
  taker wins the rename), checked to be the claim judged stale (else put back) and
  deleted; then claimed as usual.  The new holder may replace what the dead writer left.
- **Released** by the holder (the context manager), only while the claim is its own.

On an object store (``s3://``, ``gs://``...) ``pyarrow.fs`` offers no exclusive create:
the claim is written when absent and read back, which keeps writers apart in practice
but not atomically.  What they write stays correct without it: parts and uploads have
unique names, nothing at a final path is ever deleted there, and a dataset's manifest
(one object, written last) lists only its writer's files.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

from raypipe.exceptions import StorageError

log = logging.getLogger("raypipe.store")

#: The folder of claims under the storage root.
CLAIMS = "claims"
#: How long a writer waits for another's claim (seconds; ``RAYPIPE_CLAIM_WAIT_S``).
WAIT_S = 600.0
#: A claim whose heartbeat is older than this is stale (seconds; ``RAYPIPE_CLAIM_STALE_S``).
STALE_S = 120.0
#: A waiting writer says again who holds the claim this often (seconds).
NOTICE_S = 30.0


class ClaimError(StorageError):
    """A claim could not be made or was lost: the message names the path and its holder."""

    shown_as = "StorageError"


_OWNER: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("raypipe_claim_owner", default=None)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"${name}: got {raw!r}; expected a number of seconds") from None
    if value <= 0:
        raise StorageError(f"${name}: got {raw!r}; expected a number of seconds > 0")
    return value


def wait_s() -> float:
    return _env_seconds("RAYPIPE_CLAIM_WAIT_S", WAIT_S)


def stale_s() -> float:
    return _env_seconds("RAYPIPE_CLAIM_STALE_S", STALE_S)


@contextmanager
def owner(run_id: str | None, stage: str | None = None, attempt: int | None = None) -> Iterator[None]:
    """While inside, claims made by this thread name this run, stage and attempt."""
    token = _OWNER.set({"run_id": run_id, "stage": stage, "attempt": attempt})
    try:
        yield
    finally:
        _OWNER.reset(token)


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This machine and process-id namespace: the host name, the kernel's boot id and the
    pid namespace (containers on one host share a name but not their process ids)."""

    def read(path: str) -> str:
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip()
        except OSError:
            return ""

    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    return f"{os.uname().nodename}|{read('/proc/sys/kernel/random/boot_id')}|{pidns}"


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this machine (a claimer, a run's driver)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a claim (the claim file's JSON)."""

    token: str
    pid: int
    host: str
    host_id: str
    since: float
    run_id: str | None = None
    stage: str | None = None
    attempt: int | None = None

    @classmethod
    def me(cls) -> Holder:
        who = _OWNER.get() or {}
        return cls(
            token=uuid.uuid4().hex,
            pid=os.getpid(),
            host=os.uname().nodename,
            host_id=host_id(),
            since=time.time(),
            run_id=who.get("run_id"),
            stage=who.get("stage"),
            attempt=who.get("attempt"),
        )

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            d = json.loads(data)
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (ValueError, TypeError, KeyError):
            return None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def describe(self) -> str:
        if self.run_id:
            who = f"run {self.run_id}"
            if self.stage:
                who += f", stage {self.stage!r}" + (f" attempt {self.attempt}" if self.attempt else "")
        else:
            who = "a process"
        return f"{who} (pid {self.pid} on {self.host}, claimed {max(0.0, time.time() - self.since):.0f}s ago)"

    def dead(self) -> bool:
        """Known to be gone: its process ran on this host and is not alive."""
        return self.host_id == host_id() and not pid_alive(self.pid)


@dataclass(frozen=True)
class Seen:
    """A claim as read: its holder (None: unreadable), the age of its heartbeat, its identity."""

    holder: Holder | None
    age_s: float
    ident: Any


# ----------------------------------------------------------------------------- where claims live
class _LocalClaims:
    """Claims on a local filesystem: hard links (or ``O_EXCL``), renames, ``futimens``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def create(self, path: str, holder: Holder) -> int | None:
        """The claim's open descriptor if this call created it, else None (it exists)."""
        os.makedirs(self.folder, exist_ok=True)
        tmp = f"{path}.{holder.token}.tmp"
        with open(tmp, "wb") as f:
            f.write(holder.to_bytes())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                os.close(fd)
                return None
            except OSError:  # no hard links here: an exclusive create instead
                os.close(fd)
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return None
                os.write(fd, holder.to_bytes())
            return fd
        finally:
            os.unlink(tmp)

    def read(self, path: str) -> Seen | None:
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return Seen(Holder.parse(data), time.time() - st.st_mtime, (st.st_dev, st.st_ino))

    def take_over(self, path: str, seen: Seen) -> bool:
        """Remove the claim judged stale; False if it was released or replaced meanwhile."""
        aside = f"{path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)  # one taker wins
        except FileNotFoundError:
            return False
        st = os.stat(aside)
        if (st.st_dev, st.st_ino) != seen.ident:  # a fresh claim made after we looked: put it back
            try:
                os.link(aside, path)
            except OSError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def is_ours(self, path: str, fd: int) -> bool:
        try:
            st, mine = os.stat(path), os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def beat(self, path: str, fd: int) -> None:
        if os.utime in os.supports_fd:
            os.utime(fd)
        elif self.is_ours(path, fd):
            os.utime(path)

    def remove(self, path: str, fd: int) -> None:
        try:
            if self.is_ours(path, fd):
                os.unlink(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


class _RemoteClaims:
    """Claims on an object store: written when absent and read back (advisory)."""

    #: How long a new claim settles before it is read back (a concurrent writer's shows).
    SETTLE_S = 0.2

    def __init__(self, fs: pafs.FileSystem, folder: str) -> None:
        self.fs, self.folder = fs, folder

    def _write(self, path: str, holder: Holder) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(holder.to_bytes())

    def create(self, path: str, holder: Holder) -> str | None:
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            return None
        self.fs.create_dir(self.folder, recursive=True)
        self._write(path, holder)
        time.sleep(self.SETTLE_S)
        seen = self.read(path)
        return (
            holder.token if seen is not None and seen.holder is not None and seen.holder.token == holder.token else None
        )

    def read(self, path: str) -> Seen | None:
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        try:
            with self.fs.open_input_stream(path) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        age = time.time() - info.mtime.timestamp() if info.mtime is not None else 0.0
        holder = Holder.parse(data)
        return Seen(holder, age, holder.token if holder is not None else data)

    def take_over(self, path: str, seen: Seen) -> bool:
        now = self.read(path)
        if now is None or now.ident != seen.ident:
            return False
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            return False
        return True

    def is_ours(self, path: str, token: str) -> bool:
        try:
            seen = self.read(path)
        except OSError:
            return False
        return seen is not None and seen.holder is not None and seen.holder.token == token

    def beat(self, path: str, token: str) -> None:
        seen = self.read(path)
        if seen is not None and seen.holder is not None and seen.holder.token == token:
            self._write(path, seen.holder)

    def remove(self, path: str, token: str) -> None:
        if self.is_ours(path, token):
            try:
                self.fs.delete_file(path)
            except FileNotFoundError:
                pass


def is_local_fs(fs: Any) -> bool:
    """Whether ``fs`` is this machine's filesystem (paths are OS paths: links and renames work)."""
    return isinstance(fs, pafs.LocalFileSystem) or getattr(fs, "type_name", "") == "local"


def _claims_of(fs: pafs.FileSystem, root_path: str) -> _LocalClaims | _RemoteClaims:
    folder = f"{root_path.rstrip('/')}/{CLAIMS}"
    return _LocalClaims(folder) if is_local_fs(fs) else _RemoteClaims(fs, folder)


# ----------------------------------------------------------------------------- the claim
class Claim:
    """A claim this process holds; :meth:`held` tells whether it still does."""

    def __init__(self, where: _LocalClaims | _RemoteClaims, path: str, holder: Holder, handle: Any, beat_s: float):
        self.where, self.path, self.holder = where, path, holder
        self._handle: Any = handle  # the local claim's file descriptor, or the remote claim's token
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(beat_s,), name="raypipe-claim", daemon=True)
        self._beat.start()

    @property
    def token(self) -> str:
        return self.holder.token

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.where.beat(self.path, self._handle)
            except OSError as e:  # the next beat tries again; a long outage makes the claim stale
                log.warning("claim %s: heartbeat failed: %s", self.path, e)

    def held(self) -> bool:
        """Still this process's claim (not taken over as stale)."""
        return self.where.is_ours(self.path, self._handle)

    def check(self, what: str) -> None:
        """Raise a StorageError unless the claim is still held (before a step that publishes)."""
        if not self.held():
            raise ClaimError(
                f"{what}: lost its claim {self.path} (taken over as stale: no heartbeat for "
                f"{stale_s():g}s); not written, so the other writer's stays"
            )

    def release(self) -> None:
        self._stop.set()
        self._beat.join()
        try:
            self.where.remove(self.path, self._handle)
        except OSError as e:
            log.warning("claim %s: not released (%s); it goes stale", self.path, e)


def claim_path(fs: pafs.FileSystem, root_path: str, key: str) -> str:
    """Where the claim of ``key`` (``"datasets-<version>"``, ``"objects-<sha>"``) lives."""
    return f"{_claims_of(fs, root_path).folder}/{key}.claim"


@contextmanager
def claim(
    fs: pafs.FileSystem,
    root_path: str,
    key: str,
    what: str,
    *,
    wait_s_: float | None = None,
    stale_s_: float | None = None,
) -> Iterator[Claim]:
    """Hold the claim of ``key`` under the root at ``root_path`` of ``fs`` while inside:
    wait (at most ``wait_s_``, default :func:`wait_s`) while another writer holds it, take
    it over when stale (``stale_s_``, default :func:`stale_s`).  ``what`` names the path
    in the log line and in errors.  The caller checks, inside, whether the path was
    finished meanwhile (then it reuses it)."""
    wait, stale = wait_s_ if wait_s_ is not None else wait_s(), stale_s_ if stale_s_ is not None else stale_s()
    where = _claims_of(fs, root_path)
    path = claim_path(fs, root_path, key)
    deadline = time.monotonic() + wait
    noticed: float | None = None
    pause = 0.02
    while True:
        holder = Holder.me()
        try:
            handle = where.create(path, holder)
            if handle is not None:
                break
            seen = where.read(path)
            if seen is None:  # released meanwhile
                continue
            if (seen.holder is not None and seen.holder.dead()) or seen.age_s > stale:
                who = seen.holder.describe() if seen.holder is not None else "an unreadable claim"
                if where.take_over(path, seen):
                    log.warning("%s: took over the stale claim of %s (heartbeat %.0fs ago)", what, who, seen.age_s)
                continue
        except OSError as e:
            raise ClaimError(f"{what}: cannot claim {path}: {e}") from None
        now = time.monotonic()
        who = seen.holder.describe() if seen.holder is not None else "a claim being written"
        if now >= deadline:
            raise ClaimError(
                f"{what}: still claimed by {who} after waiting {wait:g}s ($RAYPIPE_CLAIM_WAIT_S); a claim "
                f"is taken over once its process is gone or after {stale:g}s without a heartbeat "
                f"($RAYPIPE_CLAIM_STALE_S); it is {path}"
            )
        if noticed is None or now - noticed >= NOTICE_S:
            noticed = now
            log.warning("%s: waiting for %s, which is writing it", what, who)
        time.sleep(min(pause, max(0.0, deadline - now)))
        pause = min(pause * 2, 0.5)
    held = Claim(where, path, holder, handle, beat_s=max(0.05, stale / 6))
    try:
        yield held
    finally:
        held.release()


__all__ = [
    "CLAIMS",
    "STALE_S",
    "WAIT_S",
    "Claim",
    "ClaimError",
    "Holder",
    "claim",
    "claim_path",
    "host_id",
    "is_local_fs",
    "owner",
    "stale_s",
    "wait_s",
]
