"""Pydantic validation errors in the config's words: ``(loc, message)`` pairs and ``stages[2].gpu`` paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

Loc = tuple[Union[str, int], ...]

#: A dotted Python name (a module or package: ``pkg.module``), as a field pattern.
DOTTED_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


def format_loc(loc: Loc) -> str:
    """``("stages", 2, "resources", "gpu")`` -> ``stages[2].resources.gpu``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value)


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or (origin is not None and str(origin) == "types.UnionType"):
            args = [a for a in get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def _expected(err: Mapping[str, Any], roots: Sequence[type[BaseModel]]) -> str:
    t = err["type"]
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    got = f"got {_describe(err.get('input'))}; "
    if t == "missing":
        return "missing required field"
    if t == "extra_forbidden":
        model = next((m for r in roots if (m := _model_at_from(r, loc[:-1])) is not None), None)
        allowed = ", ".join(model.model_fields) if model else ""
        return f"unknown key {loc[-1]!r}" + (f"; expected one of: {allowed}" if allowed else "")
    if t in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[t]
        bound = next(iter(ctx.values())) if ctx else "?"
        bound_text = f"{bound:g}" if isinstance(bound, (int, float)) else str(bound)
        return f"{got}expected a number {op} {bound_text}"
    if t in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        kind = "an integer" if t.startswith("int") else "a number"
        return f"{got}expected {kind}"
    if t in ("bool_parsing", "bool_type"):
        return f"{got}expected true or false"
    if t == "string_type":
        return f"{got}expected a string"
    if t == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        if pattern == DOTTED_NAME_RE:
            return f"{got}expected a dotted Python name such as pkg.module (pattern {pattern})"
        return f"{got}expected a name of letters, digits, '_' or '-' (pattern {pattern})"
    if t in ("list_type", "tuple_type"):
        return f"{got}expected a list"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"{got}expected a mapping"
    if t == "too_short":
        return f"{got}expected at least {ctx.get('min_length')} item(s)"
    if t == "literal_error":
        return f"{got}expected one of {ctx.get('expected')}"
    if t == "value_error":  # a model's own check: its message says what is wrong
        return str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{got}{err.get('msg', 'invalid')}"


def error_issues(exc: ValidationError, prefix: Loc, roots: Sequence[type[BaseModel]]) -> list[tuple[Loc, str]]:
    """Turn a pydantic error into ``(loc, message)`` pairs rooted at ``prefix``.  An unknown
    key lists the keys allowed where it is: those of the model at its place in the first
    of ``roots`` that has one."""
    issues = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        issues.append((prefix + loc, _expected({**err, "loc": loc}, roots)))
    return issues


def _model_at_from(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (list, dict, Sequence, Mapping):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
