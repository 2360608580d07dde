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

Rows are checked by a fast path first (:func:`_fast_row`: every feature present, nothing
else, no null, each value of its column's kind; numbers-only models in one pass of C-level
checks); a row it does not take goes through the detailed check (:func:`_row`), which alone
decides and names the problems, so the answers and the error texts are the detailed
check's (``tests/unit/test_serving_fast_paths.py`` holds the two to it).

A body larger than the app's ``max_body_bytes`` (default 1 MiB) is refused with 413 before
it is parsed (:func:`read_body`): by its ``Content-Length``, or, for a chunked body, as
soon as what was read passes the limit (the rest is never read).

A bad body raises :class:`RequestError`: 400 for malformed JSON, 422 for the rest,
with one ``{"field", "reason"}`` per problem (up to 20), e.g.
``{"field": "features.px3", "reason": "missing field"}`` or
``{"field": "instances[2].px0", "reason": "expected a number (double), got string '3'"}``.
The body is ``{"error": "invalid request", "errors": [...]}``; when a /predict body has
more than 20 problems (every row is checked), the first 20 are listed and
``"more_errors": N`` counts the rest (``"error": "invalid request: 20 errors listed ...
and N more"``).

``POST /feedback`` takes ``{"request_id": "...", "outcome": 1.0, "label": 3}`` with
``outcome``, ``label`` or both (:func:`feedback_of`).  They are two different things, and
neither is ever taken for the other:

- ``outcome``: a business result of the request (a conversion 0/1, a reward, revenue): a
  finite number, true/false counting as 1/0.  It feeds the A/B statistics and the canary
  guardrails (the metrics collector), nothing else.
- ``label``: the true value the model should have predicted (ground truth), for the drift
  monitor's performance windows, nothing else: a string, a finite number or true/false,
  checked against the model that served the request by :func:`check_label`.  For
  regression it must be a finite number (422 otherwise).  For classification a label that
  names one of the model's ``classes`` (``3``, ``3.0`` and ``"3"`` name class 3;
  true/false name classes 1/0, and 1/0 name classes true/false) is given on as that class;
  any other value is accepted with a warning and scored as a wrong prediction (ground
  truth outside the classes the model knows: the model is wrong on it).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from raypipe.models.classes import match_class
from raypipe.models.preprocess import parse_iso

MAX_ERRORS = 20
MAX_INSTANCES = 1024
#: Default limit of a request body (bytes): the serve spec's ``max_body_bytes``.
MAX_BODY_BYTES = 1 << 20


class RequestError(Exception):
    """A request the ingress refuses: an HTTP status and ``{"field", "reason"}`` problems
    (the first ``MAX_ERRORS``; ``more``: how many more there were)."""

    def __init__(
        self, status: int, errors: list[dict[str, str]], message: str = "invalid request", more: int = 0
    ) -> None:
        listed = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        super().__init__(f"{message}: {listed}" + (f" ... and {more} more" if more else ""))
        self.status = status
        self.errors = errors
        self.message = message
        self.more = more

    def body(self) -> dict[str, Any]:
        """``{"error", "errors"}``, plus ``"more_errors": N`` when the list stops at ``MAX_ERRORS``."""
        if not self.more:
            return {"error": self.message, "errors": self.errors}
        n = len(self.errors)
        return {
            "error": f"{self.message}: {n} errors listed ... and {self.more} more",
            "errors": self.errors,
            "more_errors": self.more,
        }


class _Problems:
    """The problems of a body as they are found: the first ``MAX_ERRORS`` kept, all counted."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []
        self.total = 0

    def append(self, problem: dict[str, str]) -> None:
        self.total += 1
        if len(self.items) < MAX_ERRORS:
            self.items.append(problem)

    def check(self, status: int = 422) -> None:
        """Raise the :class:`RequestError` of the problems found, if any."""
        if self.total:
            raise RequestError(status, self.items, more=self.total - len(self.items))


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

    @cached_property
    def numeric_float(self) -> bool:
        """Every feature a float column (the fast path checks such rows in one pass)."""
        return all(k == "float" for k in self.kinds)


def _too_large(limit: int, size: str) -> RequestError:
    reason = f"the body ({size}) is larger than the limit of {limit:,} bytes (the app's max_body_bytes)"
    return RequestError(413, [{"field": "(body)", "reason": reason}], "request body too large")


async def read_body(content_length: str | None, chunks: AsyncIterable[bytes], limit: int = MAX_BODY_BYTES) -> bytes:
    """A request's body, read from ``chunks`` (its ASGI stream) no further than ``limit``
    bytes: 413 if its ``Content-Length`` header says more, or (a chunked body, or a length
    that lied) as soon as the chunks read pass the limit; 400 for a malformed length."""
    if content_length is not None:
        try:
            declared = int(content_length.strip())
        except ValueError:
            declared = -1
        if declared < 0:
            reason = f"malformed Content-Length header {content_length[:40]!r}"
            raise RequestError(400, [{"field": "Content-Length", "reason": reason}], "malformed request")
        if declared > limit:
            raise _too_large(limit, f"{declared:,} bytes by its Content-Length")
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise _too_large(limit, f"more than {limit:,} bytes")
        body += chunk
    return bytes(body)


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


def _row(obj: Any, schema: InputSchema, where: str, errors: _Problems) -> list[Any]:
    if not isinstance(obj, dict):
        errors.append({"field": where, "reason": f"expected an object of feature values, got {_describe(obj)}"})
        return []
    out: list[Any] = [None] * len(schema.features)
    for name, i in schema.index.items():
        optional = bool(schema.optional) and schema.optional[i]
        if name not in obj or obj[name] is None:
            if not optional:
                reason = (
                    "missing field"
                    if name not in obj
                    else "got null; the model was trained without missing values here"
                )
                errors.append({"field": f"{where}.{name}", "reason": reason})
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


#: Integers the fast path takes as they are (the detailed check's range for int columns).
_INT_MIN, _INT_END = -(2**63), 2**64
_NUMBERS = frozenset((float, int))


def _fast_value(v: Any, kind: str, arrow_type: str) -> tuple[Any, bool]:
    """``(value, True)`` as :func:`_value` gives a valid ``v``; ``(None, False)``: let the
    detailed check decide (and name the problem, if there is one)."""
    t = type(v)
    if kind == "float":
        if t is float:
            return v, v - v == 0.0  # False for inf and nan
        if t is int:
            try:
                return float(v), True
            except OverflowError:
                return None, False
        return None, False
    if kind == "int":
        if t is int:
            return v, _INT_MIN <= v < _INT_END
        if t is float and v.is_integer() and _INT_MIN <= v < _INT_END:
            return int(v), True
        return None, False
    if kind == "bool":
        return v, t is bool
    if kind == "string":
        return v, t is str
    if v is None:
        return None, False
    value, why = _value(v, kind, arrow_type)
    return value, why is None


def _fast_row(obj: Any, schema: InputSchema) -> list[Any] | None:
    """The row :func:`_row` makes of ``obj`` when ``obj`` is valid: every feature present, no
    other key, no null, every value of its column's kind (numbers-only schemas: one pass of
    C-level checks).  None when anything is off: the caller runs :func:`_row`, which names
    the problems exactly as always (or accepts what this path leaves to it, e.g. nulls of
    optional features)."""
    features = schema.features
    if type(obj) is not dict or len(obj) != len(features):
        return None
    try:
        vals = [obj[f] for f in features]
    except KeyError:
        return None
    if schema.numeric_float:
        types = set(map(type, vals))
        if not types <= _NUMBERS:
            return None
        try:
            if int in types:
                vals = [float(v) for v in vals]
            total = sum(vals)  # inf or nan if any value is (or the sum overflows: the detailed path decides)
        except OverflowError:
            return None
        return vals if total - total == 0.0 else None
    out: list[Any] = []
    for v, kind, arrow_type in zip(vals, schema.kinds, schema.types, strict=True):
        value, ok = _fast_value(v, kind, arrow_type)
        if not ok:
            return None
        out.append(value)
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
    errors = _Problems()
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
        row = _fast_row(payload["features"], schema)
        rows = [row if row is not None else _row(payload["features"], schema, "features", errors)]
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
            for i, item in enumerate(items):  # every row: the 422 says how many problems there are
                row = _fast_row(item, schema)
                rows.append(row if row is not None else _row(item, schema, f"instances[{i}]", errors))
    else:
        errors.append({"field": "features", "reason": "missing field (or `instances`: an array of rows)"})
    errors.check()
    return rows, single


#: Longest string label accepted by /feedback.
MAX_LABEL_CHARS = 1024
#: Classes named in a warning about a label outside them.
_SHOW_CLASSES = 10

FEEDBACK_FIELDS = ("label", "outcome", "request_id")

#: A label as JSON gives it.
LabelValue = str | int | float | bool


@dataclass(frozen=True)
class Feedback:
    """A /feedback body: a served request's business ``outcome`` and/or true ``label``
    (None: not given)."""

    request_id: str
    outcome: float | None = None
    label: LabelValue | None = None

    @property
    def fields(self) -> list[str]:
        """What the body carried, of ``outcome`` and ``label``."""
        return [n for n, v in (("outcome", self.outcome), ("label", self.label)) if v is not None]


def feedback_of(payload: Any) -> Feedback:
    """The :class:`Feedback` of a /feedback body; 422 on any problem (the label is checked
    against the served model later, by :func:`check_label`)."""
    if not isinstance(payload, dict):
        raise RequestError(
            422,
            [
                {
                    "field": "(body)",
                    "reason": f"expected an object with request_id and outcome and/or label, got {_describe(payload)}",
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
    outcome: float | None = None
    if "outcome" in payload:
        out = payload["outcome"]
        if isinstance(out, bool):
            outcome = float(out)
        elif isinstance(out, (int, float)) and _finite(out):
            outcome = float(out)
        else:
            errors.append(
                {"field": "outcome", "reason": f"expected a finite number (or true/false), got {_describe(out)}"}
            )
    label: LabelValue | None = None
    if "label" in payload:
        y = payload["label"]
        if isinstance(y, bool) or (isinstance(y, (int, float)) and _finite(y)):
            label = y
        elif isinstance(y, str) and 0 < len(y) <= MAX_LABEL_CHARS:
            label = y
        else:
            errors.append(
                {
                    "field": "label",
                    "reason": "expected the true value: a string of 1 to "
                    f"{MAX_LABEL_CHARS} characters, a finite number or true/false, got {_describe(y)}",
                }
            )
    if "outcome" not in payload and "label" not in payload:
        errors.append(
            {
                "field": "outcome",
                "reason": "missing field: give `outcome` (a business result, for A/B tests and guardrails), "
                "`label` (the true value, for performance drift) or both",
            }
        )
    for name in payload:
        if name not in FEEDBACK_FIELDS:
            errors.append({"field": name, "reason": f"unknown field; expected: {', '.join(FEEDBACK_FIELDS)}"})
    if errors:
        raise RequestError(422, errors)
    return Feedback(str(rid), outcome, label)


@dataclass(frozen=True)
class LabelSchema:
    """What a true label of a model's predictions is: its task and (classification) classes.
    ``task`` None: unknown (a user-loop model without one): any label is taken as it is."""

    task: str | None = None
    classes: tuple[Any, ...] | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> LabelSchema:
        meta = meta or {}
        classes = meta.get("classes")
        classes = tuple(classes) if isinstance(classes, (list, tuple)) and classes else None
        task = meta.get("task")
        if task not in ("classification", "regression"):
            task = "classification" if classes else None
        return cls(task, classes if task == "classification" else None)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "classes": list(self.classes) if self.classes is not None else None}


def check_label(value: LabelValue, schema: LabelSchema) -> tuple[Any, str | None]:
    """The label to score against the model's prediction, and a warning for the client (or
    None).  Regression: a finite number (else 422).  Classification: the class it names
    (:func:`match_class`); a value naming none of the classes is kept as it is with a
    warning (performance drift counts it as a wrong prediction).  Unknown task: as it is."""
    if schema.task == "regression":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise RequestError(
                422,
                [
                    {
                        "field": "label",
                        "reason": "expected a finite number (the true value of a regression model), "
                        f"got {_describe(value)}",
                    }
                ],
            )
        return float(value), None
    if schema.task == "classification" and schema.classes:
        found, cls = match_class(value, schema.classes)
        if found:
            return cls, None
        shown = ", ".join(repr(c) for c in schema.classes[:_SHOW_CLASSES])
        more = f", ... ({len(schema.classes)} in all)" if len(schema.classes) > _SHOW_CLASSES else ""
        text = json.dumps(value)
        text = text if len(text) <= 40 else text[:37] + "..."
        return value, (
            f"label {text} is not one of the model's classes ({shown}{more}); "
            "recorded, and counted as a wrong prediction in performance drift"
        )
    return value, None
