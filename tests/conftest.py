"""Shared fixtures.  One local Ray per test session for integration and e2e tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_local() -> Iterator[str]:
    """A local Ray with 2 CPUs shared by every test that asks for it; yields its address."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def wait_for(
    cond: Callable[[], object], timeout_s: float = 60.0, every_s: float = 0.1, what: str = "condition"
) -> object:
    """Poll ``cond`` until it returns something truthy (Ray's wait_for_condition, returning the value)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
