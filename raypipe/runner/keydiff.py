"""Which part of a stage's cache key differs between two of its key documents
(:func:`raypipe.runner.cache.key_document`), in words: ``params.lr: 0.01 -> 0.02``,
``code changed``, ``input X: sha a1b2c3d4 -> c3d4e5f6``, ``env.torch: 2.12.0 -> 2.13.0``.
Pure: ``raypipe plan`` and ``raypipe diff`` use it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: A stage kind that never reuses a result puts this before a random value in ``sources``.
ALWAYS_RUNS = "deploy-always-runs:"
_UNSET = object()


def normalized(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` as it reads back from the store (JSON types only)."""
    return dict(json.loads(json.dumps(dict(doc), sort_keys=True, default=str)))


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as dotted paths (``params.args.lr``); other values (lists too) whole."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k in sorted(value, key=str):
            out.update(flatten(value[k], f"{prefix}.{k}"))
        return out
    return {prefix: value}


def show(value: Any) -> str:
    """A value as a reason shows it: JSON, a long one cut."""
    if value is _UNSET:
        return "(unset)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def sha(value: Any) -> str:
    return "(none)" if value is None else str(value)[:12]


def _paths(old: Any, new: Any, prefix: str) -> list[str]:
    a, b = flatten(old, prefix), flatten(new, prefix)
    return [
        f"{p}: {show(a.get(p, _UNSET))} -> {show(b.get(p, _UNSET))}"
        for p in sorted(a.keys() | b.keys())
        if a.get(p, _UNSET) != b.get(p, _UNSET)
    ]


def _named(old: Mapping[str, Any], new: Mapping[str, Any], what: str, unit: str) -> list[str]:
    out = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a != b:
            if a is None:
                out.append(f"{what} {name}: new ({unit} {sha(b)})")
            elif b is None:
                out.append(f"{what} {name}: removed (was {unit} {sha(a)})")
            else:
                out.append(f"{what} {name}: {unit} {sha(a)} -> {sha(b)}")
    return out


def key_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per differing component of two key documents (empty: the same key)."""
    old, new = normalized(old), normalized(new)
    out: list[str] = []
    if str(new.get("sources") or "").startswith(ALWAYS_RUNS):
        out.append("never cached (a deploy stage always runs)")
    if old.get("v") != new.get("v"):
        out.append(f"cache key format {old.get('v')} -> {new.get('v')}")
    if old.get("kind") != new.get("kind"):
        out.append(f"kind: {old.get('kind')} -> {new.get('kind')}")
    out += _paths(old.get("params") or {}, new.get("params") or {}, "params")
    if old.get("outputs") != new.get("outputs"):
        out.append(f"outputs: {show(old.get('outputs'))} -> {show(new.get('outputs'))}")
    if old.get("code") != new.get("code"):
        out.append(f"code changed (fingerprint {sha(old.get('code'))} -> {sha(new.get('code'))})")
    out += _named(old.get("inputs") or {}, new.get("inputs") or {}, "input", "sha")
    out += _named(old.get("after") or {}, new.get("after") or {}, "after", "key")
    a_src, b_src = old.get("sources"), new.get("sources")
    if a_src != b_src and not str(b_src or "").startswith(ALWAYS_RUNS):
        out.append(f"source files changed (paths, sizes or mtimes; fingerprint {sha(a_src)} -> {sha(b_src)})")
    out += _paths(old.get("env") or {}, new.get("env") or {}, "env")
    known = {"v", "kind", "params", "outputs", "code", "inputs", "after", "sources", "env"}
    for k in sorted((old.keys() | new.keys()) - known):
        if old.get(k) != new.get(k):
            out.append(f"{k}: {show(old.get(k, _UNSET))} -> {show(new.get(k, _UNSET))}")
    return out


def source_changes(
    old: Mapping[str, tuple[int, int]], new: Mapping[str, tuple[int, int]], limit: int = 10
) -> list[str]:
    """Files read from outside the store, ``path -> (size, mtime_ns)`` then and now: one line per
    file added, removed or changed (at most ``limit``, then how many more)."""
    out: list[str] = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        if a is None:
            out.append(f"file {path}: new")
        elif b is None:
            out.append(f"file {path}: gone")
        elif a[0] != b[0]:
            out.append(f"file {path}: size {a[0]} -> {b[0]} bytes")
        else:
            out.append(f"file {path}: modified (same size, new mtime)")
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more files"]
    return out
