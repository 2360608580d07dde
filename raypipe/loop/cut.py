"""The retraining pipeline of a closed loop (pure): the app's pipeline with ``retrain.set``
applied (the fresh data source), cut to the retraining path (``retrain.stages`` and everything
they depend on; default: what the deploy stage depends on), every stage at
``retrain.priority``.  It must register the app's model with a training profile.  A password
written as it is in its ``metadata`` URL is redacted (:func:`redacted_pipeline`): the
retraining driver gets the store through ``$RAYPIPE_DB``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from raypipe.config import ConfigSource, apply_overrides, parse_config
from raypipe.exceptions import ConfigError
from raypipe.secrets import redact
from raypipe.serving.spec import RetrainSpec


def redacted_pipeline(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline document as the loop keeps it (Ray's KV) and writes it (the retraining YAML):
    a password written as it is in its ``metadata`` URL redacted, references kept."""
    out = dict(doc)
    if isinstance(out.get("metadata"), str):
        out["metadata"] = redact(out["metadata"])
    return out


def _closure(stages: Sequence[Mapping[str, Any]], roots: Sequence[str]) -> list[str]:
    by_name = {str(s["name"]): s for s in stages}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in by_name:
            raise ConfigError(f"retrain.stages: no stage named {name!r}; stages are: {', '.join(by_name)}")
        seen.add(name)
        s = by_name[name]
        ups = list(s.get("depends_on") or []) + [str(r).split(".", 1)[0] for r in (s.get("inputs") or {}).values()]
        todo.extend(ups)
    return [n for n in by_name if n in seen]  # in the pipeline's order


def retraining_pipeline(doc: Mapping[str, Any], retrain: RetrainSpec, app: str, model: str) -> dict[str, Any]:
    """The pipeline document of a retraining run (see :mod:`raypipe.loop.cut`).  Raises
    ConfigError naming the problem: an override that does not apply, an unknown stage, a
    path that registers no version of ``model``."""
    overrides = [f"{k}={json.dumps(v)}" for k, v in retrain.set.items()]
    try:
        data = apply_overrides(dict(doc), overrides)
    except ConfigError as e:
        raise ConfigError(f"retrain.set: {e}") from None
    stages = list(data.get("stages") or [])
    if retrain.stages is not None:
        roots = list(retrain.stages)
    else:
        deploys = [s for s in stages if s.get("kind") == "deploy" and (s.get("params") or {}).get("app") == app] or [
            s for s in stages if s.get("kind") == "deploy"
        ]
        roots = (
            [u for d in deploys for u in _closure(stages, [str(d["name"])]) if u != d["name"]]
            if deploys
            else [str(s["name"]) for s in stages]
        )
    keep = [n for n in _closure(stages, roots) if not any(s["name"] == n and s.get("kind") == "deploy" for s in stages)]
    if not keep:
        raise ConfigError("retrain: the retraining path is empty; list its stages in retrain.stages")
    out_stages = []
    for s in stages:
        if s["name"] not in keep:
            continue
        s = {**s, "priority": retrain.priority}
        if retrain.team is not None:
            s["team"] = retrain.team
        s["depends_on"] = [d for d in s.get("depends_on") or [] if d in keep]
        out_stages.append(s)
    registers = [
        s["name"] for s in out_stages if s.get("kind") == "register" and (s.get("params") or {}).get("name") == model
    ]
    if not registers:
        raise ConfigError(
            f"retrain: the retraining path ({', '.join(keep)}) has no register stage for model {model!r}; "
            "the loop needs the retrained model registered to roll it out"
        )
    reg = next(s for s in out_stages if s["name"] == registers[0])
    if "profile" not in (reg.get("inputs") or {}):
        raise ConfigError(
            f"retrain: stage {reg['name']} registers {model!r} without a `profile` input; after a promotion the "
            "drift monitor compares traffic with the new model's training profile: add "
            "inputs: {profile: <data.profile stage>.profile}"
        )
    out = {**redacted_pipeline(data), "stages": out_stages}
    parse_config(out, ConfigSource(path=f"<retraining pipeline of app {app}>"))  # schema errors now, not later
    return out


def register_stage(doc: Mapping[str, Any], model: str) -> str:
    """The name of the stage that registers ``model`` in a retraining pipeline."""
    for s in doc["stages"]:
        if s.get("kind") == "register" and (s.get("params") or {}).get("name") == model:
            return str(s["name"])
    raise ConfigError(f"no register stage for model {model!r}")
