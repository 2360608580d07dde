"""A 422 that stops listing at MAX_ERRORS says how many more problems the body has."""

from __future__ import annotations

import pytest

from raypipe.serving.validation import MAX_ERRORS, InputSchema, RequestError, rows_of

SCHEMA = InputSchema.of(["a", "b"], {"a": "double", "b": "int64"})


def refused(payload: object) -> RequestError:
    with pytest.raises(RequestError) as exc:
        rows_of(payload, SCHEMA)
    assert exc.value.status == 422
    return exc.value


def test_more_than_max_errors_are_counted() -> None:
    # 30 rows, each without `b` and with `a` a string: 60 problems, every row checked
    e = refused({"instances": [{"a": "x"} for _ in range(30)]})
    assert len(e.errors) == MAX_ERRORS == 20 and e.more == 40
    assert e.errors[0] == {"field": "instances[0].a", "reason": "expected a number (double), got string 'x'"}
    assert e.errors[-1]["field"] == "instances[9].b"
    body = e.body()
    assert body["more_errors"] == 40 and body["errors"] == e.errors
    assert body["error"] == "invalid request: 20 errors listed ... and 40 more"
    assert str(e).endswith("... and 40 more")


def test_one_row_with_many_unknown_fields() -> None:
    e = refused({"features": {"a": 1.0, "b": 2, **{f"x{i}": 0 for i in range(25)}}})
    assert len(e.errors) == 20 and e.body()["more_errors"] == 5


def test_up_to_max_errors_the_body_is_as_before() -> None:
    e = refused({"instances": [{"a": "x", "b": 1} for _ in range(MAX_ERRORS)]})
    assert len(e.errors) == MAX_ERRORS and e.more == 0
    assert e.body() == {"error": "invalid request", "errors": e.errors}
    assert "more" not in str(e)
