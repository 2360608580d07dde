"""Stored bytes are checked against their SHA-256 when they are read.

Every object of the artifact store is named by the SHA-256 of its bytes, and every
file of a stored dataset has its SHA-256 in the dataset's manifest: a reader hashes
what it reads (streaming, in chunks) and refuses content that does not match
(:func:`mismatch`) instead of deserializing it.

Hashing a local file is cached per process by the file's identity: its path, device,
inode, size, and modification and change times (ns).  Rewriting a file changes its
change time (which no program can set back), so a cached digest never describes other
bytes; reading the same unchanged file again costs one ``stat``.  Remote objects are
cached by URI, size and modification time (an overwrite changes it).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Any

from raypipe.exceptions import StorageError

CHUNK = 1 << 20
#: Digests remembered per process (least recently used dropped first).
CACHE_SIZE = 4096

_cache: OrderedDict[tuple[Any, ...], str] = OrderedDict()
_lock = threading.Lock()


def mismatch(uri: str, detail: str = "") -> StorageError:
    """The error of bytes that do not hash to their recorded SHA-256."""
    where = f" ({detail})" if detail else ""
    return StorageError(f"artifact {uri!r}{where}: content does not match its sha256 (tampered or corrupted)")


def sha256_file(path: str) -> str:
    """The SHA-256 of a local file, read in chunks (never cached)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _local_key(path: str) -> tuple[Any, ...]:
    st = os.stat(path)
    return ("file", os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _get(key: tuple[Any, ...]) -> str | None:
    with _lock:
        digest = _cache.get(key)
        if digest is not None:
            _cache.move_to_end(key)
        return digest


def _put(key: tuple[Any, ...], digest: str) -> None:
    with _lock:
        _cache[key] = digest
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def file_digest(path: str) -> str:
    """The SHA-256 of a local file, hashed once per process while the file is unchanged."""
    key = _local_key(path)
    digest = _get(key)
    if digest is None:
        digest = sha256_file(path)
        if _local_key(path) == key:  # unchanged while it was hashed
            _put(key, digest)
    return digest


def remember(path: str, digest: str) -> None:
    """Record the digest of a local file this process just wrote or verified."""
    _put(_local_key(path), digest)


def remote_digest(fs: Any, path: str, uri: str, size: int, mtime_ns: int | None) -> str:
    """The SHA-256 of a file on a ``pyarrow.fs`` filesystem, read as a stream; cached per
    process by ``uri``, size and modification time (when the filesystem reports one)."""
    key = ("remote", uri, size, mtime_ns)
    digest = _get(key) if mtime_ns is not None else None
    if digest is None:
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        if mtime_ns is not None:
            _put(key, digest)
    return digest


def verify_file(path: str, expected: str, uri: str, detail: str = "") -> None:
    """Raise :func:`mismatch` unless the local file at ``path`` hashes to ``expected``."""
    if file_digest(path) != expected:
        raise mismatch(uri, detail)


def verify_bytes(data: Any, expected: str, uri: str, detail: str = "") -> None:
    """Raise :func:`mismatch` unless ``data`` (bytes or any buffer) hashes to ``expected``."""
    if hashlib.sha256(data).hexdigest() != expected:
        raise mismatch(uri, detail)


class HashingWriter:
    """A writable file object that hashes and counts what goes through it to ``raw`` (e.g. a
    ``pyarrow.fs`` output stream): a file is hashed as it is written, not read back."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:  # the caller closes ``raw``
        self.closed = True

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def clear_cache() -> None:
    """Forget every remembered digest (tests)."""
    with _lock:
        _cache.clear()


__all__ = [
    "HashingWriter",
    "clear_cache",
    "file_digest",
    "mismatch",
    "remember",
    "remote_digest",
    "sha256_file",
    "verify_bytes",
    "verify_file",
]
