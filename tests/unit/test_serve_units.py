"""Serving without Ray: request validation, the metrics collector's windows, app specs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raypipe._ray import serve_client
from raypipe.exceptions import ConfigError
from raypipe.serving.metrics import LATENCY_BUCKETS_MS, MetricsCollector, quantile
from raypipe.serving.spec import ServeSpec, load_spec, replica_resources
from raypipe.serving.validation import (
    Feedback,
    InputSchema,
    LabelSchema,
    RequestError,
    check_label,
    feedback_of,
    match_class,
    parse_json,
    rows_of,
)

SCHEMA = InputSchema.of(["a", "b", "n"], {"a": "float", "b": "double", "n": "int64"})


def errors(payload: object, key_field: str | None = None) -> list[dict[str, str]]:
    with pytest.raises(RequestError) as exc:
        rows_of(payload, SCHEMA, key_field)
    assert exc.value.status == 422
    return exc.value.errors


def test_rows_in_feature_order_single_and_batch() -> None:
    assert rows_of({"features": {"n": 2, "b": 1.5, "a": 0}}, SCHEMA) == ([[0.0, 1.5, 2]], True)
    rows, single = rows_of({"instances": [{"a": 1, "b": 2, "n": 3.0}, {"a": 4, "b": 5, "n": 6}]}, SCHEMA)
    assert rows == [[1.0, 2.0, 3], [4.0, 5.0, 6]] and not single
    assert rows_of({"features": {"a": 1, "b": 2, "n": 3}, "user_id": 7, "request_id": "r1"}, SCHEMA, "user_id")[1]


def test_malformed_json_is_400_with_the_place() -> None:
    for body, reason in [
        (b'{"features": {"a": 1,}', "at line 1 column"),
        (b"", "empty body"),
        (b'{"a": "\xc3\x28"}', "not UTF-8"),
    ]:
        with pytest.raises(RequestError) as exc:
            parse_json(body)
        assert exc.value.status == 400 and reason in exc.value.errors[0]["reason"]
    assert parse_json(b'{"a": NaN}')["a"] != parse_json(b'{"a": NaN}')["a"]  # refused later, as non-finite


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"features": {"a": 1, "b": 2}}, "features.n", "missing field"),
        ({"features": {"a": "1", "b": 2, "n": 3}}, "features.a", "expected a number (float), got string '1'"),
        ({"features": {"a": True, "b": 2, "n": 3}}, "features.a", "got boolean true"),
        ({"features": {"a": None, "b": 2, "n": 3}}, "features.a", "got null"),
        ({"features": {"a": 1, "b": math.inf, "n": 3}}, "features.b", "expected a finite number (double), got inf"),
        ({"features": {"a": 1, "b": 2, "n": 3.5}}, "features.n", "expected an integer (int64), got 3.5"),
        ({"features": {"a": 1, "b": 2, "n": 3, "z": 0}}, "features.z", "unknown field (not one of the model's 3"),
        ({"features": [1, 2, 3]}, "features", "expected an object of feature values, got array"),
        ({"instances": []}, "instances", "expected a non-empty array of rows"),
        ({"instances": [{"a": 1, "b": 2, "n": 3}, {"a": 1, "b": 2}]}, "instances[1].n", "missing field"),
        ({}, "features", "missing field (or `instances`"),
        ({"features": {"a": 1, "b": 2, "n": 3}, "extra": 1}, "extra", "unknown field; expected: features"),
        ([1, 2], "(body)", "expected a JSON object"),
    ],
)
def test_invalid_bodies_name_field_and_reason(payload: object, field: str, reason: str) -> None:
    errs = errors(payload)
    assert any(e["field"] == field and reason in e["reason"] for e in errs), errs


def test_every_problem_is_listed() -> None:
    errs = errors({"features": {"a": "x", "z": 1}})
    assert {e["field"] for e in errs} == {"features.a", "features.b", "features.n", "features.z"}


def test_feedback_bodies() -> None:
    assert feedback_of({"request_id": "r1", "outcome": 1}) == Feedback("r1", 1.0)
    assert feedback_of({"request_id": "r1", "outcome": False}) == Feedback("r1", 0.0)
    # a label alone, or with an outcome: two different fields, neither taken for the other
    assert feedback_of({"request_id": "r1", "label": 3}) == Feedback("r1", None, 3)
    assert feedback_of({"request_id": "r1", "label": "approved"}).fields == ["label"]
    fb = feedback_of({"request_id": "r1", "outcome": True, "label": False})
    assert fb == Feedback("r1", 1.0, False) and fb.fields == ["outcome", "label"]
    assert feedback_of({"request_id": "r1", "label": 0.25, "outcome": 0}).label == 0.25
    for body, field in [
        ({"outcome": 1}, "request_id"),
        ({"request_id": "r1"}, "outcome"),
        ({"request_id": "r1", "outcome": "yes"}, "outcome"),
        ({"request_id": "r1", "outcome": None}, "outcome"),
        ({"request_id": 5, "outcome": 1}, "request_id"),
        ({"request_id": "r1", "outcome": 1, "x": 2}, "x"),
        ({"request_id": "r1", "label": None}, "label"),
        ({"request_id": "r1", "label": [1]}, "label"),
        ({"request_id": "r1", "label": {"class": 1}}, "label"),
        ({"request_id": "r1", "label": ""}, "label"),
        ({"request_id": "r1", "label": "x" * 1025}, "label"),
        ({"request_id": "r1", "label": math.nan}, "label"),
        ({"request_id": "r1", "label": 10**400}, "label"),
        ({"request_id": "r1", "outcome": 1, "label": math.inf}, "label"),
        ({"request_id": "r1", "labels": 1}, "outcome"),  # neither field (and an unknown one)
    ]:
        with pytest.raises(RequestError) as exc:
            feedback_of(body)
        assert exc.value.status == 422 and exc.value.errors[0]["field"] == field, (body, exc.value.errors)
    with pytest.raises(RequestError) as exc:
        feedback_of({"request_id": "r1"})
    (err,) = exc.value.errors
    assert "`outcome`" in err["reason"] and "`label`" in err["reason"]
    with pytest.raises(RequestError) as exc:
        feedback_of({"request_id": "r1", "outcome": 1, "extra": 2})
    assert exc.value.errors == [{"field": "extra", "reason": "unknown field; expected: label, outcome, request_id"}]


DIGITS = LabelSchema.from_meta({"task": "classification", "classes": list(range(10))})
TEXT = LabelSchema.from_meta({"task": "classification", "classes": ["approved", "rejected"]})
BOOLS = LabelSchema.from_meta({"task": "classification", "classes": [False, True]})
PRICE = LabelSchema.from_meta({"task": "regression", "classes": None})


@pytest.mark.parametrize(
    ("value", "schema", "label"),
    [
        (3, DIGITS, 3),
        ("3", DIGITS, 3),  # the class a value names, as the model has it
        (3.0, DIGITS, 3),
        (True, DIGITS, 1),
        (False, DIGITS, 0),
        ("approved", TEXT, "approved"),
        (True, BOOLS, True),
        (1, BOOLS, True),
        ("false", BOOLS, False),
        (0, BOOLS, False),
        (2.5, PRICE, 2.5),
        (-3, PRICE, -3.0),
        ("anything", LabelSchema(), "anything"),  # a model of unknown task: taken as it is
    ],
)
def test_labels_name_the_models_classes(value: object, schema: LabelSchema, label: object) -> None:
    got, warning = check_label(value, schema)  # type: ignore[arg-type]
    assert got == label and type(got) is type(label) and warning is None


@pytest.mark.parametrize(
    ("value", "schema"),
    [(11, DIGITS), ("cat", DIGITS), (2.5, DIGITS), ("maybe", TEXT), (1, TEXT), (2, BOOLS)],
)
def test_a_label_outside_the_classes_is_kept_with_a_warning(value: object, schema: LabelSchema) -> None:
    got, warning = check_label(value, schema)  # type: ignore[arg-type]
    assert got == value and warning is not None
    assert "not one of the model's classes" in warning and "counted as a wrong prediction" in warning
    assert warning.startswith(f"label {json.dumps(value)} ")


def test_a_regression_label_is_a_finite_number() -> None:
    for value in ("3.5", True, "high"):
        with pytest.raises(RequestError) as exc:
            check_label(value, PRICE)  # type: ignore[arg-type]
        (err,) = exc.value.errors
        assert exc.value.status == 422 and err["field"] == "label" and "regression" in err["reason"]


def test_label_schema_of_model_meta() -> None:
    digits = LabelSchema.from_meta({"task": "classification", "classes": [0, 1]})
    assert digits == LabelSchema("classification", (0, 1))
    assert LabelSchema.from_meta({"classes": ["a", "b"]}).task == "classification"  # classes: a classifier
    assert LabelSchema.from_meta({"task": "regression", "classes": None}) == LabelSchema("regression", None)
    assert LabelSchema.from_meta({}) == LabelSchema() and LabelSchema.from_meta(None) == LabelSchema()
    assert LabelSchema.from_meta(DIGITS.to_dict()) == DIGITS  # through the variant's handle
    assert match_class(np.int64(3), [0, 1, 2, 3]) == (True, 3)
    assert match_class("x", [0, 1]) == (False, "x")


def event(rid: str, variant: str, ts: float, ok: bool = True, lat: float = 3.0, shadow: bool = False) -> dict:
    return {
        "request_id": rid,
        "variant": variant,
        "ok": ok,
        "status": 200 if ok else 500,
        "latency_ms": lat,
        "ts": ts,
        "shadow": shadow,
        "key": None,
    }


def test_collector_counts_windows_and_outcomes() -> None:
    c = MetricsCollector("app", export=False)
    now = time.time()
    c.record([event(f"old{i}", "v1", now - 100) for i in range(10)])
    c.record([event(f"r{i}", "v1", now, ok=i % 10 != 0, lat=1.0 + i % 5) for i in range(100)])
    c.record([event(f"s{i}", "v2", now, shadow=True, ok=i % 2 == 0) for i in range(20)])
    snap = c.snapshot()
    assert snap["v1"]["requests"] == 110 and snap["v1"]["errors"] == 10
    assert snap["v2"]["requests"] == 0 and snap["v2"]["shadow_requests"] == 20 and snap["v2"]["shadow_errors"] == 10
    recent = c.snapshot(since=now - 10)
    assert recent["v1"]["requests"] == 100
    assert sum(recent["v1"]["latency_ms"]["counts"]) == 100
    assert 2.0 <= recent["v1"]["latency_ms"]["p50"] <= 4.0
    assert recent["v1"]["latency_ms"]["buckets"][-1] == "inf"
    assert c.feedback("r1", 1.0) and c.feedback("r2", 0.0) and c.feedback("r3", -2.5)
    assert not c.feedback("nope", 1.0)
    assert not c.feedback("s1", 1.0)  # shadow copies are not served requests
    out = c.snapshot()["v1"]["outcomes"]
    assert out == {"n": 3, "sum": -1.5, "sumsq": 1 + 0 + 6.25, "positives": 1}
    assert c.feedback("r3", 1.0)  # again: replaces the earlier outcome
    assert c.snapshot()["v1"]["outcomes"] == {"n": 3, "sum": 2.0, "sumsq": 2.0, "positives": 2}


def test_collector_counts_labels_apart_from_outcomes() -> None:
    c = MetricsCollector("app", export=False)
    now = time.time()
    c.record([event(f"r{i}", "v1" if i < 5 else "v2", now) for i in range(10)])
    assert c.variant_of("r1") == "v1" and c.variant_of("r7") == "v2" and c.variant_of("nope") is None
    assert c.snapshot()["v1"]["labels"] == 0
    assert c.feedback("r1", None, label=True)  # a label only: no outcome
    assert c.feedback("r1", None, label=True)  # again: one label per request
    assert c.feedback("r2", 0.0, label=True)  # both
    assert c.feedback("r3", 1.0)  # an outcome only (an old client): no label
    assert c.feedback("r6", None, label=True)
    assert not c.feedback("nope", None, label=True)
    snap = c.snapshot()
    assert snap["v1"]["labels"] == 2 and snap["v2"]["labels"] == 1
    assert snap["v1"]["outcomes"] == {"n": 2, "sum": 1.0, "sumsq": 1.0, "positives": 1}
    assert snap["v2"]["outcomes"]["n"] == 0
    assert c.snapshot(since=now + 3600)["v1"]["labels"] == 0  # windowed like the rest


def test_collector_memory_is_bounded() -> None:
    c = MetricsCollector("app", max_ids=50, retain_s=60, export=False)
    now = time.time()
    c.record([event(f"r{i}", "v1", now) for i in range(200)])
    assert c.known_ids() == 50
    assert not c.feedback("r0", 1.0) and c.feedback("r199", 1.0)
    c.record([event("ancient", "v1", now - 3600)])
    c._pruned_at = 0.0
    c._maybe_prune()
    assert min(c._buckets["v1"]) >= int(now - 61)
    assert c.snapshot()["v1"]["requests"] == 201  # folded into the all-time remainder
    assert c.snapshot(since=now - 30)["v1"]["requests"] == 200


def test_quantile_interpolates_in_buckets() -> None:
    bounds = (1.0, 2.0, 4.0, math.inf)
    assert quantile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(1.5)
    assert quantile(bounds, [0, 0, 0, 5], 0.99) == 4.0
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert LATENCY_BUCKETS_MS[0] == 0.25 and math.isinf(LATENCY_BUCKETS_MS[-1])


def spec(**kw: object) -> dict:
    base = {
        "app": "digits",
        "model": "digits",
        "variants": [{"version": 3, "weight": 90}, {"version": "@c", "weight": 10}],
    }
    return {**base, **kw}


def test_spec_defaults_and_resources() -> None:
    s = ServeSpec.model_validate(spec(key={"header": "X-User-Id"}, shadow={"variant": "@c"}))
    assert s.prefix == "/digits" and s.port == 8000 and s.reserve
    assert s.variants[0].ray_actor_options == {"num_cpus": 0.5}
    r = replica_resources({"num_cpus": 1, "num_gpus": 0.5, "memory": 2**30, "resources": {"TPU": 1}})
    assert (r.cpu, r.gpu, r.memory_mb, r.custom_dict) == (1.0, 0.5, 1024.0, {"TPU": 1.0})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (spec(variants=[{"version": 3, "weight": 90}, {"version": 4, "weight": 20}]), "weights must sum to 100"),
        (spec(variants=[{"version": 3, "weight": 50}, {"version": "v3", "weight": 50}]), "v3 listed more than once"),
        (spec(key={"header": "X-A", "field": "u"}), "exactly one of `header`"),
        (spec(shadow={"variant": "v9"}), "shadow: 'v9' is not one of the variants"),
        (spec(variants=[{"version": "latest", "weight": 100}]), "expected a version number, v<N> or @ALIAS"),
        (
            spec(variants=[{"version": 3, "weight": 100, "ray_actor_options": {"num_cpu": 1}}]),
            "unknown ray_actor_options",
        ),
        (spec(route_prefix="digits"), "expected a path like /digits"),
        (spec(colour=1), "Extra inputs are not permitted"),
    ],
)
def test_spec_errors(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=None) as exc:
        ServeSpec.model_validate(data)
    assert message in str(exc.value)


def test_spec_file_errors_name_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "app.yaml"
    p.write_text("app: digits\nmodel: digits\nvariants:\n  - {version: 1, weight: 100, replicas: 0}\n")
    with pytest.raises(ConfigError) as exc:
        load_spec(p)
    assert f"{p}:4 variants[0].replicas" in str(exc.value)
    p.write_text("app: digits\nmodel: digits\nvariants:\n  - {version: 1, weight: 100}\n")
    assert load_spec(p).variants[0].version == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        # found by tests/integration/test_fuzz_http.py: each was an uncaught error (a 500)
        (b'{"features": {"a": %d, "b": 1, "n": 1}}' % 10**400, 422, "features.a"),  # OverflowError
        (b'{"features": {"a": 1, "b": 1, "n": %d}}' % 10**400, 422, "features.n"),  # beyond 64 bits
        (b'{"request_id": "r", "outcome": %d}' % 10**400, 422, "outcome"),  # OverflowError
        (b'{"features": {"a": ' + b"9" * 5000 + b"}}", 400, "(body)"),  # ValueError: > 4300 digits
    ],
)
def test_numbers_no_float_holds_are_client_errors(body: bytes, status: int, field: str) -> None:
    with pytest.raises(RequestError) as exc:
        payload = parse_json(body)
        feedback_of(payload) if "outcome" in payload else rows_of(payload, SCHEMA)
    assert exc.value.status == status and exc.value.errors[0]["field"] == field, exc.value.errors
    assert "digits" in exc.value.errors[0]["reason"]


def test_serve_client_of_another_cluster_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new local Ray in the same process reuses job id 01000000: Serve's own check passes a
    client whose controller is gone; raypipe drops it when the cluster (GCS address) changed."""
    from ray.serve import context

    fake = object()
    monkeypatch.setattr(context, "_global_client", fake)
    monkeypatch.setitem(serve_client._CLIENT_CLUSTER, "gcs", "10.0.0.1:6379")
    assert not serve_client.forget_stale_client("10.0.0.1:6379") and context._global_client is fake
    assert serve_client.forget_stale_client("10.0.0.1:6380")
    assert context._global_client is None and serve_client._CLIENT_CLUSTER["gcs"] is None
    assert not serve_client.forget_stale_client("10.0.0.1:6380")  # nothing cached: nothing to drop


# --------------------------------------------------------------------------- /feedback routing


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
    def __init__(self, doc: Any) -> None:
        self.data = json.dumps(doc).encode()
        self.headers = {"content-length": str(len(self.data))}

    async def stream(self) -> Any:
        yield self.data


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[tuple], MetricsCollector]:
    """A Router (no Ray) whose collector is a real MetricsCollector and whose monitor and
    variant handles record their calls."""
    from raypipe.serving import deployments

    monkeypatch.setattr(deployments, "FLUSH_S", 0.0)  # no waiting for other replicas' events
    calls: list[tuple] = []
    collector = MetricsCollector("app", export=False)
    collector.record([event("r1", "v1", time.time()), event("r2", "v1", time.time()), event("r3", "v2", time.time())])
    variant = {"version": 1, "sha256": "x", "features": ["a"], "input_schema": {"a": "double"}, "replicas": 1}
    handles = {
        "v1": _Fake(calls, "v1", label_schema=lambda: {"task": "classification", "classes": [0, 1]}),
        "v2": _Fake(calls, "v2", label_schema=lambda: {"task": "regression", "classes": None}),
    }
    r = deployments.Router(
        {"app": "app", "model": "m", "collector": "c", "variants": {"v1": variant, "v2": {**variant, "version": 2}}},
        **handles,
    )
    r._collector = _Fake(calls, "collector", feedback=collector.feedback, variant_of=collector.variant_of)
    r._monitor = _Fake(calls, "monitor", label=lambda rid, y: True)
    return r, calls, collector


def _post(r: Any, doc: Any) -> tuple[int, dict]:
    import asyncio

    resp = asyncio.run(r._feedback(_Request(doc)))
    return resp.status_code, json.loads(resp.body)


def test_feedback_outcome_goes_to_the_collector_only(router: tuple[Any, list[tuple], MetricsCollector]) -> None:
    r, calls, collector = router
    assert _post(r, {"request_id": "r1", "outcome": 1}) == (
        200,
        {"request_id": "r1", "recorded": True, "received": ["outcome"]},
    )
    assert [c[0] for c in calls] == ["collector.feedback"]  # never the monitor, never as a label
    assert collector.snapshot()["v1"]["outcomes"]["n"] == 1 and collector.snapshot()["v1"]["labels"] == 0


def test_feedback_label_goes_to_the_monitor_only(router: tuple[Any, list[tuple], MetricsCollector]) -> None:
    r, calls, collector = router
    assert _post(r, {"request_id": "r1", "label": "1"}) == (
        200,
        {"request_id": "r1", "recorded": True, "received": ["label"]},
    )
    # the served variant, its model's classes (asked once), the label count, the monitor with the class
    assert calls == [
        ("collector.variant_of", "r1"),
        ("v1.label_schema",),
        ("collector.feedback", "r1", None, True),
        ("monitor.label", "r1", 1),
    ]
    snap = collector.snapshot()["v1"]
    assert snap["labels"] == 1 and snap["outcomes"]["n"] == 0  # a label is no outcome
    calls.clear()
    assert _post(r, {"request_id": "r2", "label": True, "outcome": 0.0})[0] == 200  # both: both
    assert calls == [
        ("collector.variant_of", "r2"),
        ("collector.feedback", "r2", 0.0, True),
        ("monitor.label", "r2", 1),
    ]
    snap = collector.snapshot()["v1"]
    assert snap["labels"] == 2 and snap["outcomes"] == {"n": 1, "sum": 0.0, "sumsq": 0.0, "positives": 0}


def test_feedback_label_is_checked_against_the_served_model(
    router: tuple[Any, list[tuple], MetricsCollector],
) -> None:
    r, calls, collector = router
    status, doc = _post(r, {"request_id": "r1", "label": 7})  # not a class of v1's model: kept, warned
    assert status == 200 and doc["warnings"] == [
        "label 7 is not one of the model's classes (0, 1); recorded, and counted as a wrong prediction "
        "in performance drift"
    ]
    assert calls[-1] == ("monitor.label", "r1", 7)
    calls.clear()
    status, doc = _post(r, {"request_id": "r3", "label": "high", "outcome": 1})  # v2 is a regression
    assert status == 422 and doc["errors"][0]["field"] == "label" and "regression" in doc["errors"][0]["reason"]
    assert [c[0] for c in calls] == ["collector.variant_of", "v2.label_schema"]  # nothing recorded
    assert collector.snapshot()["v2"]["outcomes"]["n"] == 0 and collector.snapshot()["v2"]["labels"] == 0
    assert _post(r, {"request_id": "r3", "label": 12.5})[0] == 200
    assert calls[-1] == ("monitor.label", "r3", 12.5)


def test_feedback_unknown_ids_bad_bodies_and_no_monitor(router: tuple[Any, list[tuple], MetricsCollector]) -> None:
    r, calls, collector = router
    for doc in ({"request_id": "nope", "outcome": 1}, {"request_id": "nope", "label": 1}):
        status, body = _post(r, doc)
        assert status == 404 and "unknown request id 'nope'" in body["error"]
    status, body = _post(r, {"request_id": "r1"})
    assert status == 422 and body["errors"][0]["field"] == "outcome"
    assert not any(c[0] == "monitor.label" for c in calls)
    r._monitor = None  # no drift monitor: the label is still checked and counted
    assert _post(r, {"request_id": "r1", "label": 0})[0] == 200
    assert collector.snapshot()["v1"]["labels"] == 1


def test_feedback_collector_unavailable_is_503(router: tuple[Any, list[tuple], MetricsCollector]) -> None:
    r, calls, _ = router

    def down(*args: Any) -> Any:
        raise ConnectionError("actor died")

    r._collector = _Fake(calls, "collector", feedback=down, variant_of=down)
    for doc in ({"request_id": "r1", "outcome": 1}, {"request_id": "r1", "label": 1}):
        status, body = _post(r, doc)
        assert status == 503 and "metrics collector unavailable" in body["error"]
