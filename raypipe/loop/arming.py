"""Arming a served app: after a deploy, start its drift monitor and its closed loop; the
deploy and shutdown paths of the API go through here so serving never reaches up to the loop."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raypipe._ray.actors import get_or_create
from raypipe.config import parse_yaml
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.loop.actor import LoopController, loop_name, read_config, write_config
from raypipe.loop.core import LOOP_SERIES
from raypipe.loop.cut import retraining_pipeline
from raypipe.loop.launch import loop_config
from raypipe.loop.reference import attach_monitor
from raypipe.loop.status import find_loop, stop_loop
from raypipe.secrets import actor_env
from raypipe.serving import app as serving
from raypipe.serving.app import AppStatus
from raypipe.serving.rollout.ops import platform_notify
from raypipe.serving.spec import ServeSpec
from raypipe.stages.base import CommitContext, StageKind
from raypipe.stages.deploy import DeployStage
from raypipe.store.artifacts import resolve_root
from raypipe.store.metadata import MetadataStore, current_actor, resolve_db
from raypipe.store.registry import ModelRegistry
from raypipe.store.rollouts import LoopStore


def start_loop(
    spec: ServeSpec, pipeline: Mapping[str, Any], *, db: str, storage: str, workdir: str | None = None
) -> Any:
    """Arm the closed loop of a deployed app (get or create its controller; a new spec or
    pipeline replaces the old controller's configuration, its recorded cycles stay).  Nothing
    secret goes into Ray's KV (:mod:`raypipe.loop.launch`)."""

    if spec.retrain is None or spec.monitor is None:
        raise RaypipeError(f"app {spec.app!r}: the loop needs `monitor` and `retrain` in its spec")
    doc = retraining_pipeline(pipeline, spec.retrain, spec.app, spec.model)  # errors here, on the caller
    actor = current_actor()
    config = loop_config(spec, pipeline, db=db, storage=storage, workdir=workdir or os.getcwd(), actor=actor)
    old = find_loop(spec.app)
    if old is not None and read_config(spec.app) != config:
        stop_loop(spec.app, forget=False)
        old = None
    write_config(spec.app, config)
    if old is not None:
        return old
    meta = MetadataStore(db)
    try:
        detail = {"retraining_stages": [s["name"] for s in doc["stages"]], "priority": spec.retrain.priority}
        LoopStore(meta).record(spec.app, LOOP_SERIES, "armed", detail)
        meta.record_audit("loop.start", spec.app, detail, actor)
    finally:
        meta.close()
    env = actor_env(db)  # a password written as it is: in the actor's environment, not in the KV
    return get_or_create(
        loop_name(spec.app),
        LoopController,
        (spec.app,),
        head=True,
        max_concurrency=4,
        runtime_env={"env_vars": env} if env else None,
    )


def after_deploy(
    spec: ServeSpec, meta: Any, *, pipeline: Mapping[str, Any] | None = None, storage: str | None = None
) -> list[str]:
    """After the app serves: start its drift monitor (``monitor``) and arm its loop
    (``retrain``); the pipeline is ``retrain.pipeline`` or the one that deployed.  Returns
    what was done, for the run's log."""

    notes = []
    if spec.monitor is not None:
        own = (pipeline or {}).get("notify")
        notify = [dict(n) for n in own] if own is not None else platform_notify(meta)
        notes.append(f"drift monitor against {attach_monitor(spec, ModelRegistry(meta), notify=notify)}")
    if spec.retrain is not None:
        if spec.retrain.pipeline is not None:
            path = Path(spec.retrain.pipeline)
            if not path.is_file():
                raise ConfigError(f"retrain.pipeline: {spec.retrain.pipeline}: no such file")
            data, _ = parse_yaml(path.read_text(encoding="utf-8"), str(path))
            storage = resolve_root(str(data.get("storage") or ".raypipe"))
            pipeline = {**data, "storage": storage}
        if pipeline is None:
            raise ConfigError("retrain.pipeline: give the pipeline YAML whose stages retrain the model")
        storage = storage or resolve_root(str(pipeline.get("storage") or ".raypipe"))
        start_loop(spec, pipeline, db=meta.url, storage=storage)
        notes.append(f"closed loop armed ({loop_name(spec.app)}; raypipe loop status {spec.app})")
    return notes


def deploy(spec: ServeSpec, *, db: str | None = None, pipeline: Mapping[str, Any] | None = None) -> AppStatus:
    """Deploy the app (:func:`raypipe.serving.app.deploy`), then start its drift monitor and
    arm its closed loop (``pipeline``: the pipeline document the loop retrains with, unless
    ``retrain.pipeline``)."""
    st = serving.deploy(spec, db=db)
    meta = MetadataStore(resolve_db(db))
    try:
        after_deploy(spec, meta, pipeline=pipeline)
    finally:
        meta.close()
    return st


def shutdown(app: str) -> None:
    """Stop the app's closed loop (a retraining run in flight is stopped), then the app
    (:func:`raypipe.serving.app.shutdown`)."""
    stop_loop(app)
    serving.shutdown(app)


def after_deploy_stage(kind: StageKind, commit: CommitContext) -> str | None:
    """The runner's hook after a ``deploy`` stage succeeded (on the driver): the app's drift
    monitor and closed loop (``monitor``, ``retrain``); the loop retrains with this run's
    pipeline unless ``retrain.pipeline`` names another."""
    if not isinstance(kind, DeployStage) or commit.outputs.get("deployment") is None:
        return None
    if kind.params.monitor is None and kind.params.retrain is None:
        return None
    rec = commit.meta.get_run(commit.run_id)
    notes = after_deploy(kind.serve_spec(), commit.meta, pipeline=json.loads(rec.config_json), storage=rec.storage)
    return "; ".join(notes) or None


#: The hooks of this layer the API gives the runner (:class:`raypipe.runner.executor.Executor`).
AFTER_SUCCESS = {"deploy": after_deploy_stage}
