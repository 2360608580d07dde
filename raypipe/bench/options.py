"""Option parsing of ``raypipe bench scheduling`` that goes beyond one typed flag.

* ``--policy-arg POLICY.NAME=VALUE`` (repeatable): a keyword argument of a policy,
  typed by the policy's own signature (``las.thresholds=3250,7200`` is a list of
  numbers, ``priority.preempt=true`` a bool, ``las.max_preemptions=none`` None).
* ``--spread-slowdown``: a number (the old single factor) or ``KEY=VALUE,...`` with
  ``per_extra_node``, ``cross_rack``, ``rack_label`` and ``NODES=FACTOR`` table rows.
* The placement a run uses: flags, else the cluster YAML's ``placement:``, else
  the benchmark's defaults (:func:`resolve_placement`).
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from raypipe.exceptions import RaypipeError
from raypipe.scheduler.cluster_spec import ClusterSpec
from raypipe.scheduler.fragmentation import TaskMixTracker
from raypipe.scheduler.placement_settings import PlacementSettings, TaskMixEntry
from raypipe.scheduler.policies.registry import get_policy, get_policy_class
from raypipe.scheduler.simulator import job_request
from raypipe.scheduler.traces import Trace

__all__ = [
    "BenchOptionError",
    "parse_policy_args",
    "parse_spread_slowdown",
    "resolve_placement",
    "trace_task_mix",
]

_EXAMPLE = "e.g. las.thresholds=3250,7200"
_SLOWDOWN_KEYS = ("factor", "per_extra_node", "cross_rack", "rack_label")


class BenchOptionError(RaypipeError):
    """A benchmark option that cannot be parsed (names the option and what was expected)."""


def _is_sequence(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(hint))
    return False


_NAMES: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_name(hint: Any) -> str:
    """``Sequence[float]`` -> "a list of numbers", ``int | None`` -> "an integer or none"."""
    if hint is Any:
        return "any value"
    if hint is type(None):
        return "none"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if _is_sequence(hint):
        args = typing.get_args(hint)
        item = _type_name(args[0]) if args else "any value"
        return "a comma-separated list of " + {"a number": "numbers", "an integer": "integers"}.get(item, item)
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _convert(item: str, name: str, raw: str, hint: Any) -> Any:
    text = raw.strip()
    if text.lower() in ("none", "null"):
        candidate: Any = None
    elif _is_sequence(hint):
        candidate = [p.strip() for p in text.split(",") if p.strip()]
    else:
        candidate = text
    if hint is Any:
        return candidate
    try:
        return TypeAdapter(hint).validate_python(candidate)
    except ValidationError as e:
        why = e.errors()[0].get("msg", "invalid") if e.errors() else "invalid"
        raise BenchOptionError(f"--policy-arg {item}: {name} expects {_type_name(hint)}; {why}") from None


def parse_policy_args(items: Sequence[str], policies: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``["las.thresholds=3250,7200", ...]`` -> ``{"las": {"thresholds": [3250.0, 7200.0]}}``.

    Each value is typed by the policy's constructor; the arguments of each policy
    are then checked by building it.  ``policies``: the policies compared (an
    argument for another one is an error).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, raw = item.partition("=")
        policy, dot, name = head.strip().partition(".")
        if not eq or not dot or not policy or not name:
            raise BenchOptionError(f"--policy-arg {item!r}: expected POLICY.NAME=VALUE, {_EXAMPLE}")
        cls = get_policy_class(policy)  # UnknownPolicyError names the policies
        if policies is not None and policy not in policies:
            raise BenchOptionError(
                f"--policy-arg {item}: policy {policy!r} is not compared (--policies {','.join(policies)})"
            )
        params = inspect.signature(cls).parameters
        if name not in params:
            accepted = ", ".join(params) or "none"
            raise BenchOptionError(f"--policy-arg {item}: {policy} has no argument {name!r}; its arguments: {accepted}")
        hints = typing.get_type_hints(cls.__init__)
        args = out.setdefault(policy, {})
        if name in args:
            raise BenchOptionError(f"--policy-arg {item}: {policy}.{name} is given twice")
        args[name] = _convert(item, f"{policy}.{name}", raw, hints.get(name, Any))
    for policy, args in out.items():
        get_policy(policy, **args)  # PolicyConfigError: e.g. thresholds that do not increase
    return out


def parse_spread_slowdown(text: str) -> float | dict[str, Any]:
    """``"1.2"`` -> 1.2; ``"per_extra_node=0.1,cross_rack=1.3"`` or ``"2=1.1,4=1.3"`` -> a mapping
    for :class:`~raypipe.scheduler.placement_settings.SpreadSlowdown` (raises ``ValueError``)."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    out: dict[str, Any] = {}
    table: dict[int, float] = {}
    for part in t.split(","):
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or not key or not value:
            raise ValueError(
                f"expected a number or KEY=VALUE,... ({', '.join(_SLOWDOWN_KEYS)} or NODES=FACTOR), got {part!r}"
            )
        if key.isdigit():
            table[int(key)] = float(value)
        elif key == "rack_label":
            out[key] = value
        elif key in _SLOWDOWN_KEYS:
            out[key] = float(value)
        else:
            raise ValueError(f"unknown key {key!r}; expected {', '.join(_SLOWDOWN_KEYS)} or a node count")
    if table:
        out["by_nodes"] = table
    return out


def trace_task_mix(trace: Trace, coverage: float = 1.0) -> tuple[TaskMixEntry, ...]:
    """The task mix of a whole trace (the paper's "typical pods"): its most frequent request
    shapes covering ``coverage`` of its GPU jobs (all by default)."""
    tracker = TaskMixTracker(PlacementSettings(mix_coverage=coverage))
    for job in trace.jobs:
        tracker.observe(job_request(job, duration_known=False))
    mix = tracker.mix
    if mix is None:
        return ()
    return tuple(
        TaskMixEntry(gpus=g, cpus=c, labels=dict(sel), gang=gang, weight=p) for c, g, sel, gang, p in mix.kinds
    )


def whole_gpu(trace: Trace) -> bool:
    """True when every job of ``trace`` asks for whole GPUs (no fractional sharing)."""
    return all(float(j.gpus).is_integer() for j in trace.jobs)


def resolve_placement(
    cluster: ClusterSpec,
    trace: Trace,
    *,
    consolidation: str | None = None,
    node_choice: str | None = None,
    task_mix: str = "observed",
) -> tuple[PlacementSettings, dict[str, str]]:
    """The placement of a run and where each setting came from (``flag``, ``cluster``, ``default``).

    Flags win, then the cluster YAML's ``placement:``; the defaults are
    ``consolidation: strict`` and ``node_choice: first_fit`` on a whole-GPU trace
    (``best_fit`` when some job asks for a fraction of a GPU).
    """
    base = cluster.placement
    given: set[str] = set(base.model_fields_set) if base is not None else set()
    source: dict[str, str] = {}

    def pick(name: str, flag: str | None, default: str) -> str:
        if flag is not None:
            source[name] = "flag"
            return flag
        if base is not None and name in given:
            source[name] = "cluster"
            return str(getattr(base, name))
        source[name] = "default"
        return default

    whole = whole_gpu(trace)
    values: dict[str, Any] = {
        "consolidation": pick("consolidation", consolidation, "strict"),
        "node_choice": pick("node_choice", node_choice, "first_fit" if whole else "best_fit"),
    }
    if base is not None:
        values["mix_coverage"] = base.mix_coverage
    if task_mix == "trace":
        values["task_mix"] = trace_task_mix(trace, base.mix_coverage if base is not None else 1.0)
        source["task_mix"] = "trace"
    elif base is not None and base.task_mix is not None:
        values["task_mix"] = base.task_mix
        source["task_mix"] = "cluster"
    else:
        source["task_mix"] = "observed"
    return PlacementSettings.model_validate(values), source


def placement_summary(placement: PlacementSettings, source: Mapping[str, str]) -> dict[str, Any]:
    """What results.json records of the placement settings."""
    return {
        "consolidation": placement.consolidation,
        "node_choice": placement.node_choice,
        "task_mix": source.get("task_mix", "observed") if placement.node_choice == "fgd" else None,
        "source": dict(source),
    }
