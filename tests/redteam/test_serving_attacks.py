"""Red team, serving: the attacks of issue 19 against real apps over HTTP (127.0.0.1), each
of which must fail to do harm.

- **Forced-variant promotion.** On a 5% canary, 300 requests forced to the candidate with
  outcome 1 and 300 forced to the baseline with outcome 0 (the attacker even holds the
  force token): the rollout never promotes, the production alias does not move; forced
  requests and their outcomes are counted apart.  Without the token, or on an app that
  does not enable forcing, the forced requests are refused.
- **Feedback replay.** One request fed back five times counts once (409 after the first);
  the client's own id (the same one on five requests) is no request id at all (422).
- **Fake labels.** 600 wrong labels sent to an app without feedback tokens never reach the
  drift monitor: no performance window, no drift event.  On an app with feedback tokens, an
  anonymous client is refused (401), while a labeler holding a token does trigger a
  performance-drift event with 200 of them (the monitor would have fired: the attack is
  stopped by auth, not by chance).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from raypipe import api
from raypipe.serving import app as serving
from raypipe.serving.metrics import get_collector
from raypipe.serving.rollout.controller import find_controller
from raypipe.serving.rollout.settings import build_spec
from raypipe.serving.spec import ServeSpec
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from tests.conftest import free_port, wait_for
from tests.integration.serve_funcs import drift_reference, register_digits, sample_rows

pytestmark = pytest.mark.slow

FORCE_TOKEN = "redteam-force-7d3e9a0c1b5f4e28"
FEEDBACK_TOKEN = "redteam-feedback-2c8f6a1e9d0b4753"
#: Labels close a performance window every 100; one drifted window makes an event.
PERFORMANCE_MONITOR = {
    "window_rows": 100_000,
    "performance": {"window_labels": 100, "reference": 0.95, "max_drop": 0.05},
    "consecutive": 1,
    "trigger_on": ["performance"],
}


@pytest.fixture(scope="module")
def env(ray_local: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two registered digits MLPs (v1 @production, v2 @candidate), token files, one Serve port."""
    root = tmp_path_factory.mktemp("redteam_serving")
    db = register_digits(root, versions=2)
    (root / "force").write_text(FORCE_TOKEN)
    (root / "feedback").write_text(FEEDBACK_TOKEN)
    yield {"db": db, "root": root, "port": free_port(), "rows": sample_rows(50)}
    for name in serving.apps():
        serving.shutdown(name)
    from ray import serve

    serve.shutdown()


def deploy(env: dict[str, Any], name: str, candidate_weight: float | None = None, **fields: Any) -> str:
    opts = {"num_cpus": 0.1}
    variants = [{"version": 1, "weight": 100 - (candidate_weight or 0), "ray_actor_options": opts}]
    if candidate_weight is not None:
        variants.append({"version": 2, "weight": candidate_weight, "ray_actor_options": opts})
    spec = ServeSpec.model_validate(
        {
            "app": name,
            "model": "digits",
            "variants": variants,
            "key": {"header": "X-User-Id"},
            "port": env["port"],
            "reserve": False,
            "ingress": {"ray_actor_options": opts},
            **fields,
        }
    )
    return serving.deploy(spec, db=env["db"]).url


def many(n: int, fn: Callable[[int, requests.Session], Any], workers: int = 8) -> list[Any]:
    """``fn(i, session)`` for i in 0..n-1 on ``workers`` threads, each with its own HTTP session."""
    local = threading.local()

    def call(i: int) -> Any:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        return fn(i, local.s)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, range(n)))


def production(db: str) -> int:
    meta = MetadataStore(db)
    try:
        return ModelRegistry(meta).get("digits@production").version
    finally:
        meta.close()


def snapshot(app: str) -> dict[str, Any]:
    import ray

    return dict(ray.get(get_collector(app).snapshot.remote()))


def test_forced_variant_promotion_attempt_does_not_promote(env: dict[str, Any]) -> None:
    import ray

    url = deploy(env, "canary", candidate_weight=0, force_variant={"token": f"${{file:{env['root']}/force}}"})
    rows = env["rows"]
    before = production(env["db"])
    spec = build_spec(
        {
            "app": "canary",
            "candidate": "v2",
            "steps": [5, 100],
            "interval_s": 1,
            "guardrails": {
                "min_requests": 50,
                "p99_latency_ms": None,
                "business": {"metric": "conversion", "max_decrease": 0.0, "min_outcomes": 50},
            },
        }
    )
    assert api.rollout_start(spec, db=env["db"])["weights"] == {"v1": 95.0, "v2": 5.0}

    # without the force token, forcing is refused (401 none, 403 another)
    r = requests.post(f"{url}/predict", json={"features": rows[0]}, headers={"X-Raypipe-Variant": "v2"}, timeout=60)
    assert r.status_code == 401
    r = requests.post(
        f"{url}/predict",
        json={"features": rows[0]},
        headers={"X-Raypipe-Variant": "v2", "X-Raypipe-Force-Token": FEEDBACK_TOKEN},
        timeout=60,
    )
    assert r.status_code == 403

    def attack(i: int, s: requests.Session) -> tuple[int, int]:
        variant, outcome = ("v2", 1) if i % 2 == 0 else ("v1", 0)
        headers = {"X-Raypipe-Variant": variant, "X-Raypipe-Force-Token": FORCE_TOKEN, "X-User-Id": f"a{i}"}
        p = s.post(f"{url}/predict", json={"features": rows[i % len(rows)]}, headers=headers, timeout=60)
        if p.status_code != 200:
            return p.status_code, -1
        f = s.post(f"{url}/feedback", json={"request_id": p.json()["request_id"], "outcome": outcome}, timeout=60)
        return p.status_code, f.status_code

    results = many(600, attack)
    assert all(r == (200, 200) for r in results), [r for r in results if r != (200, 200)][:5]
    wait_for(
        lambda: all(snapshot("canary").get(v, {}).get("forced_requests", 0) == 300 for v in ("v1", "v2")),
        timeout_s=60,
        what="the forced requests in the collector",
    )
    attacked = time.time()

    def decided_after_the_attack() -> dict[str, Any] | None:
        st = ray.get(find_controller("canary").status.remote())
        d = st and st.get("last_decision")
        return st if d and d["at"] > attacked + 1 else None

    st = wait_for(decided_after_the_attack, timeout_s=120, what="a rollout decision after the attack")
    assert isinstance(st, dict)
    assert st["state"] != "promoted", st
    assert st["last_decision"]["action"] != "promote" and st["weights"] == {"v1": 95.0, "v2": 5.0}
    window = st["last_decision"]["window"]
    assert window["candidate"]["requests"] == 0 and window["baseline"]["requests"] == 0, window
    assert production(env["db"]) == before == 1  # the production alias did not move
    snap = snapshot("canary")
    for variant, positives in (("v2", 300), ("v1", 0)):
        s = snap[variant]
        assert (s["requests"], s["outcomes"]["n"]) == (0, 0)  # nothing the A/B report or guardrails read
        assert s["forced_outcomes"] == {"n": 300, "sum": float(positives), "sumsq": float(positives),
                                        "positives": positives}  # fmt: skip
    report = api.ab_report("canary", db=env["db"], min_samples=10, control="v1")
    assert all(v["requests"] == 0 and v["outcomes"] == 0 for v in report["variants"]), report["variants"]
    api.rollout_abort("canary", reason="red team done", db=env["db"])


@pytest.fixture(scope="module")
def plain(env: dict[str, Any]) -> str:
    """An app without forcing: v1 at 100%, v2 deployed at 0% (one deploy for the tests below)."""
    return deploy(env, "plain", candidate_weight=0)


def test_forcing_is_refused_where_it_is_not_enabled(env: dict[str, Any], plain: str) -> None:
    url = plain
    for token in ({}, {"X-Raypipe-Force-Token": FORCE_TOKEN}):
        r = requests.post(
            f"{url}/predict",
            json={"features": env["rows"][0]},
            headers={"X-Raypipe-Variant": "v2", **token},
            timeout=60,
        )
        assert r.status_code == 403 and "is off for this app" in r.json()["error"]
    assert "v2" not in snapshot("plain")  # nothing reached the variant


def test_feedback_replay_counts_once(env: dict[str, Any], plain: str) -> None:
    url = plain
    s = requests.Session()
    row = env["rows"][0]
    rid = s.post(f"{url}/predict", json={"features": row}, timeout=60).json()["request_id"]
    statuses = [s.post(f"{url}/feedback", json={"request_id": rid, "outcome": 1}, timeout=60).status_code
                for _ in range(5)]  # fmt: skip
    assert statuses == [200, 409, 409, 409, 409]
    # the old attack: one client-chosen id served five times, then fed back
    docs = [s.post(f"{url}/predict", json={"features": row, "request_id": "victim"}, timeout=60).json()
            for _ in range(5)]  # fmt: skip
    assert {d["client_id"] for d in docs} == {"victim"} and len({d["request_id"] for d in docs}) == 5
    for _ in range(5):
        r = s.post(f"{url}/feedback", json={"request_id": "victim", "outcome": 1}, timeout=60)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "request_id"
    wait_for(lambda: snapshot("plain")["v1"]["requests"] >= 6, timeout_s=30, what="the requests counted")
    assert snapshot("plain")["v1"]["outcomes"]["n"] == 1


def _monitored(env: dict[str, Any], name: str, **fields: Any) -> str:
    """App ``name`` with a drift monitor on performance, once its router logs into the monitor
    (a router looks for its app's monitor every few seconds)."""
    from raypipe.monitoring.monitor import start_monitor

    url = deploy(env, name, **fields)
    profile, model_meta = drift_reference(env["db"])
    start_monitor(name, profile, model_meta, PERFORMANCE_MONITOR)

    def logging() -> bool:
        r = requests.post(f"{url}/predict", json={"features": env["rows"][0]}, timeout=60)
        return r.status_code == 200 and _monitor(name)[0]["counters"]["rows_sampled"] > 0

    wait_for(logging, timeout_s=60, every_s=0.5, what=f"{name}'s router to find its monitor")
    return url


def _predictions(url: str, rows: list[dict[str, float]], n: int) -> list[dict[str, Any]]:
    def one(i: int, s: requests.Session) -> dict[str, Any]:
        r = s.post(f"{url}/predict", json={"features": rows[i % len(rows)]}, timeout=60)
        assert r.status_code == 200, r.text
        return dict(r.json())

    return many(n, one)


def _monitor(app: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from raypipe.monitoring.monitor import get_monitor

    handle = get_monitor(app)
    return ray.get(handle.status.remote()), ray.get(handle.events.remote(0, 100))


def test_fake_labels_do_not_start_a_retraining(env: dict[str, Any]) -> None:
    from raypipe.monitoring.monitor import stop_monitor

    url = _monitored(env, "labels-open")
    start = _monitor("labels-open")[0]["counters"]["rows_sampled"]
    docs = _predictions(url, env["rows"], 600)
    wait_for(lambda: _monitor("labels-open")[0]["counters"]["rows_sampled"] >= start + 600, timeout_s=60, what="rows")

    def fake(i: int, s: requests.Session) -> int:
        wrong = (int(docs[i]["prediction"]) + 1) % 10
        r = s.post(f"{url}/feedback", json={"request_id": docs[i]["request_id"], "label": wrong}, timeout=60)
        assert "not used for performance drift" in r.json()["warnings"][-1], r.text
        return r.status_code

    assert set(many(600, fake)) == {200}
    status, events = _monitor("labels-open")
    assert [e for e in events if e["kind"] == "performance_drift"] == []
    assert status["counters"]["labels_matched"] == 0 and status["counters"]["labels_unknown"] == 0
    assert sum(v["performance"]["labels"] for v in status["variants"].values()) == 0
    stop_monitor("labels-open")


def test_labels_need_a_feedback_token_and_a_labeler_with_one_is_heard(env: dict[str, Any]) -> None:
    from raypipe.monitoring.monitor import stop_monitor

    auth = {"feedback_tokens": [f"${{file:{env['root']}/feedback}}"]}
    url = _monitored(env, "labels-auth", auth=auth)
    start = _monitor("labels-auth")[0]["counters"]["rows_sampled"]
    docs = _predictions(url, env["rows"], 600)
    wait_for(lambda: _monitor("labels-auth")[0]["counters"]["rows_sampled"] >= start + 600, timeout_s=60, what="rows")

    def send(i: int, s: requests.Session, token: str | None) -> int:
        wrong = (int(docs[i]["prediction"]) + 1) % 10
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"request_id": docs[i]["request_id"], "label": wrong}
        return s.post(f"{url}/feedback", data=json.dumps(body), headers=headers, timeout=60).status_code

    assert set(many(600, lambda i, s: send(i, s, None))) == {401}  # anonymous: refused
    assert set(many(60, lambda i, s: send(i, s, "Bearer-less-guess-0123456789"))) == {403}
    status, events = _monitor("labels-auth")
    assert status["counters"]["labels_matched"] == 0 and not events
    # the labeler with the token: the same wrong labels do make the monitor fire
    assert set(many(200, lambda i, s: send(i, s, FEEDBACK_TOKEN))) == {200}
    fired = wait_for(
        lambda: [e for e in _monitor("labels-auth")[1] if e["kind"] == "performance_drift"],
        timeout_s=60,
        what="a performance-drift event from authenticated labels",
    )
    assert isinstance(fired, list) and fired[0]["trigger"]
    stop_monitor("labels-auth")
