"""Stores and writer processes for test_claims.py (no Ray).

``python -m tests.unit.claim_funcs WHAT ARGS...`` runs one writer: it prepares its work,
waits for the file ``go`` (so several start together), then claims and writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

ROWS = 600
#: An object of a few MB: its upload takes a while.
BLOB = bytes(range(256)) * 20000


class Wrapped:
    """The local filesystem seen through a hook (``hook(op, path)`` before each move and output
    stream) and, with ``local=False``, as an object store: ``type_name`` is not ``local``, so
    the store takes its object-store paths (advisory claims, files moved in one by one, the
    manifest written last) on real files that several processes share."""

    def __init__(self, local: bool, hook: Callable[[str, str], None] | None = None) -> None:
        self.real = pafs.LocalFileSystem()
        self.hook = hook
        self.type_name = "local" if local else "objectstore"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def move(self, src: str, dst: str) -> None:
        if self.hook is not None:
            self.hook("move", dst)
        self.real.move(src, dst)

    def open_output_stream(self, path: str, *a: Any, **kw: Any) -> Any:
        if self.hook is not None:
            self.hook("write", path)
        return self.real.open_output_stream(path, *a, **kw)


def make_store(kind: str, folder: str | Path, hook: Callable[[str, str], None] | None = None) -> Any:
    """An artifact store on ``folder``: ``local`` (a path) or ``object-store`` (a ``file://``
    root read and written through a filesystem that is not local)."""
    from raypipe.store.artifacts import ArtifactStore

    store = ArtifactStore(str(folder) if kind == "local" else f"file://{folder}")
    store.fs = Wrapped(kind == "local", hook)  # type: ignore[assignment]
    return store


def table() -> pa.Table:
    return pa.table({"x": np.arange(ROWS), "y": [f"r{i}" for i in range(ROWS)]})


def stage_parts(store: Any, step: int) -> tuple[Any, list[dict[str, Any]]]:
    """The same rows split in blocks of ``step``: the same version, other files."""
    from raypipe.store.datasets import StagedDataset, part_stats

    staged = StagedDataset(store)
    t = table()
    return staged, [part_stats(t.slice(i, step), store.root, staged.staging) for i in range(0, ROWS, step)]


def _exit_at(crash: str) -> Callable[[str, str], None] | None:
    """A hook that kills the process: ``publish`` before the step that makes a dataset
    finished, ``second-part`` as the second file moves into ``datasets/`` (the first is
    there), ``upload`` as an object's upload begins."""
    moved: list[str] = []

    def hook(op: str, path: str) -> None:
        if crash == "publish" and "/datasets/" in path and (op == "move" or "_manifest" in path):
            os._exit(9)
        if crash == "second-part" and op == "move" and "/datasets/" in path:
            moved.append(path)
            if len(moved) == 2:
                os._exit(9)
        if crash == "upload" and op == "write" and "/tmp/" in path:
            os._exit(9)

    return None if crash == "no" else hook


def _wait_for(go: Path) -> None:
    while not go.exists():
        time.sleep(0.002)


def write_dataset(kind: str, folder: str, go: str, step: str, crash: str) -> None:
    from raypipe.store import claims

    store = make_store(kind, folder, _exit_at(crash))
    staged, stats = stage_parts(store, int(step))
    _wait_for(Path(go))
    with claims.owner(f"run-{os.getpid()}", "data", 1):
        try:
            ref = staged.commit(stats, pa.schema([]))
        finally:
            staged.discard()
    print(json.dumps(ref.to_dict()))


def put_object(kind: str, folder: str, go: str, crash: str) -> None:
    store = make_store(kind, folder, _exit_at(crash))
    _wait_for(Path(go))
    print(json.dumps(store.put_value(BLOB).to_dict()))


def exclusive(kind: str, folder: str, go: str, log: str, rounds: str) -> None:
    """Hold the claim ``k`` ``rounds`` times, writing ``enter PID`` and ``exit PID`` to ``log``."""
    from raypipe.store import claims

    fs = make_store(kind, folder).fs
    _wait_for(Path(go))
    for _ in range(int(rounds)):
        with claims.owner(f"run-{os.getpid()}"), claims.claim(fs, folder, "k", "k", stale_s_=60):
            fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            os.write(fd, f"enter {os.getpid()}\n".encode())
            time.sleep(0.01)
            os.write(fd, f"exit {os.getpid()}\n".encode())
            os.close(fd)


def die_holding(kind: str, folder: str, key: str) -> None:
    """Claim ``key`` and exit without releasing it."""
    from raypipe.store import claims

    with claims.owner("dead-run", "data"):
        held = claims.claim(make_store(kind, folder).fs, folder, key, "x")
        held.__enter__()  # kept referenced: never released
        os._exit(0)


if __name__ == "__main__":
    {"write_dataset": write_dataset, "put_object": put_object, "exclusive": exclusive, "die_holding": die_holding}[
        sys.argv[1]
    ](*sys.argv[2:])
