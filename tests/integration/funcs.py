"""Stage functions for integration tests; Ray workers import them by name."""

from __future__ import annotations

import os
import time
from pathlib import Path


def make(n: int = 3) -> dict:
    return {"out": list(range(n))}


def add(x: list, k: int = 1) -> dict:
    return {"out": [v + k for v in x]}


def total(x: list) -> dict:
    return {"sum": sum(x)}


def boom(message: str = "kaboom") -> dict:
    raise ValueError(message)


def flaky(counter: str, fail_times: int = 2) -> dict:
    """Fails ``fail_times`` times (counted in a file), then succeeds."""
    p = Path(counter)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < fail_times:
        raise RuntimeError(f"flaky failure {n + 1}")
    return {"attempts": n + 1}


def slow(seconds: float = 30.0, started: str = "", gate: str = "") -> dict:
    """Writes ``started``, then sleeps while the file ``gate`` exists (up to ``seconds``)."""
    if started:
        Path(started).write_text(str(os.getpid()))
    deadline = time.time() + seconds
    while time.time() < deadline and (not gate or Path(gate).exists()):
        time.sleep(0.05)
    return {"done": True}


def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}
