"""Serving over real HTTP on 127.0.0.1: one app deployed by a ``deploy`` stage (v1 90%,
v2 10%, v3 0% failing 30% of request ids), sticky on ``X-User-Id``, with bearer tokens for
/predict and /feedback and forcing a variant enabled with its own token (all three secret
references to files, resolved in the deploy stage's task); beside it on the same Serve, an
app with no auth at all (the single-user default) and a short feedback window.

The stage's app runs in the default mode (``serving.mode: auto``: these small models are
colocated in the router's replicas); its twin ``ab-routed`` (the same variants, tokens and
split, ``serving.mode: routed``: a deployment per variant) takes the representative subset
parametrized over both modes (``target``: predict and the sticky split, forced variants,
shadow, feedback, drift logging, a variant added and removed under traffic), and the tests
of a variant replica killed under load (a routed-only thing).

Split fractions and stickiness are deterministic given the keys (hashing), so nothing
here depends on timing; the load is only there to have requests in flight while a
replica dies or the weights change."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

import raypipe
from raypipe import api
from raypipe.cli import app as cli_app
from raypipe.serving import app as serving
from raypipe.serving.metrics import get_collector
from raypipe.serving.routing import choose, unit_hash
from raypipe.serving.spec import ServeSpec
from tests.conftest import cli_json, free_port, wait_for
from tests.integration.serve_funcs import drift_reference, register_digits, sample_rows

APP = "ab"
ROUTED = "ab-routed"
OPEN = "open"
WEIGHTS = {"v1": 90.0, "v2": 10.0, "v3": 0.0}
FAIL_RATE = 0.3
PREDICT_TOKEN = "predict-3f9c2e71a8b44d0e"
FEEDBACK_TOKEN = "feedback-8a1d7c5e0f2b4963"
FORCE_TOKEN = "force-5e0b9d2c4a7f1e38"
AUTH = {"Authorization": f"Bearer {PREDICT_TOKEN}"}
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
local = threading.local()


def session() -> requests.Session:
    """This thread's session; it sends the app's predict token (``post`` and the feedback
    helpers override it)."""
    if not hasattr(local, "s"):
        local.s = requests.Session()
        local.s.headers.update(AUTH)
    return local.s


@pytest.fixture(scope="module")
def served(ray_local: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Three registered MLPs (v1 @production, v3 @candidate), deployed by a pipeline's deploy stage."""
    root = tmp_path_factory.mktemp("serving")
    db = register_digits(root, versions=3)
    port = free_port()
    secrets = root / "secrets"
    secrets.mkdir()
    for name, token in (("predict", PREDICT_TOKEN), ("feedback", FEEDBACK_TOKEN), ("force", FORCE_TOKEN)):
        (secrets / name).write_text(token + "\n")
    opts = {"num_cpus": 0.2}
    params = {
        "app": APP,
        "model": "digits",
        "variants": [
            {"version": "@production", "weight": 90, "replicas": 2, "ray_actor_options": opts},
            {"version": 2, "weight": 10, "ray_actor_options": opts},
            {"version": "@candidate", "weight": 0, "ray_actor_options": opts, "fail_rate": FAIL_RATE},
        ],
        "key": {"header": "X-User-Id"},
        "auth": {
            "predict_tokens": [f"${{file:{secrets}/predict}}"],
            "feedback_tokens": [f"${{file:{secrets}/feedback}}"],
        },
        "force_variant": {"token": f"${{file:{secrets}/force}}"},
        "port": port,
        "ingress": {"ray_actor_options": opts},
    }
    cfg = raypipe.PipelineConfig(
        name="serve",
        storage=str(root / "store"),
        metadata=db,
        stages=[raypipe.StageConfig(name="deploy", kind="deploy", resources={"cpu": 0}, params=params)],
    )
    events: list[Any] = []
    result = raypipe.run(cfg, on_event=events.append)
    assert result.ok, result.errors
    note = [e.message for e in events if e.stage == "deploy" and e.status == "succeeded"]
    # the routed twin: the same variants, tokens and split, a deployment per variant (0.1 CPU each)
    small = {"num_cpus": 0.1}
    twin = {
        **params,
        "app": ROUTED,
        "variants": [{**v, "ray_actor_options": small} for v in params["variants"]],
        "ingress": {"ray_actor_options": small},
        "serving": {"mode": "routed"},
    }
    routed = serving.deploy(ServeSpec.model_validate(twin), db=db)
    yield {
        "db": db,
        "root": root,
        "url": serving.url(APP),
        "port": port,
        "params": params,
        "note": note,
        "apps": {"colocated": (APP, serving.url(APP)), "routed": (ROUTED, routed.url)},
    }
    for name in serving.apps():
        serving.shutdown(name)
    from ray import serve

    serve.shutdown()  # also drops Serve's cached client: the next module's Ray may reuse its job id


@pytest.fixture(params=["colocated", "routed"])
def target(request: pytest.FixtureRequest, served: dict[str, Any]) -> dict[str, str]:
    """The app of a mode: the stage's (colocated) or its routed twin; {mode, app, url}."""
    app, url = served["apps"][request.param]
    return {"mode": request.param, "app": app, "url": url}


@pytest.fixture(scope="module")
def open_app(served: dict[str, Any]) -> dict[str, Any]:
    """On the same Serve: an app with no auth (the single-user default), forcing off, and a
    feedback window of 2 s; not booked with the scheduler."""
    opts = {"num_cpus": 0.1}
    spec = ServeSpec.model_validate(
        {
            "app": OPEN,
            "model": "digits",
            "variants": [{"version": 1, "weight": 100, "ray_actor_options": opts}],
            "feedback": {"window_s": 2},
            "port": served["port"],
            "reserve": False,
            "ingress": {"ray_actor_options": opts},
        }
    )
    st = serving.deploy(spec, db=served["db"])
    assert st.auth == {"auth": False, "predict_tokens": 0, "feedback_tokens": 0, "force_variant": False,
                       "id_key": "generated"}  # fmt: skip
    return {"url": st.url}


def post(url: str, body: Any, key: str | None = None, **headers: str) -> requests.Response:
    if key is not None:
        headers["X-User-Id"] = key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return session().post(url, data=data, headers=headers, timeout=60)


def predict_many(
    url: str,
    keys: list[str],
    rows: list[dict[str, float]],
    workers: int = 16,
    answered: threading.Semaphore | None = None,
) -> list[Any]:
    """POST one request per key, ``workers`` at a time (aiohttp, keep-alive); (key, status, json) each.
    ``answered`` is released once per answered request (to act at some point of the load)."""
    import asyncio

    import aiohttp

    bodies = [json.dumps({"features": r}).encode() for r in rows]
    out: list[Any] = [None] * len(keys)

    async def run() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as s:

            async def worker(w: int) -> None:
                for i in range(w, len(keys), workers):
                    headers = {"X-User-Id": keys[i], "Content-Type": "application/json", **AUTH}
                    try:
                        async with s.post(f"{url}/predict", data=bodies[i % len(bodies)], headers=headers) as r:
                            out[i] = (keys[i], r.status, await r.json(content_type=None))
                    except (aiohttp.ClientError, ValueError) as e:
                        out[i] = (keys[i], -1, {"error": str(e)})
                    if answered is not None:
                        answered.release()

            await asyncio.gather(*(worker(w) for w in range(workers)))

    asyncio.run(run())
    return out


def replicas(deployment: str, app: str = ROUTED) -> list[dict[str, Any]]:
    details = serving._details(serving._serve_client())
    dep = details["applications"][app]["deployments"][deployment]
    return [r for r in dep["replicas"] if serving._enum(r["state"]) == "RUNNING"]


def kill_replica(deployment: str, app: str = ROUTED) -> str:
    import ray

    victim = replicas(deployment, app)[0]
    ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)
    return str(victim["replica_id"])


def test_deployed_by_the_stage_with_a_reservation(served: dict[str, Any]) -> None:
    st = serving.status(APP)
    assert st.status == "RUNNING" and st.weights == WEIGHTS
    assert {k: v.version for k, v in st.variants.items()} == {"v1": 1, "v2": 2, "v3": 3}
    assert st.aliases == {"production": "v1", "candidate": "v3"}
    assert st.url == f"http://127.0.0.1:{served['port']}/{APP}"
    # The default mode colocates these small models: no deployment per variant; the router has
    # v1's 2 replicas, each 0.2 CPU (the router's) + 0.2 (the largest variant's); the scheduler
    # books exactly those two replicas.
    assert st.mode == "colocated" and st.mode_reason.startswith("auto: the variants' models sum to")
    assert st.ingress["replicas"] == 2 and st.ingress["ray_actor_options"] == {"num_cpus": 0.4}
    details = serving._details(serving._serve_client())["applications"]
    assert set(details[APP]["deployments"]) == {"router"}
    assert st.reservation is not None and st.reservation["state"] == "running"
    assert st.reservation["demand"] == "0.8 CPU"
    assert all(v.running_replicas == 2 for v in st.variants.values())
    # The routed twin: router + 2 x v1 + v2 + v3, 0.1 CPU each, a deployment per variant.
    twin = serving.status(ROUTED)
    assert twin.mode == "routed" and twin.mode_reason == "serving.mode: routed"
    assert set(details[ROUTED]["deployments"]) == {"router", "v1", "v2", "v3"}
    assert twin.reservation is not None and twin.reservation["demand"] == "0.5 CPU"
    assert served["note"] and f"serving {APP} at {st.url}" in served["note"][0]
    meta = session().get(f"{served['url']}/metadata").json()
    assert meta["weights"] == WEIGHTS and meta["aliases"] == st.aliases
    assert session().get(f"{served['url']}/health").json()["status"] == "ok"
    assert st.auth == {"auth": True, "predict_tokens": 1, "feedback_tokens": 1, "force_variant": True,
                       "id_key": "generated"}  # fmt: skip
    # the app's record and Serve's config keep the references, never a token or the id key
    import ray

    from raypipe.serving.state import load_auth, load_state

    kept = json.dumps(load_state(APP)) + json.dumps(serving._details(serving._serve_client())["applications"][APP])
    key = load_auth(APP)["key"]  # type: ignore[index]
    assert "${file:" in kept and not any(t in kept for t in (PREDICT_TOKEN, FEEDBACK_TOKEN, FORCE_TOKEN, key))
    assert ray.get(get_collector(APP).ping.remote()) == APP


def test_tokens_401_403_and_health_open(served: dict[str, Any]) -> None:
    url = served["url"]
    row = sample_rows(1)[0]
    bare = requests.Session()
    r = bare.post(f"{url}/predict", json={"features": row}, timeout=60)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="raypipe"'
    assert "Authorization: Bearer <token>" in r.json()["error"]
    r = bare.post(f"{url}/predict", json={"features": row}, headers={"Authorization": PREDICT_TOKEN}, timeout=60)
    assert r.status_code == 401 and "malformed" in r.json()["error"]
    for wrong in (FEEDBACK, {"Authorization": f"Bearer {PREDICT_TOKEN}x"}):
        r = bare.post(f"{url}/predict", json={"features": row}, headers=wrong, timeout=60)
        assert r.status_code == 403 and r.json()["error"], r.text
    rid = post(f"{url}/predict", {"features": row}, "u1").json()["request_id"]
    r = bare.post(f"{url}/feedback", json={"request_id": rid, "outcome": 1}, headers=AUTH, timeout=60)
    assert r.status_code == 403  # a predict token is not a feedback token
    assert bare.post(f"{url}/feedback", json={"request_id": rid, "outcome": 1}, timeout=60).status_code == 401
    assert bare.get(f"{url}/metadata", timeout=60).status_code == 401
    assert bare.get(f"{url}/health", timeout=60).json() == {"status": "ok", "app": APP}


def test_split_accuracy_stickiness_and_a_replica_killed_under_load(target: dict[str, str], reliability: Any) -> None:
    """Both modes: the split's shares, stickiness by the contract's hash, every request counted,
    the same variants after a router replica restarts.  Routed: a v1 replica dies under load and
    no request fails (the router calls the variant again); colocated has no variant replica (a
    router replica dying under load loses its own requests in both modes: not done here)."""
    import ray

    app, url, routed = target["app"], target["url"], target["mode"] == "routed"
    # 2,000 keys: the v2 share's standard error is 0.67 points, so the 2-point bound is 3 sigma
    # (the split is a hash of the key: these keys get exactly 10.0%).
    keys = [f"user-{i}" for i in range(2000)]
    rows = sample_rows(200)
    before = replicas("v1") if routed else []
    cpus_free = ray.available_resources().get("CPU", 0.0)
    answered = threading.Semaphore(0)
    killed: list[str] = []

    def kill_after_a_quarter() -> None:
        # a v1 replica dies once a quarter of the requests are answered: the rest are in flight
        for _ in range(len(keys) // 4):
            answered.acquire()
        reliability.fault("Serve replica killed under load")
        killed.append(kill_replica("v1"))

    killer = threading.Thread(target=kill_after_a_quarter, daemon=True)
    if routed:
        killer.start()
    results = predict_many(url, keys, rows, answered=answered)
    if routed:
        killer.join(timeout=60)
        assert killed, "a v1 replica was killed while requests were in flight"
    failed = [r for r in results if r[1] != 200]
    reliability.records("requests answered", len(keys), len(results) - len(failed))
    print(f"\n2,000 requests ({target['mode']}), a v1 replica killed under load: {len(failed)} failed")
    assert not failed, failed[:3]
    counts = Counter(r[2]["variant"] for r in results)
    assert abs(counts["v2"] / len(keys) - 0.10) <= 0.02, counts
    assert counts["v3"] == 0
    assert all(r[2]["variant"] == choose(r[0], WEIGHTS) for r in results)  # the contract's hash, exactly
    if routed:  # Serve replaces the killed replica; the same keys get the same variants.
        wait_for(
            lambda: (
                len(replicas("v1")) == 2
                and {r["replica_id"] for r in replicas("v1")} != {r["replica_id"] for r in before}
            ),
            timeout_s=120,
            what="Serve to replace the killed v1 replica",
        )
        # the dead replica's resources are given back (its replacement takes the same again)
        wait_for(
            lambda: abs(ray.available_resources().get("CPU", 0.0) - cpus_free) < 1e-6,
            timeout_s=60,
            what="the CPUs free before the kill to be free again",
        )
    first = {k: body["variant"] for k, _, body in results}
    again = predict_many(url, keys[:400], rows)
    assert all(s == 200 and body["variant"] == first[k] for k, s, body in again)

    # Every answered request reached the metrics collector, per variant.
    def counted() -> dict[str, int]:
        snap = ray.get(get_collector(app).snapshot.remote())
        return {v: s["requests"] for v, s in snap.items() if s["requests"]}

    total = len(results) + len(again)
    wait_for(lambda: sum(counted().values()) >= total, timeout_s=30, what="the collector to count every request")
    assert counted()["v2"] >= counts["v2"]
    # The same keys keep their variants after a router replica restarts (a killed router
    # loses the events it had not sent yet: at most 0.1 s of them; colocated, the new
    # replica loads the variants' models again).
    n_routers = serving.status(app).ingress["target_replicas"]
    cpus_free = ray.available_resources().get("CPU", 0.0)
    dead = kill_replica("router", app)
    # Serve lists the dead replica as running until it notices: wait for the replacement itself,
    # then for the dead one's CPUs (the next test measures what is free)
    wait_for(
        lambda: dead not in (ids := {r["replica_id"] for r in replicas("router", app)}) and len(ids) == n_routers,
        timeout_s=120,
        what="a new router",
    )
    wait_for(
        lambda: abs(ray.available_resources().get("CPU", 0.0) - cpus_free) < 1e-6,
        timeout_s=60,
        what="the dead router's CPUs to be given back",
    )
    wait_for(lambda: post(f"{url}/predict", {"features": rows[0]}, "probe").status_code == 200, timeout_s=60)
    after = predict_many(url, keys[:200], rows)
    assert all(s == 200 and body["variant"] == first[k] for k, s, body in after)


def test_live_split_under_traffic_drops_nothing(served: dict[str, Any]) -> None:
    url = served["url"]
    rows = sample_rows(50)
    stop = threading.Event()
    seen: list[tuple[float, str, int, str | None]] = []

    def traffic(t: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"live-{t}-{i % 400}"
            start = time.time()
            try:
                r = post(f"{url}/predict", {"features": rows[i % len(rows)]}, key)
                seen.append((start, key, r.status_code, r.json().get("variant")))
            except requests.RequestException:
                seen.append((start, key, -1, None))
            i += 1

    threads = [threading.Thread(target=traffic, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    routers = {r["replica_id"] for r in replicas("router", APP)}
    try:
        wait_for(lambda: len(seen) > 50, what="traffic")
        st = serving.set_weights(APP, ["v1=50", "v2=50"])
        changed = time.time()
        assert st.weights == {"v1": 50.0, "v2": 50.0, "v3": 0.0}
        wait_for(lambda: len([s for s in seen if s[0] > changed]) > 100, what="traffic after the change")
        reverting = time.time()
        back = serving.set_weights(APP, {"v1": 90, "v2": 10})
        assert back.weights == WEIGHTS
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [s for s in seen if s[2] != 200]
    print(f"\n{len(seen)} requests while the split changed twice: {len(failed)} failed")
    assert not failed
    # weights only: the router replicas (holding the colocated models) were reconfigured, not replaced
    assert {r["replica_id"] for r in replicas("router", APP)} == routers
    new = {"v1": 50.0, "v2": 50.0, "v3": 0.0}
    during = [s for s in seen if changed < s[0] < reverting]
    # Every request sent after set_weights returned follows the new split (the router
    # replicas were reconfigured in place before it returned).
    assert during and all(s[3] == choose(s[1], new) for s in during)


FORCE = {"X-Raypipe-Variant": "v3", "X-Raypipe-Force-Token": FORCE_TOKEN}


def test_forced_variant_and_injected_failures(target: dict[str, str], open_app: dict[str, Any]) -> None:
    url = target["url"]
    row = sample_rows(1)[0]
    statuses = {}
    for i in range(60):
        r = post(f"{url}/predict", {"features": row}, "u1", **FORCE, **{"X-Request-Id": f"forced-{i}"})
        doc = r.json()
        assert doc["variant"] == "v3" and doc["forced"] is True and doc["client_id"] == f"forced-{i}"
        statuses[doc["request_id"]] = r.status_code  # the server's id: what the variant's failures hash
    expected = {rid: 500 if unit_hash("fail", rid) < FAIL_RATE else 200 for rid in statuses}
    assert statuses == expected and 5 < list(expected.values()).count(500) < 35
    r = post(f"{url}/predict", {"features": row}, "u1", **{**FORCE, "X-Raypipe-Variant": "v9"})
    assert r.status_code == 400 and "unknown variant 'v9'" in r.json()["errors"][0]["reason"]
    r = post(f"{url}/predict", {"features": row}, "u1", **{"X-Raypipe-Variant": "v3"})  # no force token
    assert r.status_code == 401 and "X-Raypipe-Force-Token" in r.json()["error"]
    r = post(f"{url}/predict", {"features": row}, "u1", **{**FORCE, "X-Raypipe-Force-Token": PREDICT_TOKEN})
    assert r.status_code == 403 and r.json()["error"] == "the X-Raypipe-Force-Token token is wrong"
    # forcing is off unless the app enables it: refused, whatever the token
    r = post(f"{open_app['url']}/predict", {"features": row}, "u1", **FORCE)
    assert r.status_code == 403 and "forcing a variant (X-Raypipe-Variant) is off" in r.json()["error"]


def test_forced_and_shadow_requests_never_count_in_ab_numbers(target: dict[str, str]) -> None:
    import ray

    from raypipe.serving.abtest.stats import VariantStats

    url, app = target["url"], target["app"]
    collector = get_collector(app)
    serving.set_shadow(app, "v3")
    time.sleep(1.0)  # snapshots count whole seconds: keep earlier tests' v3 events out of the window
    try:
        since = time.time()
        keys = [f"shadow-{i}" for i in range(200)]
        results = predict_many(url, keys, sample_rows(20), workers=8)
    finally:
        serving.set_shadow(app, None)
    assert all(s == 200 and body["variant"] == choose(k, WEIGHTS) for k, s, body in results)
    forced = [post(f"{url}/predict", {"features": sample_rows(1)[0]}, "u2", **FORCE).json() for _ in range(20)]
    ok = [d["request_id"] for d in forced if "error" not in d]
    for rid in ok:  # outcomes of forced requests: counted apart too
        assert post(f"{url}/feedback", {"request_id": rid, "outcome": 1}, **FEEDBACK).status_code == 200

    def shadowed() -> dict[str, Any]:
        return ray.get(collector.snapshot.remote(since)).get("v3", {})

    wait_for(lambda: shadowed().get("shadow_requests", 0) >= 200, timeout_s=30, what="shadow events")
    wait_for(lambda: shadowed().get("forced_requests", 0) >= 20, timeout_s=30, what="forced events")
    v3 = shadowed()
    assert (v3["requests"], v3["errors"], v3["outcomes"]["n"]) == (0, 0, 0)  # what A/B numbers and guardrails read
    assert sum(v3["latency_ms"]["counts"]) == 0
    assert v3["shadow_requests"] == 200 and v3["forced_requests"] == 20 and v3["forced_outcomes"]["n"] == len(ok)
    assert 0.15 < v3["shadow_errors"] / 200 < 0.45  # its injected failures, invisible to clients
    assert v3["shadow_latency_ms"]["p50"] is not None
    stats = VariantStats.from_snapshot("v3", v3)  # what `ab report` and a rollout's window see
    assert (stats.requests, stats.outcomes, stats.forced_requests) == (0, 0, 20)


def test_bad_requests_get_4xx_naming_the_field(served: dict[str, Any]) -> None:
    url = served["url"]
    row = sample_rows(1)[0]
    r = post(f"{url}/predict", b'{"features": {"px0": 1,', "u1")
    assert r.status_code == 400 and r.json()["error"] == "malformed JSON"
    bad = {**row, "px3": "three"}
    r = post(f"{url}/predict", {"features": bad}, "u1")
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "features.px3", "reason": "expected a number (float), got string 'three'"}]
    missing = {k: v for k, v in row.items() if k != "px7"}
    r = post(f"{url}/predict", {"features": missing}, "u1")
    assert r.status_code == 422 and r.json()["errors"] == [{"field": "features.px7", "reason": "missing field"}]
    r = post(f"{url}/predict", {"instances": [row, {**row, "px1": None}]}, "u1")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "instances[1].px1"
    r = post(f"{url}/predict", b'{"features": {"px0": NaN}}', "u1")
    assert r.status_code == 422
    ok = post(f"{url}/predict", {"instances": [row, row]}, "u1")
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    assert session().get(f"{url}/nope").status_code == 404
    assert session().get(f"{url}/predict").status_code == 405
    # Feedback: 200 for a served request id, once (409 again), 422 for an id the app did not issue.
    served_doc = post(f"{url}/predict", {"features": row, "request_id": "client-7"}, "u1").json()
    rid = served_doc["request_id"]
    assert served_doc["client_id"] == "client-7" and rid != "client-7"
    assert post(f"{url}/feedback", {"request_id": rid, "outcome": 1}, **FEEDBACK).status_code == 200
    assert post(f"{url}/feedback", {"request_id": rid, "label": 3}, **FEEDBACK).status_code == 200
    for body in ({"request_id": rid, "outcome": 1}, {"request_id": rid, "label": 3}):  # replayed
        r = post(f"{url}/feedback", body, **FEEDBACK)
        assert r.status_code == 409 and r.json()["repeated"] == [next(k for k in body if k != "request_id")]
    head, tag = rid.rsplit(".", 1)
    for forged in ("client-7", "never-served", f"{head}.{tag[::-1]}", f"{head[:-1]}x.{tag}"):
        r = post(f"{url}/feedback", {"request_id": forged, "outcome": 1}, **FEEDBACK)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "request_id", r.text
    r = post(f"{url}/feedback", {"request_id": rid}, **FEEDBACK)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "outcome"
    assert "`label`" in r.json()["errors"][0]["reason"]
    r = post(f"{url}/feedback", {"request_id": rid, "label": [3]}, **FEEDBACK)
    assert r.status_code == 422 and r.json()["errors"] == [
        {
            "field": "label",
            "reason": "expected the true value: a string of 1 to 1024 characters, a finite number or true/false, "
            "got array",
        }
    ]
    assert post(f"{url}/feedback", b"{oops", **FEEDBACK).status_code == 400


def test_one_outcome_per_request_and_expired_ids(served: dict[str, Any], open_app: dict[str, Any]) -> None:
    """A replayed outcome is refused and never counted (n stays 1); on the open app (no auth:
    outcomes count, single-user default) an id past its 2-s feedback window gets 410."""
    import ray

    url = open_app["url"]
    row = sample_rows(1)[0]
    rid = post(f"{url}/predict", {"features": row}).json()["request_id"]
    late = post(f"{url}/predict", {"features": row}).json()["request_id"]
    issued = time.time()
    assert post(f"{url}/feedback", {"request_id": rid, "outcome": 1}).status_code == 200
    for _ in range(4):
        assert post(f"{url}/feedback", {"request_id": rid, "outcome": 1}).status_code == 409
    assert ray.get(get_collector(OPEN).snapshot.remote())["v1"]["outcomes"]["n"] == 1
    time.sleep(max(0.0, issued + 2.5 - time.time()))  # past the app's feedback window
    r = post(f"{url}/feedback", {"request_id": late, "outcome": 1})
    assert r.status_code == 410 and "feedback window of 2 s" in r.json()["error"], r.text
    assert ray.get(get_collector(OPEN).snapshot.remote())["v1"]["outcomes"]["n"] == 1


def test_cli_split_errors_status_and_redeploy(served: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli_app, ["split", APP, "v1=50", "v9=50"])
    assert res.exit_code == 2 and "unknown variant v9; known variants: v1, v2, v3" in res.output
    res = runner.invoke(cli_app, ["split", APP, "v1=50", "v2=40"])
    assert res.exit_code == 2 and "weights must sum to 100; v1=50, v2=40 sum to 90" in res.output
    res = runner.invoke(cli_app, ["split", "nope", "v1=100"])
    assert res.exit_code == 2 and "no serving app 'nope'" in res.output
    res = runner.invoke(cli_app, ["serve", "status", APP, "--json"])
    assert res.exit_code == 0 and cli_json(res.output)["weights"] == WEIGHTS
    assert cli_json(res.output)["mode"] == "colocated"
    res = runner.invoke(cli_app, ["serve", "status", APP])
    assert res.exit_code == 0 and "reservation serve:ab:" in res.output
    assert "mode: colocated (auto: the variants' models sum to" in res.output
    assert "auth: predict (1 token), feedback (1 token), force-variant (X-Raypipe-Variant)" in res.output
    # `raypipe deploy` of the same app as a spec file: nothing changes, the reservation is kept.
    job = serving.status(APP).reservation["job_id"]  # type: ignore[index]
    spec = tmp_path / "app.yaml"
    spec.write_text(json.dumps(served["params"]))
    rid = post(f"{served['url']}/predict", {"features": sample_rows(1)[0]}, "u1").json()["request_id"]
    res = runner.invoke(cli_app, ["deploy", str(spec), "--db", served["db"]])
    assert res.exit_code == 0, res.output
    assert f"deployed {APP}" in res.output
    st = serving.status(APP)
    assert st.reservation["job_id"] == job and st.weights == WEIGHTS  # type: ignore[index]
    # the redeploy kept the app's id key: an id issued before is still the app's
    assert post(f"{served['url']}/feedback", {"request_id": rid, "outcome": 0}, **FEEDBACK).status_code == 200
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**served["params"], "variants": [{"version": 9, "weight": 100}]}))
    res = runner.invoke(cli_app, ["deploy", str(bad), "--db", served["db"]])
    assert res.exit_code == 2 and "model 'digits' has no version 9; versions: 1, 2, 3" in res.output
    assert api.serve_status(APP)[0].status == "RUNNING"


def test_reservation_keeps_serving_capacity_from_other_jobs(served: dict[str, Any]) -> None:
    """The app's replicas hold 1 of the cluster's 2 CPUs in the scheduler's books: with a
    0.5-CPU stage running, a 1.5-CPU stage would fit the rest of the cluster but waits."""
    import ray

    from raypipe.resources import Resources
    from raypipe.scheduler.client import SchedulerClient, get_controller

    client = SchedulerClient(get_controller(), owner="test-serving")
    small, big = client.new_job_id("small"), client.new_job_id("big")
    try:
        client.submit(small, [Resources.of(cpu=0.5)], grant="ledger")
        wait_for(lambda: client.poll([small])[small]["state"] == "running", what="the small job's grant")
        view = client.submit(big, [Resources.of(cpu=1.5)], grant="ledger")
        waiting = client.poll([big])[big]
        print(f"\n1.5-CPU job beside the app: {waiting['state']} ({waiting['reason']})")
        assert view["state"] == "queued" and waiting["state"] == "queued" and waiting["reason"]
    finally:
        ray.get(client.release([big, small]))
    assert serving.status(APP).reservation["state"] == "running"  # type: ignore[index]


def test_deploy_from_a_pipeline_file_resolves_in_its_store(served: dict[str, Any], tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "configs" / "serve_digits.yaml").read_text()
    text = text.replace("storage: .raypipe", f"storage: {served['root']}").replace("model: digits", "model: nomodel")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(cli_app, ["deploy", str(cfg)])
    assert res.exit_code == 2
    assert f"no model 'nomodel' in {served['root']}/raypipe.db; registered: digits" in res.output


def test_served_rows_reach_the_drift_monitor(served: dict[str, Any], target: dict[str, str]) -> None:
    """With a drift monitor running for the app, the router logs the rows it served (and
    their predictions) into it; nothing is configured on the app."""
    from raypipe.monitoring.monitor import monitor_status, start_monitor, stop_monitor

    app = target["app"]
    profile, model_meta = drift_reference(served["db"])
    start_monitor(app, profile, model_meta, {"window_rows": 100})
    rows = sample_rows(20)
    try:

        def logged() -> int:
            predict_many(target["url"], [f"drift-{i}" for i in range(20)], rows, workers=4)
            return int(monitor_status(app)["variants"].get("v1", {}).get("rows_logged", 0))

        assert wait_for(logged, timeout_s=60, every_s=0.5, what="served rows in the drift monitor")
        _feedback_reaches_the_right_consumer(target, rows)
    finally:
        stop_monitor(app)


def test_unauthenticated_labels_never_reach_the_monitor(served: dict[str, Any], open_app: dict[str, Any]) -> None:
    """The open app (no feedback tokens): its rows reach its monitor, its labels do not (a
    warning says so); its outcomes still count (no auth at all: the single-user default)."""
    import ray

    from raypipe.monitoring.monitor import monitor_status, start_monitor, stop_monitor

    profile, model_meta = drift_reference(served["db"])
    start_monitor(OPEN, profile, model_meta, {"window_rows": 100})
    url = open_app["url"]
    rows = sample_rows(20)
    try:

        def logged() -> list[dict[str, Any]]:
            docs = [post(f"{url}/predict", {"features": r}).json() for r in rows]
            n = int(monitor_status(OPEN)["variants"].get("v1", {}).get("rows_logged", 0))
            return docs if n >= 20 else []

        docs = wait_for(logged, timeout_s=60, every_s=0.5, what="served rows in the open app's monitor")
        for d in docs:
            r = post(f"{url}/feedback", {"request_id": d["request_id"], "label": d["prediction"], "outcome": 1})
            assert r.status_code == 200 and "not used for performance drift" in r.json()["warnings"][-1], r.text
        more = post(f"{url}/predict", {"features": rows[0]}).json()["request_id"]  # the router's events after them
        wait_for(lambda: ray.get(get_collector(OPEN).lookup.remote(more)) is not None, timeout_s=30)
        counters = monitor_status(OPEN)["counters"]
        assert {k: v for k, v in counters.items() if k.startswith("labels_") and v} == {}
        assert sum(v["performance"]["labels"] for v in monitor_status(OPEN)["variants"].values()) == 0
        snap = ray.get(get_collector(OPEN).snapshot.remote())["v1"]
        assert snap["labels"] >= 20 and snap["outcomes"]["n"] >= 20  # recorded, and the outcomes count
    finally:
        stop_monitor(OPEN)


def _feedback_reaches_the_right_consumer(target: dict[str, str], rows: list[dict[str, float]]) -> None:
    """``/feedback``'s ``outcome`` goes to the collector only (A/B, guardrails), its ``label``
    (authenticated: the app has feedback tokens) to the drift monitor only (performance
    windows); a body with both does both."""
    import ray

    from raypipe.monitoring.monitor import monitor_status

    def logged_total() -> int:
        return sum(int(v.get("rows_logged", 0)) for v in monitor_status(target["app"])["variants"].values())

    def label_counters() -> dict[str, int]:
        c = monitor_status(target["app"])["counters"]
        return {k: int(v) for k, v in c.items() if k.startswith("labels_")}

    def collector_totals() -> tuple[int, int]:
        snap = ray.get(get_collector(target["app"]).snapshot.remote())
        return sum(v["outcomes"]["n"] for v in snap.values()), sum(v["labels"] for v in snap.values())

    url = target["url"]
    tries = iter(range(1000))

    def all_logged() -> list[dict[str, Any]]:
        """20 requests whose rows all reached the monitor (a router replica finds a monitor
        started after it within MONITOR_CHECK_S: with two replicas, a batch may go half to
        one that has not yet; the next batch is tried then)."""
        start = logged_total()
        out = predict_many(url, [f"fb-{next(tries)}-{i}" for i in range(20)], rows, workers=4)
        assert all(status == 200 for _, status, _ in out), out
        try:
            wait_for(lambda: logged_total() - start >= 20, timeout_s=3, every_s=0.2, what="the rows logged")
        except TimeoutError:
            return []
        return [doc for _, _, doc in out]

    # the monitor holds their predictions (pending labels) before any label is sent
    docs = wait_for(all_logged, timeout_s=60, every_s=0.5, what="a batch of rows all logged")
    labels0, (outcomes0, collected0) = label_counters(), collector_totals()

    for d in docs[:8]:  # outcome only (an old client): A/B numbers, never a label
        r = post(f"{url}/feedback", {"request_id": d["request_id"], "outcome": 1}, **FEEDBACK)
        assert r.status_code == 200 and r.json()["received"] == ["outcome"], r.text
    assert label_counters() == labels0
    assert collector_totals() == (outcomes0 + 8, collected0)

    for d in docs[8:16]:  # label only, as text ("3" names class 3): performance drift, no outcome
        r = post(f"{url}/feedback", {"request_id": d["request_id"], "label": str(d["prediction"])}, **FEEDBACK)
        assert r.status_code == 200 and r.json()["received"] == ["label"], r.text
    for d in docs[16:19]:  # both
        r = post(f"{url}/feedback", {"request_id": d["request_id"], "outcome": 0, "label": d["prediction"]}, **FEEDBACK)
        assert r.status_code == 200 and r.json()["received"] == ["outcome", "label"], r.text
    r = post(f"{url}/feedback", {"request_id": docs[19]["request_id"], "label": 42}, **FEEDBACK)
    assert r.status_code == 200 and "not one of the model's classes" in r.json()["warnings"][0], r.text

    def matched() -> int:
        return label_counters()["labels_matched"] - labels0["labels_matched"]

    assert wait_for(lambda: matched() >= 12, timeout_s=30, every_s=0.2, what="labels in the monitor")
    now = label_counters()
    assert matched() == 12 and now["labels_outside_classes"] - labels0["labels_outside_classes"] == 1
    assert now["labels_unscorable"] == labels0["labels_unscorable"]
    assert collector_totals() == (outcomes0 + 11, collected0 + 12)
    perf = monitor_status(target["app"])["variants"]
    assert sum(v["performance"]["labels"] for v in perf.values()) == 12


# colocated only: the routed app's variant set changes in the rollout tests (rollback retires v2)
@pytest.mark.parametrize("target", ["colocated"], indirect=True)
def test_a_variant_removed_and_added_under_traffic_drops_nothing(
    served: dict[str, Any], target: dict[str, str]
) -> None:
    """A new variant set (the closed loop's change_variants: v3 retired, then added back as a new
    candidate) re-deploys the router (colocated: with the new set of models in-process; routed:
    with the new handles) while 4 clients keep posting: Serve rolls the router's replicas and
    no request fails."""
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.registry import ModelRegistry

    app, url = target["app"], target["url"]
    opts = served["params"]["variants"][2]["ray_actor_options"] if target["mode"] == "colocated" else {"num_cpus": 0.1}
    rows = sample_rows(50)
    stop = threading.Event()
    seen: list[int] = []

    def traffic(t: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                seen.append(
                    post(f"{url}/predict", {"features": rows[i % len(rows)]}, f"change-{t}-{i % 400}").status_code
                )
            except requests.RequestException:
                seen.append(-1)
            i += 1

    routers = {r["replica_id"] for r in replicas("router", app)}
    meta = MetadataStore(served["db"])
    threads = [threading.Thread(target=traffic, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    try:
        reg = ModelRegistry(meta)
        wait_for(lambda: len(seen) > 50, what="traffic")
        st = serving.change_variants(app, reg, remove=["v3"])
        assert set(st.variants) == {"v1", "v2"} and st.mode == target["mode"]
        n = len(seen)
        wait_for(lambda: len(seen) > n + 50, what="traffic after the removal")
        st = serving.change_variants(
            app, reg, add=[(reg.get("digits:3"), {"ray_actor_options": opts, "fail_rate": FAIL_RATE})]
        )
        assert set(st.variants) == {"v1", "v2", "v3"} and st.weights == WEIGHTS and st.mode == target["mode"]
        n = len(seen)
        wait_for(lambda: len(seen) > n + 50, what="traffic after the addition")
    finally:
        stop.set()
        for t in threads:
            t.join()
        meta.close()
    failed = [s for s in seen if s != 200]
    print(f"\n{len(seen)} requests ({target['mode']}) while v3 was removed and added: {len(failed)} failed")
    assert not failed
    assert {r["replica_id"] for r in replicas("router", app)}.isdisjoint(routers)  # the routers were rolled
    r = post(f"{url}/predict", {"features": rows[0]}, "u1", **FORCE)
    assert r.json()["variant"] == "v3" and r.status_code in (200, 500)
