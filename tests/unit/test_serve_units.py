"""Serving without Ray: request validation, the metrics collector's windows, app specs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from raypipe._ray import serve_client
from raypipe.exceptions import ConfigError
from raypipe.serving.metrics import LATENCY_BUCKETS_MS, quantile
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
        (spec(force_header="X-V"), "force_variant: {header: X-Raypipe-Variant, token: ${env:NAME}}"),
        (spec(auth={"predict_tokens": ["s3cret-token-in-yaml"]}), "expected a secret reference"),
        (spec(auth={}), "give predict_tokens, feedback_tokens or both"),
        (spec(force_variant={"token": "plain"}), "expected a secret reference"),
        (spec(secret="k"), "expected a secret reference"),
        (spec(feedback={"on_repeat": "sum"}), "'reject' or 'replace'"),
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


def test_every_deployment_of_an_app_is_health_checked_every_2_s() -> None:
    """A replica whose process died is replaced at its next health check: every deployment of a
    routed app (the router and each variant) is checked every 2 s, not Serve's 10."""
    from raypipe.serving.deployments import HEALTH_CHECK_PERIOD_S, build_app

    opts = {"num_cpus": 0.1}
    variant = {"ray_actor_options": opts, "max_ongoing_requests": 8, "replicas": 1, "model": {}}
    args = {
        "mode": "routed",
        "router": {},
        "ingress": {"replicas": 1, "ray_actor_options": opts, "max_ongoing_requests": 8},
        "variants": {"v1": variant, "v2": variant},
    }
    app = build_app(args)
    router = app._bound_deployment
    variants = [a._bound_deployment for a in router.init_kwargs.values()]
    assert HEALTH_CHECK_PERIOD_S == 2.0
    assert [d.name for d in variants] == ["v1", "v2"]
    for d in [router, *variants]:
        assert d._deployment_config.health_check_period_s == HEALTH_CHECK_PERIOD_S, d.name
