"""Serving auth without Ray: bearer tokens, signed request ids, the app's auth record, the
collector's one-outcome-per-id bookkeeping, and the router's /predict and /feedback checks
(a real Router and a real MetricsCollector; the variant, collector and monitor handles are
stand-ins recording their calls)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.datastructures import Headers

from raypipe.exceptions import ConfigError
from raypipe.serving.auth import (
    TOKEN_MIN_CHARS,
    AuthError,
    IdError,
    RequestIds,
    RouterAuth,
    TokenCheck,
    auth_record,
    derive_key,
    describe,
    token_hash,
)
from raypipe.serving.metrics import MetricsCollector

PREDICT = "predict-token-0123456789abcdef"
FEEDBACK = "feedback-token-0123456789abcdef"
FORCE = "force-token-0123456789abcdef"
ENV = {"P": PREDICT, "F": FEEDBACK, "X": FORCE, "S": "app-secret-0123456789abcdef"}


# --------------------------------------------------------------------------- tokens


def test_bearer_tokens_401_without_or_malformed_403_wrong() -> None:
    check = TokenCheck([token_hash(PREDICT), token_hash("another-token-0123456789")])
    check.bearer(f"Bearer {PREDICT}", "POST /predict")
    check.bearer("bearer another-token-0123456789", "POST /predict")  # the scheme is case-insensitive
    for header in (None, ""):
        with pytest.raises(AuthError) as exc:
            check.bearer(header, "POST /predict")
        assert exc.value.status == 401 and "Authorization: Bearer <token>" in exc.value.message
        assert exc.value.headers() == {"WWW-Authenticate": 'Bearer realm="raypipe"'}
    for header in (PREDICT, f"Basic {PREDICT}", "Bearer", "Bearer  ", f"Bearer {PREDICT} extra"):
        with pytest.raises(AuthError) as exc:
            check.bearer(header, "POST /predict")
        assert exc.value.status == 401 and "malformed" in exc.value.message, header
    for header in (f"Bearer {PREDICT}x", f"Bearer {PREDICT[:-1]}", "Bearer " + "a" * 5000):
        with pytest.raises(AuthError) as exc:
            check.bearer(header, "POST /predict")
        assert exc.value.status == 403 and exc.value.headers() == {}
    with pytest.raises(AuthError) as exc:
        TokenCheck().bearer(f"Bearer {PREDICT}", "POST /feedback")  # no tokens: nothing matches
    assert exc.value.status == 403


def test_raw_token_header() -> None:
    check = TokenCheck([token_hash(FORCE)])
    check.header(FORCE, "X-Raypipe-Force-Token", "forcing a variant")
    with pytest.raises(AuthError) as exc:
        check.header(None, "X-Raypipe-Force-Token", "forcing a variant")
    assert exc.value.status == 401 and "X-Raypipe-Force-Token" in exc.value.message
    with pytest.raises(AuthError) as exc:
        check.header(PREDICT, "X-Raypipe-Force-Token", "forcing a variant")
    assert exc.value.status == 403


# --------------------------------------------------------------------------- request ids


def test_ids_are_unique_signed_and_verified_without_a_lookup() -> None:
    ids = RequestIds("digits", b"k" * 32)
    now = 1_700_000_000.0
    issued = [ids.issue(now) for _ in range(1000)]
    assert len(set(issued)) == 1000 and all(len(r) <= 128 for r in issued)
    rid = issued[0]
    assert rid.startswith("r1.") and ids.verify(rid, now=now + 5, window_s=60) == pytest.approx(now)
    head, ms, nonce, tag = rid.split(".")
    forged = [
        f"{head}.{int(ms, 16) + 1:x}.{nonce}.{tag}",  # another issue time
        f"{head}.{ms}.{nonce[:-1]}{'A' if nonce[-1] != 'A' else 'B'}.{tag}",  # another nonce
        f"{head}.{ms}.{nonce}.{tag[:-1]}{'A' if tag[-1] != 'A' else 'B'}",  # another tag
        RequestIds("digits", b"x" * 32).issue(now),  # another key
        RequestIds("other", b"k" * 32).issue(now),  # another app, same key
    ]
    for bad in forged:
        with pytest.raises(IdError) as exc:
            ids.verify(bad, now=now)
        assert exc.value.status == 422 and "signature does not match" in exc.value.reason, bad
    for bad in ("my-own-id", "r1.x.y.z", "r2.1.2.3", f"{rid}.more", "r1.zz.abc.def", "", "r1.é.a.b", rid + "é"):
        with pytest.raises(IdError) as exc:
            ids.verify(bad, now=now)
        assert exc.value.status == 422, bad
    with pytest.raises(IdError) as exc:
        ids.verify(rid, now=now + 61, window_s=60)
    assert exc.value.status == 410 and "past this app's feedback window of 60 s" in exc.value.reason


def test_sampling_is_keyed_stable_and_at_the_rate() -> None:
    a, b = RequestIds("app", b"a" * 32), RequestIds("app", b"b" * 32)
    rids = [a.issue() for _ in range(20_000)]
    kept = [a.sample(r, 0.2) for r in rids]
    assert kept == [a.sample(r, 0.2) for r in rids]  # the same on every replica (same key)
    assert abs(sum(kept) / len(rids) - 0.2) < 0.02  # 7 standard errors
    assert kept != [b.sample(r, 0.2) for r in rids]  # another key, another sample
    assert all(a.sample(r, 1.0) for r in rids[:50]) and not any(a.sample(r, 0.0) for r in rids[:50])


# --------------------------------------------------------------------------- the auth record


def test_auth_record_keeps_hashes_and_a_key_never_a_token(tmp_path: Path) -> None:
    path = tmp_path / "feedback_token"
    path.write_text(FEEDBACK + "\n")
    rec = auth_record(
        "digits",
        predict_tokens=["${env:P}"],
        feedback_tokens=[f"${{file:{path}}}"],
        force_token="${env:X}",
        has_auth=True,
        environ=ENV,
    )
    assert rec["predict"] == [token_hash(PREDICT)] and rec["feedback"] == [token_hash(FEEDBACK)]
    assert rec["force"] == token_hash(FORCE) and rec["source"] == "generated" and len(rec["key"]) == 64
    text = json.dumps(rec)
    assert all(t not in text for t in (PREDICT, FEEDBACK, FORCE))
    assert describe(rec) == {
        "auth": True,
        "predict_tokens": 1,
        "feedback_tokens": 1,
        "force_variant": True,
        "id_key": "generated",
    }
    # a redeploy keeps the generated key (ids issued before stay valid) and the revision
    again = auth_record("digits", predict_tokens=["${env:P}"], feedback_tokens=[f"${{file:{path}}}"],
                        force_token="${env:X}", has_auth=True, previous=rec, environ=ENV)  # fmt: skip
    assert again == rec
    rotated = auth_record("digits", predict_tokens=["${env:F}"], has_auth=True, previous=rec, environ=ENV)
    assert rotated["key"] == rec["key"] and rotated["rev"] != rec["rev"]
    # a secret: the key is derived from it, per app; the secret is not kept
    signed = auth_record("digits", secret="${env:S}", previous=rec, environ=ENV)
    assert signed["key"] == derive_key(ENV["S"], "digits").hex() != derive_key(ENV["S"], "other").hex()
    assert signed["source"] == "secret" and ENV["S"] not in json.dumps(signed)
    assert auth_record("digits", secret="${env:S}", environ=ENV)["key"] == signed["key"]  # on any deploy
    fresh = auth_record("digits", environ=ENV)
    assert fresh["key"] != rec["key"] and not fresh["auth"] and fresh["predict"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"predict_tokens": ["${env:NOPE}"]}, "auth.predict_tokens[0]: ${env:NOPE}: the environment variable NOPE"),
        ({"feedback_tokens": ["${env:P}", "${env:SHORT}"]}, f"auth.feedback_tokens[1]: ${{env:SHORT}} is 5 "
                                                             f"characters long; a token needs at least {TOKEN_MIN_CHARS}"),
        ({"force_token": "${env:SPACE}"}, "force_variant.token: ${env:SPACE} must be printable ASCII without spaces"),
        ({"secret": "${env:SHORT}"}, "secret: ${env:SHORT} is 5 characters long"),
    ],
)  # fmt: skip
def test_auth_record_errors_name_the_field_never_the_value(kwargs: dict[str, Any], message: str) -> None:
    env = {**ENV, "SHORT": "abcde", "SPACE": "a token with spaces in it"}
    with pytest.raises(ConfigError) as exc:
        auth_record("digits", environ=env, **kwargs)
    assert message in str(exc.value)
    assert "abcde" not in str(exc.value) and "a token with" not in str(exc.value)


# --------------------------------------------------------------------------- the collector


def event(rid: str, variant: str, ts: float, **kw: Any) -> dict[str, Any]:
    doc = {"request_id": rid, "variant": variant, "ok": True, "status": 200, "latency_ms": 3.0, "ts": ts}
    return {"shadow": False, "forced": False, "key": None, **doc, **kw}


def test_collector_counts_routed_requests_apart_from_forced_and_shadow() -> None:
    c = MetricsCollector("app", export=False)
    now = time.time()
    c.record([event(f"old{i}", "v1", now - 100) for i in range(10)])
    c.record([event(f"r{i}", "v1", now, ok=i % 10 != 0, latency_ms=1.0 + i % 5) for i in range(100)])
    c.record([event(f"s{i}", "v2", now, shadow=True, ok=i % 2 == 0, latency_ms=500.0) for i in range(20)])
    c.record([event(f"f{i}", "v2", now, forced=True, ok=i % 4 != 0, latency_ms=900.0) for i in range(40)])
    snap = c.snapshot()
    assert snap["v1"]["requests"] == 110 and snap["v1"]["errors"] == 10
    v2 = snap["v2"]
    assert (v2["requests"], v2["errors"], sum(v2["latency_ms"]["counts"])) == (0, 0, 0)  # none in A/B numbers
    assert (v2["shadow_requests"], v2["shadow_errors"], v2["forced_requests"], v2["forced_errors"]) == (20, 10, 40, 10)
    assert 400 < v2["shadow_latency_ms"]["p50"] < 600 and v2["latency_ms"]["p50"] is None
    recent = c.snapshot(since=now - 10)
    assert recent["v1"]["requests"] == 100 and sum(recent["v1"]["latency_ms"]["counts"]) == 100
    assert 2.0 <= recent["v1"]["latency_ms"]["p50"] <= 4.0 and recent["v1"]["latency_ms"]["buckets"][-1] == "inf"
    # outcomes of forced requests go to forced_outcomes only; shadow copies take none
    for i in range(10):
        assert c.feedback(f"f{i}", 1.0)["status"] == "recorded"
        assert c.feedback(f"r{i}", 0.0)["status"] == "recorded"
    assert c.feedback("s1", 1.0) == {"status": "unknown"}
    snap = c.snapshot()
    assert snap["v2"]["outcomes"]["n"] == 0 and snap["v2"]["forced_outcomes"] == {
        "n": 10,
        "sum": 10.0,
        "sumsq": 10.0,
        "positives": 10,
    }
    assert snap["v1"]["outcomes"]["n"] == 10
    assert c.lookup("f1") == {"variant": "v2", "forced": True, "outcome": True, "label": False}


def test_one_outcome_and_one_label_per_id_replace_takes_the_first_back() -> None:
    c = MetricsCollector("app", export=False)
    c.record([event(f"r{i}", "v1", time.time()) for i in range(5)])
    assert c.feedback("r1", 1.0) == {"variant": "v1", "forced": False, "status": "recorded"}
    for _ in range(4):  # replayed: refused, never counted again
        assert c.feedback("r1", 1.0)["repeated"] == ["outcome"]
    assert c.snapshot()["v1"]["outcomes"] == {"n": 1, "sum": 1.0, "sumsq": 1.0, "positives": 1}
    assert c.feedback("r1", -2.0, replace=True)["status"] == "replaced"
    assert c.snapshot()["v1"]["outcomes"] == {"n": 1, "sum": -2.0, "sumsq": 4.0, "positives": 0}
    assert c.feedback("r2", None, label=True)["status"] == "recorded"
    assert c.feedback("r2", 1.0, label=True) == {"variant": "v1", "forced": False, "status": "repeated",
                                                 "repeated": ["label"]}  # fmt: skip
    assert c.snapshot()["v1"]["outcomes"]["n"] == 1  # nothing of a refused body is recorded
    assert c.feedback("r2", 1.0, replace=True)["status"] == "recorded"  # its first outcome
    assert c.feedback("r3", 0.0, label=True)["status"] == "recorded"
    snap = c.snapshot()["v1"]
    assert snap["labels"] == 2 and snap["outcomes"]["n"] == 3
    # an event sent twice (a retried flush) does not reset the id's feedback
    c.record([event("r1", "v1", time.time())])
    assert c.feedback("r1", 5.0)["repeated"] == ["outcome"]


def test_collector_memory_is_bounded_by_count_and_feedback_window() -> None:
    c = MetricsCollector("app", max_ids=50, retain_s=60, export=False, id_window_s=600)
    now = time.time()
    c.record([event(f"r{i}", "v1", now) for i in range(200)])
    assert c.known_ids() == 50
    assert c.feedback("r0", 1.0)["status"] == "unknown" and c.feedback("r199", 1.0)["status"] == "recorded"
    c = MetricsCollector("app", retain_s=60, export=False, id_window_s=600)
    c.record([event(f"old{i}", "v1", now - 3600) for i in range(10)] + [event("new", "v1", now)])
    c._maybe_prune()
    assert c.known_ids() == 1 and c.lookup("old0") is None and c.lookup("new") is not None
    assert min(c._buckets["v1"]) >= int(now - 61)
    assert c.snapshot()["v1"]["requests"] == 11  # folded into the all-time remainder
    assert c.snapshot(since=now - 30)["v1"]["requests"] == 1


# --------------------------------------------------------------------------- the router


class _Remote:
    """A Ray method stand-in: ``.remote(*args)`` records the call and returns an awaitable."""

    def __init__(self, calls: list[tuple], name: str, fn: Any) -> None:
        self.calls, self.name, self.fn = calls, name, fn

    def remote(self, *args: Any) -> _Ref:
        self.calls.append((self.name, *args))
        return _Ref(self.fn(*args))


class _Ref:
    """An ObjectRef stand-in: awaitable, and fine to drop unawaited (fire and forget)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # a generator: awaiting it returns the value at once


class _Fake:
    def __init__(self, calls: list[tuple], prefix: str, **methods: Any) -> None:
        for name, fn in methods.items():
            setattr(self, name, _Remote(calls, f"{prefix}.{name}", fn))


class _Request:
    def __init__(self, doc: Any, headers: dict[str, str] | None = None) -> None:
        self.data = json.dumps(doc).encode()
        self.headers = Headers({"content-length": str(len(self.data)), **(headers or {})})

    async def stream(self) -> Any:
        yield self.data


def make_router(
    monkeypatch: pytest.MonkeyPatch, record: dict[str, Any] | None, **config: Any
) -> tuple[Any, list[tuple], MetricsCollector]:
    """A Router (no Ray) with ``record`` as its auth record, a real collector, and variant
    and monitor stand-ins; v1 classifies (classes 0, 1), v2 regresses."""
    from raypipe.serving import deployments, feedback_route

    monkeypatch.setattr(feedback_route, "FLUSH_S", 0.0)  # no waiting for other replicas' events
    calls: list[tuple] = []
    collector = MetricsCollector("app", export=False)

    def predict_many(ids: list[str], rows: list[Any]) -> list[dict[str, Any]]:
        return [{"ok": True, "p": [1] * len(r)} for r in rows]

    variant = {"version": 1, "sha256": "x", "features": ["a"], "input_schema": {"a": "double"}, "replicas": 1}
    handles = {
        "v1": _Fake(calls, "v1", predict_many=predict_many, label_schema=lambda: {"task": "classification",
                                                                                "classes": [0, 1]}),
        "v2": _Fake(calls, "v2", predict_many=predict_many, label_schema=lambda: {"task": "regression"}),
    }  # fmt: skip
    cfg = {"app": "app", "model": "m", "collector": "c", "variants": {"v1": variant, "v2": {**variant, "version": 2}}}
    r = deployments.Router({**cfg, **config}, **handles)
    r.reconfigure({"weights": {"v1": 100, "v2": 0}})
    r.auth = RouterAuth.of("app", record)
    r._collector = _Fake(calls, "collector", feedback=collector.feedback, lookup=collector.lookup,
                         record=collector.record)  # fmt: skip
    r._monitor = _Fake(calls, "monitor", label=lambda rid, y, sampled: True, log=lambda *a: 1)
    return r, calls, collector


def call(coro: Any) -> tuple[int, dict[str, Any], Any]:
    async def run() -> Any:
        resp = await coro
        await asyncio.sleep(0)
        return resp

    resp = asyncio.run(run())
    return resp.status_code, json.loads(resp.body), resp.headers


def predict(r: Any, headers: dict[str, str] | None = None, **body: Any) -> tuple[int, dict[str, Any], Any]:
    return call(r._predict(_Request({"features": {"a": 1.0}, **body}, headers)))


def feedback(r: Any, doc: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    status, body, _ = call(r._feedback(_Request(doc, headers)))
    return status, body


def full_auth(**kw: Any) -> dict[str, Any]:
    return auth_record("app", predict_tokens=["${env:P}"], feedback_tokens=["${env:F}"], has_auth=True,
                       environ=ENV, **kw)  # fmt: skip


def served(r: Any, collector: MetricsCollector, n: int = 1, **headers: str) -> list[str]:
    """Ids of ``n`` requests served (their events handed to the collector, as a flush does)."""
    out = []
    for _ in range(n):
        status, doc, _ = predict(r, {"Authorization": f"Bearer {PREDICT}", **headers} if r.auth.enabled else headers)
        assert status == 200, doc
        out.append(doc["request_id"])
    collector.record(r._events)
    r._events.clear()
    return out


def test_predict_needs_its_token_and_issues_a_signed_id(monkeypatch: pytest.MonkeyPatch) -> None:
    r, _, _ = make_router(monkeypatch, full_auth())
    status, body, headers = predict(r)
    assert status == 401 and "Authorization: Bearer <token>" in body["error"]
    assert headers["www-authenticate"] == 'Bearer realm="raypipe"'
    assert predict(r, {"Authorization": f"Token {PREDICT}"})[0] == 401
    assert predict(r, {"Authorization": f"Bearer {FEEDBACK}"})[0] == 403  # a feedback token is not a predict one
    status, doc, _ = predict(r, {"Authorization": f"Bearer {PREDICT}", "X-Request-Id": "trace-7"}, request_id="mine")
    assert status == 200 and doc["client_id"] == "mine" and doc["request_id"] != "mine"
    assert r.auth.ids.verify(doc["request_id"]) > 0
    assert r._events[-1]["client_id"] == "mine" and r._events[-1]["request_id"] == doc["request_id"]
    assert predict(r, {"Authorization": f"Bearer {PREDICT}", "X-Request-Id": "trace-7"})[1]["client_id"] == "trace-7"


def test_forcing_is_off_by_default_and_needs_its_own_token(monkeypatch: pytest.MonkeyPatch) -> None:
    r, calls, _ = make_router(monkeypatch, None)
    status, body, _ = predict(r, {"X-Raypipe-Variant": "v2"})
    assert status == 403 and "forcing a variant (X-Raypipe-Variant) is off" in body["error"]
    assert not r._events and not any(c[0] == "v2.predict_many" for c in calls)
    force = {"header": "X-Raypipe-Variant", "token_header": "X-Raypipe-Force-Token"}
    r, calls, collector = make_router(monkeypatch, auth_record("app", force_token="${env:X}", environ=ENV), force=force)
    assert predict(r, {"x-raypipe-variant": "v2"})[0] == 401
    assert predict(r, {"X-Raypipe-Variant": "v2", "X-Raypipe-Force-Token": PREDICT})[0] == 403
    status, body, _ = predict(r, {"X-Raypipe-Variant": "v9", "X-Raypipe-Force-Token": FORCE})
    assert status == 400 and "unknown variant 'v9'" in body["errors"][0]["reason"]
    status, doc, _ = predict(r, {"X-Raypipe-Variant": "v2", "X-Raypipe-Force-Token": FORCE})
    assert status == 200 and doc["variant"] == "v2" and doc["forced"] is True
    assert r._events[-1]["forced"] is True and not r._drift  # never toward the drift windows
    assert predict(r)[1]["variant"] == "v1" and r._drift  # a routed one is (sample rate 1)
    collector.record(r._events)
    snap = collector.snapshot()
    assert snap["v2"]["forced_requests"] == 1 and snap["v2"]["requests"] == 0 and snap["v1"]["requests"] == 1


def test_feedback_tokens_ids_replays_and_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    r, calls, collector = make_router(monkeypatch, full_auth(), feedback={"on_repeat": "reject", "window_s": 60})
    (rid,) = served(r, collector)
    assert feedback(r, {"request_id": rid, "outcome": 1})[0] == 401
    assert feedback(r, {"request_id": rid, "outcome": 1}, PREDICT)[0] == 403
    status, body = feedback(r, {"request_id": "my-id", "outcome": 1}, FEEDBACK)
    assert status == 422 and body["errors"][0]["field"] == "request_id"
    other = RequestIds("app", b"z" * 32).issue()  # right format, wrong key: forged
    status, body = feedback(r, {"request_id": other, "outcome": 1}, FEEDBACK)
    assert status == 422 and "signature does not match" in body["errors"][0]["reason"]
    assert feedback(r, {"request_id": rid, "outcome": 1}, FEEDBACK) == (
        200,
        {"request_id": rid, "recorded": True, "received": ["outcome"]},
    )
    for _ in range(4):
        status, body = feedback(r, {"request_id": rid, "outcome": 1}, FEEDBACK)
        assert status == 409 and body["repeated"] == ["outcome"] and "on_repeat is reject" in body["error"]
    assert collector.snapshot()["v1"]["outcomes"]["n"] == 1
    old = r.auth.ids.issue(time.time() - 61)  # signed by the app, issued past the window
    status, body = feedback(r, {"request_id": old, "outcome": 1}, FEEDBACK)
    assert status == 410 and "feedback window of 60 s" in body["error"]
    unknown = r.auth.ids.issue()  # valid, never served
    assert feedback(r, {"request_id": unknown, "outcome": 1}, FEEDBACK)[0] == 404
    assert not any(c[0] == "monitor.label" for c in calls)


def test_replace_mode_takes_the_first_outcome_back(monkeypatch: pytest.MonkeyPatch) -> None:
    r, _, collector = make_router(monkeypatch, None, feedback={"on_repeat": "replace", "window_s": 60})
    (rid,) = served(r, collector)
    assert feedback(r, {"request_id": rid, "outcome": 1})[0] == 200
    status, body = feedback(r, {"request_id": rid, "outcome": 0})
    assert status == 200 and body["replaced"] == ["outcome"]
    assert collector.snapshot()["v1"]["outcomes"] == {"n": 1, "sum": 0.0, "sumsq": 0.0, "positives": 0}
    assert feedback(r, {"request_id": rid, "label": 1})[0] == 200
    status, body = feedback(r, {"request_id": rid, "label": 1, "outcome": 1})  # a label again: always 409
    assert status == 409 and body["repeated"] == ["label"]
    assert collector.snapshot()["v1"]["outcomes"]["sum"] == 0.0


def test_labels_reach_the_monitor_only_from_authenticated_feedback(monkeypatch: pytest.MonkeyPatch) -> None:
    # no auth: outcomes count (single-user default), labels are kept from the monitor
    r, calls, collector = make_router(monkeypatch, None)
    a, b = served(r, collector, 2)
    status, body = feedback(r, {"request_id": a, "label": 1, "outcome": 1})
    assert status == 200 and "not used for performance drift" in body["warnings"][0]
    assert not any(c[0] == "monitor.label" for c in calls)
    assert collector.snapshot()["v1"]["outcomes"]["n"] == 1 and collector.snapshot()["v1"]["labels"] == 1
    # auth without feedback tokens: no feedback at all
    r, _, collector = make_router(monkeypatch, auth_record("app", predict_tokens=["${env:P}"], has_auth=True,
                                                           environ=ENV))  # fmt: skip
    (c,) = served(r, collector)
    status, body = feedback(r, {"request_id": c, "outcome": 1}, PREDICT)
    assert status == 403 and "no feedback_tokens" in body["error"]
    # feedback tokens: the label goes on, with the router's sampling decision
    force = {"header": "X-Raypipe-Variant", "token_header": "X-Raypipe-Force-Token"}
    rec = full_auth(force_token="${env:X}")
    r, calls, collector = make_router(monkeypatch, rec, force=force)
    r._monitor_rate = 0.5
    rids = served(r, collector, 40)
    (forced,) = served(r, collector, 1, **{"X-Raypipe-Variant": "v2", "X-Raypipe-Force-Token": FORCE})
    for rid in rids:
        status, body = feedback(r, {"request_id": rid, "label": "1"}, FEEDBACK)
        assert status == 200 and "warnings" not in body
    sent = [c for c in calls if c[0] == "monitor.label"]
    assert [c[1:] for c in sent] == [(rid, 1, r.auth.ids.sample(rid, 0.5)) for rid in rids]
    assert 0 < sum(c[3] for c in sent) < 40
    status, body = feedback(r, {"request_id": forced, "label": 2.5}, FEEDBACK)  # v2: a regression
    assert status == 200 and body["warnings"] == ["label of a request forced to its variant: not used for "
                                                   "performance drift"]  # fmt: skip
    assert len([c for c in calls if c[0] == "monitor.label"]) == 40


def test_feedback_label_is_checked_against_the_served_model(monkeypatch: pytest.MonkeyPatch) -> None:
    r, calls, collector = make_router(monkeypatch, full_auth())
    rid, rid2 = served(r, collector, 2)
    status, doc = feedback(r, {"request_id": rid, "label": 7}, FEEDBACK)  # not a class of v1's model: kept, warned
    assert status == 200 and doc["warnings"] == [
        "label 7 is not one of the model's classes (0, 1); recorded, and counted as a wrong prediction "
        "in performance drift"
    ]
    assert calls[-1][:3] == ("monitor.label", rid, 7)
    status, doc = feedback(r, {"request_id": rid2, "label": [1]}, FEEDBACK)
    assert status == 422 and doc["errors"][0]["field"] == "label"
    assert collector.snapshot()["v1"]["labels"] == 1


def test_feedback_collector_unavailable_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    r, calls, collector = make_router(monkeypatch, None)
    (rid,) = served(r, collector)

    def down(*args: Any) -> Any:
        raise ConnectionError("actor died")

    r._collector = _Fake(calls, "collector", feedback=down, lookup=down)
    for doc in ({"request_id": rid, "outcome": 1}, {"request_id": rid, "label": 1}):
        status, body = feedback(r, doc)
        assert status == 503 and "metrics collector unavailable" in body["error"]


def test_a_deploy_stage_keeps_its_references_for_the_deploy_to_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task resolves other stages' params; a deploy stage's references reach the deploy
    as written, which resolves them where used and stores only the references."""
    from raypipe.runner.task import stage_kind

    monkeypatch.setenv("RAYPIPE_TEST_TOKEN", PREDICT)
    params = {
        "app": "a",
        "model": "m",
        "variants": [{"version": 1, "weight": 100}],
        "auth": {"predict_tokens": ["${env:P}"], "feedback_tokens": ["${file:/run/secrets/fb}"]},
        "force_variant": {"token": "${env:X}"},
        "secret": "${env:S}",
    }
    kind = stage_kind({"kind": "deploy", "stage": "deploy", "params": params})
    spec = kind.serve_spec()  # type: ignore[attr-defined]
    assert spec.auth is not None and spec.auth.predict_tokens == ["${env:P}"] and spec.secret == "${env:S}"
    assert spec.force_variant is not None and spec.force_variant.token == "${env:X}"
    args = {"t": "${env:RAYPIPE_TEST_TOKEN}"}
    python = stage_kind({"kind": "python", "stage": "p", "params": {"function": "m:f", "args": args}})
    assert python.params.args == {"t": PREDICT}  # other kinds: resolved in the task
