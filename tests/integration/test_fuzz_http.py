"""Bad-input suite, serving: hypothesis-generated HTTP requests against ONE real Serve app
on 127.0.0.1 (two registered digits MLPs, v1 routed, v2 its shadow, sticky on the body
field ``user``; a bearer token for /predict and /feedback, forcing a variant enabled with
its own token).  The session sends the app's token; the auth tests send anything else.

The request schema comes from the app itself: ``GET /metadata`` names the variants, the
key field and the forced-variant header; the features and their types are the served
model's (its package's ``features`` and ``input_schema``, as the router reads them;
/metadata's feature count is checked against them).  Client mistakes (malformed or
non-JSON bodies, wrong types, missing / extra / unknown fields, NaN, huge numbers,
nested junk, wrong methods and content types, unknown paths and variants, bad feedback)
must get a 4xx, never a 5xx; valid requests get a 200 whose body has the prediction.

The count of requests by class and status is printed at the end (``pytest -s``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from raypipe.serving import app as serving
from raypipe.serving.resolve import resolve
from raypipe.serving.spec import ServeSpec
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from tests.conftest import free_port
from tests.fuzzing import FUZZ, examples
from tests.integration.serve_funcs import register_digits, sample_rows

pytestmark = pytest.mark.slow

APP = "fuzz"
TOKEN = "fuzz-token-6c1f0b8e2d9a4f7e"
FORCE_TOKEN = "fuzz-force-5b2e9d0c7a1f3e8b"
SENT: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def app(ray_local: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The app, its request schema (from /metadata and the served model) and a session."""
    root = tmp_path_factory.mktemp("fuzz_http")
    db = register_digits(root, versions=2)
    (root / "token").write_text(TOKEN + "\n")
    (root / "force").write_text(FORCE_TOKEN)
    opts = {"num_cpus": 0.1}
    spec = ServeSpec.model_validate(
        {
            "app": APP,
            "model": "digits",
            "variants": [
                {"version": 1, "weight": 100, "ray_actor_options": opts},
                {"version": 2, "weight": 0, "ray_actor_options": opts},
            ],
            "shadow": {"variant": 2},
            "key": {"field": "user"},
            "auth": {"predict_tokens": [f"${{file:{root}/token}}"], "feedback_tokens": [f"${{file:{root}/token}}"]},
            "force_variant": {"token": f"${{file:{root}/force}}"},
            "port": free_port(),
            "reserve": False,
            "ingress": {"ray_actor_options": opts},
        }
    )
    serving.deploy(spec, db=db)
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {TOKEN}"
    url = serving.url(APP)
    meta = s.get(f"{url}/metadata", timeout=30).json()
    store = MetadataStore(db)
    try:
        resolved = {r.label: r for r in resolve(spec, ModelRegistry(store))}
    finally:
        store.close()
    schema = {}
    for label, v in meta["variants"].items():
        m = resolved[label].meta
        assert v["features"] == len(m["features"])  # /metadata counts what the model takes
        schema[label] = {"features": list(m["features"]), "types": dict(m.get("input_schema") or {})}
    first = schema[next(iter(schema))]
    assert all(sc == first for sc in schema.values())  # the two versions take the same rows
    yield {
        "url": url,
        "session": s,
        "meta": meta,
        "features": first["features"],
        "types": first["types"],
        "variants": list(meta["variants"]),
        "key_field": meta["key"]["field"],
        "force_header": meta["force_header"],
        "served_ids": [],
    }
    s.close()
    serving.shutdown(APP)
    from ray import serve

    serve.shutdown()


# ------------------------------------------------------------------ requests from the schema

FEATURES = [f"px{i}" for i in range(64)]  # the digits models' (the strategies take the app's)
finite = st.one_of(
    st.floats(min_value=0, max_value=16),
    st.integers(0, 16),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53),
)
junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
#: JSON texts of values a float feature must refuse (a token as it appears in the body).
BAD_VALUES = st.one_of(
    st.sampled_from(['"NaN"', '"1.0"', '"inf"', "NaN", "Infinity", "-Infinity", "1e400", "-1e999", "true", "null"]),
    st.sampled_from(["[]", "{}", "[1]", '{"v": 1}', '""', "false"]),
    st.builds(lambda n: str(10**n), st.integers(309, 4000)),  # an integer no float holds
    st.builds(json.dumps, st.text(max_size=10)),
)


def _row(draw: st.DrawFn, features: list[str]) -> dict[str, Any]:
    return {f: draw(finite) for f in features}


@st.composite
def valid_predict(draw: st.DrawFn, features: list[str], key_field: str) -> dict[str, Any]:
    """A body the API must answer with 200: one row or a batch, optional key and id."""
    if draw(st.booleans()):
        body: dict[str, Any] = {"features": _row(draw, features)}
    else:
        body = {"instances": [_row(draw, features) for _ in range(draw(st.integers(1, 4)))]}
    if draw(st.booleans()):
        body[key_field] = draw(
            st.one_of(
                st.text(max_size=20), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans()
            )
        )
    if draw(st.booleans()):
        body["request_id"] = draw(st.text(min_size=1, max_size=128))
    return body


def _text(body: dict[str, Any]) -> str:
    return json.dumps(body, allow_nan=False)


@st.composite
def invalid_predict(draw: st.DrawFn, features: list[str], key_field: str) -> tuple[str, str]:
    """(what, JSON text) of a /predict body with at least one client mistake."""
    rows = [_row(draw, features) for _ in range(2)]
    base: dict[str, Any] = {"features": rows[0]}
    what = draw(
        st.sampled_from(
            [
                "missing feature",
                "unknown feature",
                "bad value",
                "bad value in batch",
                "both",
                "neither",
                "empty batch",
                "batch not a list",
                "row not an object",
                "unknown top-level",
                "bad request_id",
                "bad key",
                "not an object",
                "too many rows",
            ]
        )
    )
    f = draw(st.sampled_from(features))
    if what == "missing feature":
        for g in draw(st.lists(st.sampled_from(features), min_size=1, max_size=len(features), unique=True)):
            rows[0].pop(g)
    elif what == "unknown feature":
        rows[0][draw(st.text(max_size=8).filter(lambda k: k not in features))] = draw(junk)
    elif what == "bad value":  # the token goes into the JSON text as is
        rows[0][f] = "__BAD__"
        return what, json.dumps(base).replace('"__BAD__"', draw(BAD_VALUES), 1)
    elif what == "bad value in batch":
        rows[1][f] = draw(junk.filter(lambda v: isinstance(v, (str, list, dict, bool)) or v is None))
        base = {"instances": rows}
    elif what == "both":
        base = {"features": rows[0], "instances": rows}
    elif what == "neither":
        base = {draw(st.sampled_from(["feature", "rows", "data", key_field])): rows[0]}
    elif what == "empty batch":
        base = {"instances": draw(st.sampled_from([[], {}, None, 0, ""]))}
    elif what == "batch not a list":
        base = {"instances": draw(st.one_of(st.just(rows[0]), st.text(max_size=5), st.integers()))}
    elif what == "row not an object":
        base = {"features": draw(junk.filter(lambda v: not isinstance(v, dict)))}
    elif what == "unknown top-level":
        base[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("features", key_field, "request_id")))] = (
            draw(junk)
        )
    elif what == "bad request_id":
        base["request_id"] = draw(
            st.one_of(st.just(""), st.text(min_size=129, max_size=200), st.integers(), junk).filter(
                lambda v: v is not None and not (isinstance(v, str) and 0 < len(v) <= 128)
            )
        )
    elif what == "bad key":
        base[key_field] = draw(st.one_of(st.lists(junk, max_size=2), st.dictionaries(st.text(max_size=3), junk)))
    elif what == "not an object":
        return what, json.dumps(draw(junk.filter(lambda v: not isinstance(v, dict))))
    else:
        base = {"instances": [rows[0]] * 1025}
    return what, json.dumps(base)


@st.composite
def bad_feedback(draw: st.DrawFn) -> tuple[str, str]:
    """(what, JSON text) of a /feedback body, nearly always with a client mistake."""
    body: dict[str, Any] = {"request_id": "r-1", "outcome": 1.0}
    what = draw(
        st.sampled_from(
            [
                "no id",
                "neither",
                "bad id",
                "forged id",
                "bad outcome",
                "bad label",
                "extra",
                "not an object",
                "token",
                "label token",
            ]
        )
    )
    if draw(st.booleans()):  # a label too (or instead of the outcome)
        body["label"] = draw(st.one_of(st.integers(0, 9), st.sampled_from(["3", "cat", True])))
        if draw(st.booleans()):
            body.pop("outcome")
    if what == "no id":
        body.pop("request_id")
    elif what == "neither":
        body.pop("outcome", None)
        body.pop("label", None)
    elif what == "bad id":
        body["request_id"] = draw(
            st.one_of(st.just(""), st.text(min_size=129, max_size=150), st.integers(), junk).filter(
                lambda v: not (isinstance(v, str) and 0 < len(v) <= 128)
            )
        )
    elif what == "forged id":  # the form of the app's ids, not signed by it
        parts = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x17F), max_size=30)
        body["request_id"] = "r1." + ".".join(draw(st.lists(parts, min_size=1, max_size=4)))[:120]
    elif what == "bad outcome":
        body["outcome"] = draw(junk.filter(lambda v: not isinstance(v, (int, float))))
    elif what == "bad label":
        body["label"] = draw(junk.filter(lambda v: not _label(v)))
    elif what == "extra":
        body[draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in FEEDBACK_FIELDS))] = draw(junk)
    elif what == "not an object":
        return what, json.dumps(draw(junk.filter(lambda v: not isinstance(v, dict))))
    elif what == "token":  # a token where the number goes (`true` and `false` are fine outcomes)
        body["outcome"] = "__BAD__"
        return what, json.dumps(body).replace('"__BAD__"', draw(BAD_VALUES), 1)
    else:  # a token where the label goes: only a few are fine labels (true, false, a text)
        body["label"] = "__BAD__"
        return what, json.dumps(body).replace('"__BAD__"', draw(BAD_VALUES), 1)
    return what, json.dumps(body)


FEEDBACK_FIELDS = ("request_id", "outcome", "label")


def _finite(v: Any) -> bool:
    try:
        return isinstance(v, (int, float)) and math.isfinite(v)
    except OverflowError:
        return False


def _label(v: Any) -> bool:
    """Whether ``v`` is a well-formed /feedback label (before the served model checks it)."""
    return isinstance(v, bool) or _finite(v) or (isinstance(v, str) and 0 < len(v) <= 1024)


def _valid_feedback(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and set(doc) <= set(FEEDBACK_FIELDS)
        and ("outcome" in doc or "label" in doc)
        and isinstance(doc.get("request_id"), str)
        and 0 < len(doc["request_id"]) <= 128
        and ("outcome" not in doc or _finite(doc["outcome"]))
        and ("label" not in doc or _label(doc["label"]))
    )


# ------------------------------------------------------------------ sending


def send(app: dict[str, Any], cls: str, method: str, path: str, data: bytes | None = None, **headers: str) -> Any:
    r = app["session"].request(method, app["url"] + path, data=data, headers=headers, timeout=60)
    SENT[(cls, r.status_code)] += 1
    assert r.status_code < 500, f"{cls}: {method} {path} {data[:300] if data else data!r} -> {r.status_code} {r.text}"
    return r


def check_client_error(r: Any, cls: str, statuses: tuple[int, ...] = (400, 422)) -> None:
    assert r.status_code in statuses, (cls, r.status_code, r.text)
    doc = r.json()
    assert doc.get("error"), doc
    if r.status_code in (400, 422):
        assert doc["errors"] and all(e["field"] and e["reason"] for e in doc["errors"]), doc


def test_schema_from_metadata(app: dict[str, Any]) -> None:
    assert app["features"] == FEATURES and set(app["types"].values()) == {"float"}
    assert app["variants"] == ["v1", "v2"] and app["meta"]["shadow"] == "v2"
    assert app["key_field"] == "user" and app["force_header"] == "X-Raypipe-Variant"
    assert app["meta"]["auth"] == {"predict": True, "feedback": True}


@settings(FUZZ, max_examples=examples(80))
@given(data=st.data(), ctype=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form"]))
def test_valid_predictions(app: dict[str, Any], data: st.DataObject, ctype: str) -> None:
    body = data.draw(valid_predict(app["features"], app["key_field"]))
    headers = {"Content-Type": ctype} if ctype else {}
    r = send(app, "valid predict", "POST", "/predict", _text(body).encode(), **headers)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["variant"] == "v1" and doc["version"] == 1 and doc["request_id"]
    if "features" in body:
        assert doc["prediction"] in range(10)
    else:
        assert len(doc["predictions"]) == len(body["instances"])
    if "request_id" in body:  # the client's id is a correlation field; the request id is the app's
        assert doc["client_id"] == body["request_id"] and doc["request_id"] != body["request_id"]
    assert doc["request_id"].startswith("r1.")
    app["served_ids"].append(doc["request_id"])


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_invalid_predict_bodies(app: dict[str, Any], data: st.DataObject) -> None:
    what, text = data.draw(invalid_predict(app["features"], app["key_field"]))
    r = send(app, "invalid predict", "POST", "/predict", text.encode("utf-8"))
    # 1,025 rows of 64 features can pass the body limit (1 MiB) before the row limit: 413
    check_client_error(r, what, (400, 413, 422) if what == "too many rows" else (400, 422))


@settings(FUZZ, max_examples=examples(40))
@given(data=st.one_of(st.binary(max_size=60), st.sampled_from([b"", b"   ", b"{", b'{"features": ', b"\xff\xfe{}"])))
def test_non_json_bodies(app: dict[str, Any], data: bytes) -> None:
    r = send(app, "raw bytes", "POST", "/predict", data, **{"Content-Type": "application/octet-stream"})
    try:
        json.loads(data)
        parses = True
    except ValueError:
        parses = False
    check_client_error(r, "raw bytes", (422,) if parses else (400,))


@settings(FUZZ, max_examples=examples(40))
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(["/predict", "/feedback", "/health", "/metadata", "/predict/", "/", ""]),
        st.lists(st.text("abcxyz019._-~", min_size=1, max_size=8), min_size=1, max_size=3).map(
            lambda p: "/" + "/".join(p)
        ),
    ),
)
def test_methods_and_paths(app: dict[str, Any], method: str, path: str) -> None:
    r = send(app, "method/path", method, path, b"{}")
    route = path.rstrip("/") or "/"
    ok = {("GET", "/health"), ("GET", "/metadata")}
    if (method, route) in ok:
        assert r.status_code == 200, r.text
    elif route in ("/predict", "/feedback") and method == "POST":
        assert r.status_code == 422, r.text  # `{}` is not a valid body
    elif route in ("/predict", "/feedback"):
        assert r.status_code == 405, r.text
    else:
        assert r.status_code == 404, r.text


@settings(FUZZ, max_examples=examples(40))
@given(
    value=st.one_of(
        st.sampled_from(["v1", "v2", "v3", "V1", "1", "production", "@production", "v1,v2"]),
        # what a header value can carry: visible latin-1 and spaces
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=12),
    )
)
def test_forced_variant_header(app: dict[str, Any], value: str) -> None:
    value = value.strip()  # a header value has no surrounding whitespace
    body = json.dumps({"features": sample_rows(1)[0]}).encode()
    force = {"X-Raypipe-Variant": value, "X-Raypipe-Force-Token": FORCE_TOKEN}
    if value:  # without its token, or with another: refused whatever it names
        r = send(app, "forced variant", "POST", "/predict", body, **{"X-Raypipe-Variant": value})
        check_client_error(r, "forced variant", (401,))
        r = send(app, "forced variant", "POST", "/predict", body, **{**force, "X-Raypipe-Force-Token": TOKEN})
        check_client_error(r, "forced variant", (403,))
    r = send(app, "forced variant", "POST", "/predict", body, **force)
    if value in ("v1", "v2"):
        assert r.status_code == 200 and r.json()["variant"] == value, r.text
    elif not value:  # no header: routed as usual
        assert r.status_code == 200 and r.json()["variant"] == "v1", r.text
    else:
        check_client_error(r, "forced variant", (400,))


@settings(FUZZ, max_examples=examples(60))
@given(case=bad_feedback())
def test_bad_feedback(app: dict[str, Any], case: tuple[str, str]) -> None:
    what, text = case
    r = send(app, "bad feedback", "POST", "/feedback", text.encode())
    try:
        doc = json.loads(text) if text.strip() else None
    except ValueError:  # a token no JSON parser takes (an integer of > 4300 digits): a 400
        doc = None
    if _valid_feedback(doc):  # a well-formed feedback after all: its id is not one the app issued
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "request_id", r.text
    else:
        check_client_error(r, what)


def test_feedback_of_served_requests(app: dict[str, Any]) -> None:
    """``outcome`` (a business result) and ``label`` (the true class, checked against the
    digits model's classes 0..9), alone or together; the collector counts each apart."""
    import ray

    from raypipe.serving.metrics import get_collector

    row = sample_rows(1)[0]
    ids = []
    for i in range(30):
        r = send(app, "predict", "POST", "/predict", json.dumps({"features": row, "request_id": f"c-{i}"}).encode())
        assert r.status_code == 200 and r.json()["variant"] == "v1", r.text
        ids.append(r.json()["request_id"])

    none = {"outcomes": {"n": 0}, "labels": 0}
    before = ray.get(get_collector(APP).snapshot.remote()).get("v1", none)
    for i, rid in enumerate(ids[:10]):
        outcome: Any = [1, 0.5, True, False, -3][i % 5]
        r = send(app, "feedback", "POST", "/feedback", json.dumps({"request_id": rid, "outcome": outcome}).encode())
        assert r.status_code == 200, r.text
        assert r.json() == {"request_id": rid, "recorded": True, "received": ["outcome"]}, r.text
    for i, rid in enumerate(ids[10:20]):
        label: Any = [3, "7", 2.0, True, 0][i % 5]
        r = send(app, "feedback", "POST", "/feedback", json.dumps({"request_id": rid, "label": label}).encode())
        assert r.status_code == 200 and r.json() == {"request_id": rid, "recorded": True, "received": ["label"]}
    for rid in ids[20:25]:
        r = send(
            app, "feedback", "POST", "/feedback", json.dumps({"request_id": rid, "outcome": 1, "label": 4}).encode()
        )
        assert r.status_code == 200 and r.json()["received"] == ["outcome", "label"], r.text
    # a label the model has no class for: recorded, with a warning naming the classes
    for rid, label in zip(ids[25:27], [11, "cat"], strict=True):
        r = send(app, "feedback", "POST", "/feedback", json.dumps({"request_id": rid, "label": label}).encode())
        assert r.status_code == 200, r.text
        (warning,) = r.json()["warnings"]
        assert "not one of the model's classes (0, 1, 2" in warning and "wrong prediction" in warning
    # a label that is no value at all: 422, and its outcome is not recorded either
    r = send(
        app, "feedback", "POST", "/feedback", json.dumps({"request_id": ids[27], "outcome": 1, "label": None}).encode()
    )
    check_client_error(r, "feedback", (422,))
    assert r.json()["errors"][0]["field"] == "label"
    r = send(app, "feedback", "POST", "/feedback", json.dumps({"request_id": ids[27]}).encode())
    check_client_error(r, "feedback", (422,))
    assert "`label`" in r.json()["errors"][0]["reason"]
    r = send(app, "feedback", "POST", "/feedback", b'{"request_id": "c-1", "outcome": 1}')  # the client's id
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "request_id", r.text
    r = send(app, "feedback", "POST", "/feedback", json.dumps({"request_id": ids[0], "outcome": 1}).encode())
    assert r.status_code == 409 and r.json()["repeated"] == ["outcome"], r.text  # one outcome per request

    after = ray.get(get_collector(APP).snapshot.remote())["v1"]
    assert after["outcomes"]["n"] - before["outcomes"]["n"] == 15  # 10 outcome-only + 5 with a label
    assert after["labels"] - before["labels"] == 17  # labels are never outcomes, nor outcomes labels


# ------------------------------------------------------------------ regressions found by fuzzing


FEATURES_BIG = json.dumps({"features": {f: "__BIG__" if f == "px3" else 0 for f in FEATURES}}).replace(
    '"__BIG__"', str(10**400)
)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        # an integer too big for a float (float(10**400) overflows): was a 500
        ("/predict", FEATURES_BIG, 422),
        ("/feedback", f'{{"request_id": "r", "outcome": {10**400}}}', 422),
        # an integer of more than 4300 digits (Python refuses to parse it): was a 500
        ("/predict", '{"features": {"px0": ' + "9" * 5000 + "}}", 400),
        ("/feedback", '{"request_id": "r", "outcome": ' + "9" * 5000 + "}", 400),
    ],
)
def test_fuzz_http_regressions(app: dict[str, Any], path: str, body: str, status: int) -> None:
    r = send(app, "regression", "POST", path, body.encode())
    check_client_error(r, "regression", (status,))


def test_bodies_over_the_limit_are_refused_before_parsing(app: dict[str, Any]) -> None:
    """2 MiB to an app with the default 1 MiB limit: 413 with the error format of a 422, for a
    body with a Content-Length and for a chunked one (cut off at the limit); /feedback too."""
    s, url = app["session"], app["url"]
    big = b'{"instances": [' + b"{}," * (2 * 1024 * 1024 // 3) + b"{}]}"
    for path in ("predict", "feedback"):
        r = s.post(f"{url}/{path}", data=big, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 413, (path, r.status_code, r.text[:300])
        assert r.json()["error"] == "request body too large"

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 65536  # 4 MiB of whitespace, never a complete document

    r = s.post(f"{url}/predict", data=chunks(), headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "Content-Length" not in r.request.headers
    small = s.post(f"{url}/predict", json={"features": {f: 0.0 for f in app["features"]}}, timeout=60)
    assert small.status_code == 200, small.text[:300]


def test_zz_report_counts(app: dict[str, Any], reliability: Any) -> None:
    """The requests sent, by class and status (``pytest -s``); none got a 5xx."""
    total = sum(SENT.values())
    print(f"\nHTTP fuzz: {total} requests")
    reliability.generated("HTTP requests (schema fuzz)", total)
    for (cls, status), n in sorted(SENT.items()):
        print(f"  {cls:22s} {status} {n}")
    assert all(status < 500 for _, status in SENT)
    # the app is still healthy after all of it
    assert app["session"].get(f"{app['url']}/health", timeout=30).json()["status"] == "ok"


@settings(FUZZ, max_examples=40)
@given(
    route=st.sampled_from(["/predict", "/feedback", "/metadata"]),
    value=st.one_of(
        st.sampled_from(["", "Bearer", "Bearer ", "bearer x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x",
                         f"Bearer  {FORCE_TOKEN}", f"Bearer {TOKEN[:-1]}"]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60).map("Bearer ".__add__),
    ),
)  # fmt: skip
def test_authorization_headers(app: dict[str, Any], route: str, value: str) -> None:
    """Any Authorization header but the app's token: 401 (none, or not `Bearer <token>`) or 403;
    /health is open whatever it carries."""
    value = value.strip()
    body = None if route == "/metadata" else json.dumps({"features": sample_rows(1)[0]}).encode()
    r = send(app, "authorization", "GET" if body is None else "POST", route, body, Authorization=value)
    assert r.status_code in (401, 403), r.text
    assert r.json()["error"] and (r.status_code == 403 or r.headers["WWW-Authenticate"].startswith("Bearer"))
    r = app["session"].get(app["url"] + "/health", headers={"Authorization": value}, timeout=30)
    assert r.status_code == 200
