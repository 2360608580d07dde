"""Pipelines: load, validate, run and resume."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from raypipe import identity
from raypipe.config import ConfigSource, PipelineConfig, parse_config, read_config
from raypipe.config.platform import is_platform_document
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.loop.arming import AFTER_SUCCESS
from raypipe.loop.cut import retraining_pipeline
from raypipe.runner import driver
from raypipe.runner.executor import RunResult, StageEvent
from raypipe.runner.plan import Plan, build_plan
from raypipe.serving.rollout.settings import is_rollout_file, load_rollout_file
from raypipe.stages.deploy import DeployParams
from raypipe.store.metadata import (
    MetadataStore,
    open_existing,
)
from raypipe.store.platform import PlatformStore

ConfigLike = str | os.PathLike[str] | PipelineConfig
EventHook = Callable[[StageEvent], None]


def load(config: ConfigLike, overrides: Sequence[str] = ()) -> Plan:
    """Read (if a path), validate and plan a pipeline; raise ConfigError naming file, line and field."""
    if isinstance(config, PipelineConfig):
        if overrides:
            raise RaypipeError("overrides apply to YAML files; change the PipelineConfig directly instead")
        # Re-validate: a model built in Python may have been mutated after construction.
        cfg = parse_config(config.model_dump(), ConfigSource(path=f"<pipeline {config.name}>"))
        return build_plan(cfg, ConfigSource(path=f"<pipeline {config.name}>"))

    if is_rollout_file(config):
        raise RaypipeError(
            f"{config}: a rollout spec, not a pipeline; start it with: raypipe rollout start APP --config {config}"
        )
    if is_platform_file(config):
        raise RaypipeError(
            f"{config}: a platform config, not a pipeline; an admin applies it: raypipe admin apply {config}"
        )
    cfg, source = read_config(config, overrides)
    plan = build_plan(cfg, source)
    _check_loops(plan, str(config))
    return plan


def _check_loops(plan: Plan, where: str) -> None:
    """A deploy stage's ``retrain`` must cut a retraining path out of this pipeline."""

    for ps in plan.stages.values():
        params = ps.kind.params
        if ps.spec.kind != "deploy" or not isinstance(params, DeployParams):
            continue
        retrain = params.retrain
        if retrain is None or retrain.pipeline is not None:
            continue
        try:
            retraining_pipeline(plan.config.model_dump(mode="json"), retrain, params.app, params.model)
        except RaypipeError as e:
            raise ConfigError(f"{where}: stage {ps.spec.name}: {e}") from None


def is_platform_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a YAML file holding a platform config (any problem reading it: False,
    so the pipeline loader reports it)."""
    try:
        return is_platform_document(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError):
        return False


def check_platform(plan: Plan, db: str | None = None) -> int | None:
    """Check a planned pipeline against the platform config of its metadata store as the caller
    would run it (the checks a run makes before it starts: the scheduler settings a platform
    owns, known teams, the caller's teams, priority ranges); the platform config version
    checked against (None: the store has none, or there is no store yet)."""
    url = driver.metadata_url(plan.config, db)
    try:
        meta = open_existing(url)
    except RaypipeError:
        return None  # no store yet: nothing to check against
    try:
        platform = PlatformStore(meta).latest()
        identity.check_pipeline(plan.config, platform, identity.resolve(platform), plan.source)
        return platform.version if platform is not None else None
    finally:
        meta.close()


def validate(paths: Sequence[str | os.PathLike[str]], *, platform: bool = False, db: str | None = None) -> list[Any]:
    """Validate several files; raise one error listing every file's problems.  A pipeline
    file gives its Plan, a rollout spec (``rollout:`` at the top) its RolloutSpec, a platform
    config (``kind: platform``) its PlatformConfig.  ``platform``: also check each pipeline
    against its metadata store's platform config (``db``: that store), as the caller."""

    plans: list[Any] = []
    errors = []
    for p in paths:
        try:
            if is_rollout_file(p):
                plans.append(load_rollout_file(p))
            elif is_platform_file(p):
                plans.append(identity.load_platform(p))
            else:
                plan = load(p)
                if platform:
                    check_platform(plan, db)
                plans.append(plan)
        except RaypipeError as e:
            errors.append(str(e))
    if errors:
        raise RaypipeError("\n".join(errors))
    return plans


metadata_url = driver.metadata_url


def open_metadata(db: str | None = None) -> MetadataStore:
    """The metadata store at ``db`` (a path, a sqlite:/// or a postgresql:// URL), ``$RAYPIPE_DB`` or
    ``./.raypipe/raypipe.db``."""
    return open_existing(db)


def run(
    config: ConfigLike,
    *,
    overrides: Sequence[str] = (),
    address: str | None = None,
    use_cache: bool = True,
    on_event: EventHook | None = None,
    on_start: Callable[[str, Plan], None] | None = None,
    run_id: str | None = None,
    db: str | None = None,
) -> RunResult:
    """Run a pipeline to the end on Ray; every stage and artifact is recorded.  ``run_id``
    (default: ``NAME-DATE-TIME-RANDOM``) lets an orchestrator know the id before the run
    starts; it must be new.  ``db``: the metadata store (:func:`metadata_url`)."""
    plan = load(config, overrides)
    config_path = None if isinstance(config, PipelineConfig) else str(Path(config).resolve())
    return driver.start_run(
        plan,
        config_path=config_path,
        address=address,
        use_cache=use_cache,
        on_event=on_event,
        on_start=on_start,
        run_id=run_id,
        db=db,
        after_success=AFTER_SUCCESS,
    )


def resume(
    run_id: str,
    *,
    db: str | None = None,
    address: str | None = None,
    on_event: EventHook | None = None,
    on_start: Callable[[str, Plan], None] | None = None,
) -> RunResult:
    """Continue a failed, crashed or killed run; stages it finished are not run again."""
    return driver.resume_run(
        run_id, db=db, address=address, on_event=on_event, on_start=on_start, after_success=AFTER_SUCCESS
    )
