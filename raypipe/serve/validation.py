"""Request bodies of the serving ingress, checked against the model's inputs (pure, no Ray).

``POST /predict`` takes one row or a batch of rows::

    {"features": {"px0": 0.0, "px1": 3.0, ...}}            -> {"prediction": ...}
    {"instances": [{"px0": 0.0, ...}, {...}]}               -> {"predictions": [...]}

plus, at the top level, the sticky key field when ``key: {field: ...}`` is used and an
optional ``request_id``.  Every feature of the model (its ``features`` list, in any
order) must be present, except *optional* ones (the model was trained with missing
values there: they may be left out or null); nothing else may be.  Types come from the
model's ``input_schema`` (Arrow types): numbers for int/float/decimal columns (integers
for int columns; booleans are not numbers), true/false for bool, strings for text and
dictionary (category) columns, ISO 8601 strings for dates (``"2024-03-01"``) and
timestamps (``"2024-03-01T12:00:00+01:00"``; naive times are UTC); numbers must be
finite (JSON's NaN/Infinity are refused).  A category the model never saw is accepted
(it is encoded as the "other" level and counted in the variant's metrics).

A bad body raises :class:`RequestError`: 400 for malformed JSON, 422 for the rest,
with one ``{"field", "reason"}`` per problem (up to 20), e.g.
``{"field": "features.px3", "reason": "missing field"}`` or
``{"field": "instances[2].px0", "reason": "expected a number (double), got string '3'"}``.

``POST /feedback`` takes ``{"request_id": "...", "outcome": 1.0}`` (a number; true/false
count as 1/0).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raypipe.models.preprocess import parse_iso

MAX_ERRORS = 20
MAX_INSTANCES = 1024


class RequestError(Exception):
    """A request the ingress refuses: an HTTP status and ``{"field", "reason"}`` problems."""

    def __init__(self, status: int, errors: list[dict[str, str]], message: str = "invalid request") -> None:
        super().__init__(f"{message}: " + "; ".join(f"{e['field']}: {e['reason']}" for e in errors))
        self.status = status
        self.errors = errors
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "errors": self.errors}


def _kind(arrow_type: str | None) -> str:
    t = (arrow_type or "double").lower()
    if t.startswith(("int", "uint")):
        return "int"
    if t.startswith(("float", "double", "halffloat", "decimal")):
        return "float"
    if t in ("bool", "boolean"):
        return "bool"
    if t in ("string", "large_string", "utf8", "large_utf8", "string_view") or t.startswith("dictionary<values=string"):
        return "string"
    if t.startswith(("date32", "date64")):
        return "date"
    if t.startswith("timestamp"):
        return "timestamp"
    return "any"


@dataclass(frozen=True)
class InputSchema:
    """A model's inputs: feature names in the model's order, their Arrow types, and which
    may be left out (the model was trained with missing values there)."""

    features: tuple[str, ...]
    types: tuple[str, ...]
    kinds: tuple[str, ...] = field(repr=False)
    index: dict[str, int] = field(repr=False, compare=False)
    optional: tuple[bool, ...] = field(default=(), repr=False)

    @classmethod
    def of(
        cls,
        features: Sequence[str],
        input_schema: Mapping[str, str] | None = None,
        optional: Sequence[str] = (),
    ) -> InputSchema:
        schema = dict(input_schema or {})
        types = tuple(str(schema.get(f, "double")) for f in features)
        opt = set(optional)
        return cls(
            tuple(features),
            types,
            tuple(_kind(t) for t in types),
            {f: i for i, f in enumerate(features)},
            tuple(f in opt for f in features),
        )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> InputSchema:
        pre = (meta.get("preprocessing") or {}).get("features") or []
        optional = [f["name"] for f in pre if isinstance(f, Mapping) and f.get("missing")]
        return cls.of(list(meta.get("features") or []), meta.get("input_schema"), optional)

    @property
    def numeric(self) -> bool:
        return all(k in ("int", "float") for k in self.kinds)


def parse_json(body: bytes) -> Any:
    """The JSON document of a request body; 400 naming where it is malformed."""
    if not body.strip():
        raise RequestError(400, [{"field": "(body)", "reason": "empty body; expected a JSON object"}], "malformed JSON")
    try:
        return json.loads(body)
    except UnicodeDecodeError as e:
        raise RequestError(400, [{"field": "(body)", "reason": f"not UTF-8: {e.reason}"}], "malformed JSON") from None
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise RequestError(400, [{"field": "(body)", "reason": f"{e.msg} at {where}"}], "malformed JSON") from None
    except RecursionError:
        raise RequestError(400, [{"field": "(body)", "reason": "nested too deeply"}], "malformed JSON") from None
    except ValueError as e:  # an integer literal of more than 4300 digits
        raise RequestError(400, [{"field": "(body)", "reason": str(e).split(";")[0]}], "malformed JSON") from None


def _finite(v: int | float) -> bool:
    """Whether a JSON number is a finite float (an integer too big for a float is not)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean " + ("true" if v else "false")
    if isinstance(v, str):
        text = v if len(v) <= 20 else v[:17] + "..."
        return f"string {text!r}"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, int) and abs(v) >= 10**20:
        return f"an integer of {len(str(abs(v)))} digits"
    return repr(v)


def _value(v: Any, kind: str, arrow_type: str) -> tuple[Any, str | None]:
    """The value to give the model, or a reason it is refused."""
    if kind in ("int", "float"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"expected a number ({arrow_type}), got {_describe(v)}"
        if kind == "float" and not _finite(v):
            return None, f"expected a finite number ({arrow_type}), got {_describe(v)}"
        if kind == "int" and isinstance(v, float) and not v.is_integer():
            return None, f"expected an integer ({arrow_type}), got {v!r}"
        if kind == "int" and not -(2**63) <= v < 2**64:
            return None, f"expected an integer of at most 64 bits ({arrow_type}), got {_describe(v)}"
        return (int(v) if kind == "int" else float(v)), None
    if kind == "bool":
        return (
            (v, None) if isinstance(v, bool) else (None, f"expected true or false ({arrow_type}), got {_describe(v)}")
        )
    if kind == "string":
        return (v, None) if isinstance(v, str) else (None, f"expected a string ({arrow_type}), got {_describe(v)}")
    if kind in ("date", "timestamp"):
        want = "an ISO date YYYY-MM-DD" if kind == "date" else "an ISO 8601 date-time (YYYY-MM-DDTHH:MM:SS[+HH:MM])"
        parsed = parse_iso(v) if isinstance(v, str) else None
        if parsed is None or (kind == "date" and isinstance(parsed, _dt.datetime)):
            return None, f"expected {want} ({arrow_type}), got {_describe(v)}"
        return parsed, None
    if isinstance(v, float) and not math.isfinite(v):
        return None, f"expected a finite number, got {v!r}"
    return v, None


def _row(obj: Any, schema: InputSchema, where: str, errors: list[dict[str, str]]) -> list[Any]:
    if not isinstance(obj, dict):
        errors.append({"field": where, "reason": f"expected an object of feature values, got {_describe(obj)}"})
        return []
    out: list[Any] = [None] * len(schema.features)
    for name, i in schema.index.items():
        optional = bool(schema.optional) and schema.optional[i]
        if name not in obj or obj[name] is None:
            if not optional:
                why = "missing field" if name not in obj else "got null; the model was trained without missing values here"
                errors.append({"field": f"{where}.{name}", "reason": why})
            continue
        value, why = _value(obj[name], schema.kinds[i], schema.types[i])
        if why is not None:
            errors.append({"field": f"{where}.{name}", "reason": why})
        out[i] = value
    for name in obj:
        if name not in schema.index:
            n = len(schema.features)
            errors.append(
                {"field": f"{where}.{name}", "reason": f"unknown field (not one of the model's {n} features)"}
            )
    return out


def rows_of(payload: Any, schema: InputSchema, key_field: str | None = None) -> tuple[list[list[Any]], bool]:
    """``(rows in the model's feature order, single)`` of a /predict body; 422 on any problem."""
    if not isinstance(payload, dict):
        raise RequestError(
            422,
            [
                {
                    "field": "(body)",
                    "reason": f"expected a JSON object with `features` or `instances`, got {_describe(payload)}",
                }
            ],
        )
    errors: list[dict[str, str]] = []
    allowed = {"features", "instances", "request_id"} | ({key_field} if key_field else set())
    for name in payload:
        if name not in allowed:
            errors.append({"field": name, "reason": f"unknown field; expected: {', '.join(sorted(allowed))}"})
    rid = payload.get("request_id")
    if rid is not None and not (isinstance(rid, str) and 0 < len(rid) <= 128):
        errors.append({"field": "request_id", "reason": "expected a string of 1 to 128 characters"})
    has_f, has_i = "features" in payload, "instances" in payload
    rows: list[list[Any]] = []
    single = True
    if has_f and has_i:
        errors.append({"field": "instances", "reason": "give either `features` (one row) or `instances`, not both"})
    elif has_f:
        rows = [_row(payload["features"], schema, "features", errors)]
    elif has_i:
        single = False
        items = payload["instances"]
        if not isinstance(items, list) or not items:
            errors.append(
                {"field": "instances", "reason": f"expected a non-empty array of rows, got {_describe(items)}"}
            )
        elif len(items) > MAX_INSTANCES:
            errors.append({"field": "instances", "reason": f"{len(items)} rows; at most {MAX_INSTANCES} per request"})
        else:
            for i, item in enumerate(items):
                rows.append(_row(item, schema, f"instances[{i}]", errors))
                if len(errors) >= MAX_ERRORS:
                    break
    else:
        errors.append({"field": "features", "reason": "missing field (or `instances`: an array of rows)"})
    if errors:
        raise RequestError(422, errors[:MAX_ERRORS])
    return rows, single


def feedback_of(payload: Any) -> tuple[str, float]:
    """``(request_id, outcome)`` of a /feedback body; 422 on any problem."""
    if not isinstance(payload, dict):
        raise RequestError(
            422,
            [
                {
                    "field": "(body)",
                    "reason": f"expected an object with request_id and outcome, got {_describe(payload)}",
                }
            ],
        )
    errors = []
    rid = payload.get("request_id")
    if "request_id" not in payload:
        errors.append({"field": "request_id", "reason": "missing field"})
    elif not (isinstance(rid, str) and 0 < len(rid) <= 128):
        errors.append(
            {"field": "request_id", "reason": f"expected a string of 1 to 128 characters, got {_describe(rid)}"}
        )
    out = payload.get("outcome")
    if "outcome" not in payload:
        errors.append({"field": "outcome", "reason": "missing field"})
    elif isinstance(out, bool):
        out = float(out)
    elif not isinstance(out, (int, float)) or not _finite(out):
        errors.append({"field": "outcome", "reason": f"expected a finite number (or true/false), got {_describe(out)}"})
    for name in payload:
        if name not in ("request_id", "outcome"):
            errors.append({"field": name, "reason": "unknown field; expected: outcome, request_id"})
    if errors:
        raise RequestError(422, errors)
    return str(rid), float(out)  # type: ignore[arg-type]
