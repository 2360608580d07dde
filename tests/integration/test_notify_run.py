"""Notifications from a real run on a local Ray: a signed `run_failed` reaches a local HTTP
receiver, while a dead receiver and one that never answers do not hold the run back beyond
the flush bound."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import raypipe
from raypipe.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.unit.test_notify import SECRET, Receiver, _closed_port, hook

pytestmark = pytest.mark.usefixtures("ray_local")

F = "tests.integration.funcs"


def test_a_failed_run_notifies_and_dead_receivers_do_not_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("RAYPIPE_NOTIFY_FLUSH_S", "1")
    good = Receiver()
    hold = threading.Event()
    stuck = Receiver(hold=hold)  # accepts, then never answers (until the test ends)
    try:
        cfg = raypipe.PipelineConfig(
            name="notified",
            storage=str(tmp_path / "store"),
            stages=[
                raypipe.StageConfig(name="a", kind="python", params={"function": f"{F}:make", "args": {"n": 2}}),
                raypipe.StageConfig(
                    name="b", kind="python", depends_on=["a"], params={"function": f"{F}:boom", "args": {}}
                ),
            ],
            notify=[
                hook(f"http://127.0.0.1:{_closed_port()}/dead", retries=5, backoff_s=600),
                hook(stuck.url, retries=0),
                hook(good.url, events=["run_failed", "run_succeeded"]),
            ],
        )
        result = raypipe.run(cfg)
        assert not result.ok and "b" in result.errors
        # the run is back while the stuck receiver still holds its request
        assert stuck.entered.is_set() and not hold.is_set() and stuck.requests == []
        [(headers, body)] = good.wait_for(1)
        assert verify(SECRET, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
        doc = json.loads(body)
        assert doc["event"] == "run_failed" and doc["detail"]["run_id"] == result.run_id
        assert "kaboom" in doc["text"] and doc["detail"]["errors"].keys() == {"b"}
    finally:
        good.close()
        stuck.close()
