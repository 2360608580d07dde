"""The router's fast paths give what the detailed paths give.

- Validation: a row the fast check accepts is exactly the row the detailed check builds
  (values and their types), and ``rows_of`` accepts and refuses the same bodies, with the
  same error text, with and without the fast check (hypothesis over random schemas and
  rows, bad ones included).
- The batcher's direct call (a request alone in the router): the same answer as a batch
  of one, the variant called in the caller's task; with a call in flight it queues as before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raypipe.serving import validation
from raypipe.serving.batching import Batcher
from raypipe.serving.validation import InputSchema, RequestError, _fast_row, _Problems, _row, rows_of

#: Arrow types of every kind the validator knows (and one it does not: "any").
TYPES = ["double", "float", "int64", "uint8", "bool", "string", "large_string", "date32[day]", "timestamp[us]",
         "struct<a: int64>"]  # fmt: skip

#: Values of every JSON kind, the awkward ones included.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1.8e308, 2.0**63, 2.0**64, 0.5, -0.0]),
    st.text(max_size=30),
    st.sampled_from(["2024-03-01", "2024-03-01T12:00:00+01:00", "2024-13-01", "3", "true", ""]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _valid_for(arrow_type: str) -> st.SearchStrategy[Any]:
    kind = validation._kind(arrow_type)
    if kind == "float":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**60), 2**60))
    if kind == "int":
        return st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-1000, 1000).map(float))
    if kind == "bool":
        return st.booleans()
    if kind == "string":
        return st.text(max_size=10)
    if kind == "date":
        return st.dates().map(dt.date.isoformat)
    if kind == "timestamp":
        return st.datetimes(timezones=st.just(dt.timezone.utc)).map(dt.datetime.isoformat)
    return st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False))


@st.composite
def schema_and_row(draw: st.DrawFn, numeric: bool = False) -> tuple[InputSchema, Any]:
    n = draw(st.integers(1, 8))
    names = [f"f{i}" for i in range(n)]
    types = {f: "double" if numeric else draw(st.sampled_from(TYPES)) for f in names}
    optional = [f for f in names if draw(st.booleans()) and draw(st.booleans())]
    schema = InputSchema.of(names, types, optional)
    if draw(st.integers(0, 19)) == 0:  # not an object at all
        return schema, draw(ANY_VALUE)
    row: dict[str, Any] = {}
    for f in names:
        pick = draw(st.integers(0, 9))
        if pick == 0:
            continue  # missing
        row[f] = draw(ANY_VALUE) if pick == 1 else (None if pick == 2 else draw(_valid_for(types[f])))
    if draw(st.integers(0, 9)) == 0:
        row[draw(st.sampled_from(["extra", "f0 ", "F0"]))] = 1.0
    return schema, row


def _typed(row: list[Any]) -> list[tuple[type, Any]]:
    return [(type(v), v) for v in row]


def _detailed(schema: InputSchema, obj: Any) -> tuple[list[Any], list[dict[str, str]]]:
    errors = _Problems()
    out = _row(obj, schema, "features", errors)
    return out, errors.items


def _check_fast_row(schema: InputSchema, obj: Any) -> None:
    fast = _fast_row(obj, schema)
    row, errors = _detailed(schema, obj)
    if fast is not None:  # accepted by the fast check: the detailed check accepts it, with the same values
        assert errors == []
        assert _typed(fast) == _typed(row)
        assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in fast)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_and_row())
def test_fast_row_accepts_only_what_the_detailed_check_accepts(case: tuple[InputSchema, Any]) -> None:
    _check_fast_row(*case)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_and_row(numeric=True))
def test_fast_row_of_numbers_only_schemas(case: tuple[InputSchema, Any]) -> None:
    _check_fast_row(*case)


def _outcome(payload: Any, schema: InputSchema) -> Any:
    try:
        rows, single = rows_of(payload, schema)
    except RequestError as e:
        return ("refused", e.status, e.body(), str(e))
    return ("accepted", [_typed(r) for r in rows], single)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rows_of_answers_as_the_detailed_check_alone(data: st.DataObject) -> None:
    """The same accept/reject, rows and error bodies with the fast check as without it."""
    schema, first = data.draw(schema_and_row())
    more = data.draw(st.lists(schema_and_row(), max_size=3))
    rows = [first] + [r for s, r in more if s.features == schema.features]
    payload = data.draw(st.sampled_from([{"features": first}, {"instances": rows}]))
    fast = _outcome(payload, schema)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validation, "_fast_row", lambda obj, schema: None)
        detailed = _outcome(payload, schema)
    assert fast == detailed


def test_the_fast_check_takes_the_common_bodies() -> None:
    """Valid rows of numbers-only and mixed schemas are taken by the fast check (not only
    left to the detailed one): what the router's speed rests on."""
    numbers = InputSchema.of([f"px{i}" for i in range(64)], {f"px{i}": "float" for i in range(64)})
    row = {f"px{i}": float(i % 7) if i % 2 else i for i in range(64)}
    assert _fast_row(row, numbers) == [float(i % 7) if i % 2 else float(i) for i in range(64)]
    mixed = InputSchema.of(["a", "b", "c", "d", "e"],
                           {"a": "int64", "b": "double", "c": "bool", "d": "string", "e": "date32[day]"})  # fmt: skip
    got = _fast_row({"e": "2024-03-01", "d": "x", "c": True, "b": 2, "a": 3.0}, mixed)
    assert _typed(got or []) == [(int, 3), (float, 2.0), (bool, True), (str, "x"), (dt.date, dt.date(2024, 3, 1))]
    for bad in ({"px0": 1.0}, {**row, "px1": math.inf}, {**row, "px2": True}, {**row, "px3": None}, {**row, "x": 1}):
        assert _fast_row(bad, numbers) is None


def test_a_bad_row_gets_the_detailed_error_text() -> None:
    schema = InputSchema.of(["a", "b"], {"a": "double", "b": "int64"})
    with pytest.raises(RequestError) as exc:
        rows_of({"instances": [{"a": 1.0, "b": 2}, {"a": math.nan, "b": 2.5}]}, schema)
    assert exc.value.errors == [
        {"field": "instances[1].a", "reason": "expected a finite number (double), got nan"},
        {"field": "instances[1].b", "reason": "expected an integer (int64), got 2.5"},
    ]


class _Handle:
    """A variant's handle: records each call's request ids; ``gate`` holds calls open."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.callers: list[Any] = []
        self.gate: asyncio.Event | None = None
        self.predict_many = self

    def remote(self, ids: list[str], rows: list[Any]) -> Any:
        self.calls.append(list(ids))

        async def run() -> list[dict[str, Any]]:
            self.callers.append(asyncio.current_task())
            if self.gate is not None:
                await self.gate.wait()
            return [{"ok": True, "p": [len(r) for r in rs], "task": id(asyncio.current_task())} for rs in rows]

        return run()


def test_alone_calls_the_variant_in_the_callers_task() -> None:
    async def main() -> None:
        h = _Handle()
        b = Batcher(h, 2)
        me = id(asyncio.current_task())
        alone = await b.submit("r1", [[1.0], [2.0]], alone=True)
        batched = await b.submit("r2", [[1.0], [2.0]])
        assert alone["p"] == batched["p"] == [1, 1] and alone["ok"] and batched["ok"]
        assert alone["task"] == me and batched["task"] != me  # no task of its own, the batch one in a task
        assert h.calls == [["r1"], ["r2"]] and b.inflight == 0

    asyncio.run(main())


def test_alone_with_a_call_in_flight_joins_the_queue() -> None:
    async def main() -> None:
        h = _Handle()
        h.gate = asyncio.Event()
        b = Batcher(h, 1)
        first = asyncio.ensure_future(b.submit("r1", [[0.0]], alone=True))
        await asyncio.sleep(0)
        assert b.inflight == 1
        later = [asyncio.ensure_future(b.submit(f"r{i}", [[0.0]], alone=True)) for i in (2, 3)]
        await asyncio.sleep(0)
        assert [q[0] for q in b.queue] == ["r2", "r3"]  # queued behind the call in flight, not called
        h.gate.set()
        results = await asyncio.gather(first, *later)
        assert [r["ok"] for r in results] == [True, True, True]
        assert h.calls == [["r1"], ["r2", "r3"]]  # the queued two in one call
        assert b.inflight == 0 and not b.queue

    asyncio.run(main())


def test_alone_call_errors_reach_the_caller() -> None:
    class Failing(_Handle):
        def remote(self, ids: list[str], rows: list[Any]) -> Any:
            async def run() -> Any:
                raise ValueError("model broke")

            return run()

    async def main() -> None:
        b = Batcher(Failing(), 2)
        with pytest.raises(ValueError, match="model broke"):
            await b.submit("r1", [[0.0]], alone=True)
        assert b.inflight == 0

    asyncio.run(main())


class _Request:
    """A POST /predict as Serve hands it to the router."""

    def __init__(self, doc: Any) -> None:
        from starlette.datastructures import Headers

        self.data = json.dumps(doc).encode()
        self.headers = Headers({"content-length": str(len(self.data))})
        self.scope = {"path": "/predict", "root_path": ""}
        self.method = "POST"

    async def stream(self) -> Any:
        yield self.data


def _router(handle: _Handle) -> Any:
    from raypipe.serving.deployments import Router

    variant = {"version": 1, "sha256": "x", "features": ["a"], "input_schema": {"a": "double"}, "replicas": 1}
    r = Router({"app": "app", "model": "m", "collector": "c", "variants": {"v1": variant}}, v1=handle)
    r.reconfigure({"weights": {"v1": 100}})
    r._flush_loop = lambda: asyncio.sleep(3600)  # no metrics collector here
    return r


def test_router_calls_a_lone_request_directly_and_batches_concurrent_ones() -> None:
    async def main() -> None:
        h = _Handle()
        r = _router(h)
        lone = asyncio.ensure_future(r(_Request({"features": {"a": 1.0}})))
        resp = await lone
        assert resp.status_code == 200 and json.loads(resp.body)["prediction"] == 1
        assert len(h.calls) == 1 and h.callers == [lone] and r._active == 0
        h.gate = asyncio.Event()
        many = [asyncio.ensure_future(r(_Request({"features": {"a": float(i)}}))) for i in range(4)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert r._active == 4
        h.gate.set()
        answers = await asyncio.gather(*many)
        assert [a.status_code for a in answers] == [200] * 4
        # the first alone (called at once), the second in a call of its own (fewer than two in
        # flight), the last two queued behind them and sent together: one call, one forward pass
        assert [len(c) for c in h.calls[1:]] == [1, 1, 2] and r._active == 0
        assert h.callers[1] is many[0] and not set(h.callers[2:]) & set(many)  # the rest in batch tasks

    asyncio.run(main())
