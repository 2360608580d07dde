"""Unit tests run without Ray: any attempt to start or join Ray fails the test."""

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import ray
    except ImportError:  # pragma: no cover
        return

    def _no(*a: object, **k: object) -> None:
        raise RuntimeError("unit tests must not call ray.init; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", _no)
