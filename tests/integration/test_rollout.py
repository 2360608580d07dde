"""Canary rollouts on a real Serve app over HTTP (127.0.0.1): a candidate failing 30% of its
requests is rolled back, a good one is promoted (started from a driver that exits at once),
a trickle of traffic pauses instead of promoting.  Small intervals and minimums keep it
fast; nothing here asserts on time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raypipe import api
from raypipe.serving import app as serve_app
from raypipe.serving.rollout.controller import find_controller
from raypipe.serving.rollout.settings import build_spec
from raypipe.serving.spec import ServeSpec
from raypipe.serving.state import controller_name
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from raypipe.store.rollouts import RolloutStore
from tests.conftest import REPO, free_port, wait_for
from tests.integration.serve_funcs import register_digits, sample_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(ray_local: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Three registered digits MLPs (v1 @production) and one Serve HTTP port for the module."""
    root = tmp_path_factory.mktemp("rollout")
    db = register_digits(root, versions=3)
    yield {"db": db, "port": free_port(), "address": ray_local, "rows": sample_rows(32)}
    from ray import serve

    # The rollout controllers go with the module's Ray (ray_local shuts it down next); Serve is
    # shut down here to drop its cached client too (the next module's Ray may reuse its job id,
    # and a cached client of the same job id is taken for a live one).
    serve.shutdown()


def deploy(env: dict[str, Any], name: str, candidate: int, fail_rate: float = 0.0, mode: str = "auto") -> str:
    """App ``name``: v1 at 100%, ``v<candidate>`` at 0% (``fail_rate`` of its requests answer 500);
    ``mode``: its ``serving.mode`` (the default, auto, colocates these small models)."""
    opts = {"num_cpus": 0.1}
    spec = ServeSpec.model_validate(
        {
            "app": name,
            "model": "digits",
            "variants": [
                {"version": 1, "weight": 100, "ray_actor_options": opts},
                {"version": candidate, "weight": 0, "ray_actor_options": opts, "fail_rate": fail_rate},
            ],
            "key": {"header": "X-User-Id"},
            "port": env["port"],
            "ingress": {"ray_actor_options": {"num_cpus": 0.1}},
            "reserve": False,
            "serving": {"mode": mode},
        }
    )
    st = serve_app.deploy(spec, db=env["db"])
    assert st.mode == ("colocated" if mode == "auto" else mode)
    return st.url


class Traffic:
    """A background thread posting keyed predictions (users u0..u999 round robin), ``pause_s`` apart."""

    def __init__(self, url: str, rows: list[dict[str, float]], pause_s: float = 0.0) -> None:
        self.url, self.rows, self.pause_s = url, rows, pause_s
        self.sent = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            body = json.dumps({"features": self.rows[i % len(self.rows)]}).encode()
            req = urllib.request.Request(
                self.url + "/predict",
                data=body,
                headers={"Content-Type": "application/json", "X-User-Id": f"u{i % 1000}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    r.read()
            except urllib.error.HTTPError:
                self.failed += 1
            except OSError:
                pass
            self.sent += 1
            i += 1
            self.stop.wait(self.pause_s)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def rollout_state(app: str) -> str | None:
    import ray

    handle = find_controller(app)
    st = ray.get(handle.status.remote()) if handle is not None else None
    return st["state"] if st else None


def events(db: str, app: str) -> list[Any]:
    meta = MetadataStore(db)
    try:
        return RolloutStore(meta).events(app)
    finally:
        meta.close()


def production(db: str) -> int:
    meta = MetadataStore(db)
    try:
        return ModelRegistry(meta).get("digits@production").version
    finally:
        meta.close()


@pytest.mark.parametrize("mode", ["colocated", "routed"])
def test_failing_candidate_is_rolled_back(env: dict[str, Any], mode: str) -> None:
    app = f"canary-bad-{mode}"
    url = deploy(env, app, candidate=2, fail_rate=0.3, mode=mode)
    spec = build_spec(
        {
            "app": app,
            "candidate": "v2",
            "steps": [20, 50, 100],
            "interval_s": 1.5,  # the early stop rolls back within the first step anyway
            "guardrails": {"min_requests": 15},
        }
    )
    before = production(env["db"])
    with Traffic(url, env["rows"]) as traffic:
        st = api.rollout_start(spec, db=env["db"])
        assert (st["baseline"], st["candidate"], st["weights"]) == ("v1", "v2", {"v1": 80.0, "v2": 20.0})
        wait_for(lambda: rollout_state(app) == "rolled_back", timeout_s=180, what="the rollback")
    assert traffic.failed > 0
    weights = serve_app.status(app).weights
    assert weights == {"v1": 100.0, "v2": 0.0}
    evs = events(env["db"], app)
    assert [e.event for e in evs][:2] == ["started", "step"] and evs[-1].event == "rolled_back"
    d = evs[-1].detail
    assert d["guardrail"] == "error_rate" and d["weights"] == {"v1": 100.0, "v2": 0.0}
    obs = d["observed"]
    assert obs["candidate"] > obs["baseline"] + 0.02 and obs["candidate_errors"] > 0 and obs["baseline_errors"] == 0
    assert d["allowed"].startswith("candidate - baseline <= 2.00%")
    assert production(env["db"]) == before  # the production alias did not move
    status = api.rollout_status(app, db=env["db"])
    assert status["state"] == "rolled_back" and status["live"]["end_reason"].startswith("error_rate")
    serve_app.shutdown(app)  # its replicas' CPUs for the next tests


def test_good_candidate_is_promoted_by_a_detached_controller(env: dict[str, Any]) -> None:
    url = deploy(env, "canary-good", candidate=3)
    cfg = Path(env["db"]).parent / "canary.yaml"
    cfg.write_text(
        "rollout:\n"
        "  app: canary-good\n"
        "  candidate: digits@candidate\n"  # v3
        "  steps: [20, 50, 100]\n"
        "  interval_s: 1.5\n"  # a step holds (paused) until both variants have min_requests
        "  guardrails:\n"
        "    min_requests: 15\n"
        # p99 of a few dozen requests on a busy 2-CPU test machine: only a gross slowdown counts
        "    p99_latency_ms: {max_ratio: 3, min_increase_ms: 250, min_samples: 15}\n"
    )
    with Traffic(url, env["rows"]):
        # the rollout is started by a CLI driver that exits at once: the controller goes on
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "raypipe.cli",
                "rollout",
                "start",
                "canary-good",
                "--config",
                str(cfg),
                "--db",
                env["db"],
                "--address",
                env["address"],
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert "started rollout" in out.stdout and "v1 -> v3" in out.stdout
        wait_for(lambda: rollout_state("canary-good") in ("promoted", "rolled_back"), timeout_s=240, what="the end")
        report = api.ab_report("canary-good", db=env["db"], min_samples=10, control="v1")
    assert rollout_state("canary-good") == "promoted", events(env["db"], "canary-good")[-1].detail
    assert serve_app.status("canary-good").weights == {"v1": 0.0, "v3": 100.0}
    assert production(env["db"]) == 3
    meta = MetadataStore(env["db"])
    try:
        moved = ModelRegistry(meta).alias_history("digits", "production")[-1]
    finally:
        meta.close()
    assert (moved.old_version, moved.new_version) == (1, 3) and "canary-good" in moved.reason
    names = [e.event for e in events(env["db"], "canary-good") if e.event != "paused"]
    assert names == ["started", "step", "step", "promoted"]
    steps = [e.detail["weights"] for e in events(env["db"], "canary-good") if e.event == "step"]
    assert steps == [{"v1": 80.0, "v3": 20.0}, {"v1": 50.0, "v3": 50.0}]
    promoted = events(env["db"], "canary-good")[-1].detail
    assert (promoted["previous_production"], promoted["production"]) == (1, 3)
    # the A/B report of the same app: both variants, v3 against v1 (the default control is now
    # the production variant, v3)
    labels = [v["label"] for v in report["variants"]]
    assert labels == ["v1", "v3"] and (report["control"], report["comparisons"][0]["b"]) == ("v1", "v3")
    assert report["weights"] == {"v1": 0.0, "v3": 100.0}
    assert report["comparisons"][0]["error_rate"]["value_b"] == 0.0


def test_too_little_traffic_pauses_instead_of_promoting(env: dict[str, Any]) -> None:
    url = deploy(env, "canary-quiet", candidate=2)
    spec = build_spec(
        {
            "app": "canary-quiet",
            "candidate": "v2",
            "baseline": "v1",
            "steps": [20, 100],
            "interval_s": 1,
            "guardrails": {"min_requests": 200},
        }
    )
    before = production(env["db"])
    with Traffic(url, env["rows"], pause_s=0.5):  # a trickle: 2 requests a second at most
        api.rollout_start(spec, db=env["db"])
        wait_for(lambda: rollout_state("canary-quiet") == "paused", timeout_s=120, what="the pause")
        st = api.rollout_status("canary-quiet", db=env["db"])
        assert st["state"] == "paused"
        assert "too little traffic" in st["live"]["last_decision"]["reason"]
        paused = [e for e in st["events"] if e["event"] == "paused"]
        assert "v2 (candidate) has" in paused[0]["detail"]["reason"]
        assert serve_app.status("canary-quiet").weights == {"v1": 80.0, "v2": 20.0}  # held, not promoted
        assert production(env["db"]) == before
        aborted = api.rollout_abort("canary-quiet", reason="not enough users", db=env["db"])
    assert aborted["state"] == "aborted"
    assert serve_app.status("canary-quiet").weights == {"v1": 100.0, "v2": 0.0}
    assert events(env["db"], "canary-quiet")[-1].event == "aborted"
    assert controller_name("canary-quiet") == "raypipe-rollout-canary-quiet"
