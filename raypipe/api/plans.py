"""``raypipe plan`` and ``raypipe rerun``: what a run would do, and a new run of a recorded one."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raypipe.api.pipelines import ConfigLike, EventHook, load
from raypipe.config import ConfigSource, apply_overrides, parse_config
from raypipe.exceptions import RaypipeError
from raypipe.loop.arming import AFTER_SUCCESS
from raypipe.runner import driver, provenance
from raypipe.runner.executor import RunResult
from raypipe.runner.forecast import ClusterNodes, Forecast, StagePlan, read_cluster, would_run
from raypipe.runner.plan import Plan, build_plan
from raypipe.runner.ray_session import ray_target
from raypipe.secrets import resolve_secrets
from raypipe.store.artifacts import ArtifactStore, resolve_root
from raypipe.store.metadata import MetadataStore, RunRecord, open_existing


@dataclass
class PipelinePlan:
    """What ``raypipe run`` would do with a pipeline now (see :mod:`raypipe.runner.forecast`)."""

    pipeline: str
    db: str
    storage: str
    stages: list[StagePlan]
    #: Where the resources were checked (``Ray at ...``), or why not.
    cluster: str
    #: False: no metadata store yet (nothing cached, no previous run).
    store_found: bool = True

    @property
    def would_run(self) -> bool:
        return would_run(self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "db": self.db,
            "storage": self.storage,
            "store_found": self.store_found,
            "cluster": self.cluster,
            "would_run": self.would_run,
            "summary": {
                "run": [s.stage for s in self.stages if s.action == "run"],
                "cached": [s.stage for s in self.stages if s.action == "cached"],
            },
            "stages": [s.to_dict() for s in self.stages],
        }


def _cluster(plan: Plan, address: str | None, check: bool) -> tuple[ClusterNodes | None, str]:
    """The running cluster a run would use, read without starting one; else why it was not checked."""
    if not check:
        return None, "not asked (--no-cluster)"
    target, where = ray_target(plan.config.ray, address)
    if target == "local":
        return None, "no running Ray cluster to ask (a run would start a local Ray)"
    try:
        return read_cluster(target), where
    except RaypipeError as e:
        return None, str(e)


def _store_exists(url: str) -> bool:
    real = resolve_secrets(url, "metadata store URL")
    if real.startswith("postgresql"):
        return True
    try:
        open_existing(url, upgrade=False).close()
    except RaypipeError:
        return False
    return True


def plan_pipeline(
    config: ConfigLike,
    *,
    overrides: Sequence[str] = (),
    db: str | None = None,
    address: str | None = None,
    use_cache: bool = True,
    check_cluster: bool = True,
) -> PipelinePlan:
    """What a run of ``config`` (with ``overrides``) would do, per stage, without running anything:
    ``cached`` (and the stage run it reuses) or ``run`` and why; resources and whether the
    cluster fits them (only a cluster already running is asked; Ray is never started)."""
    plan = load(config, overrides)
    url = driver.metadata_url(plan.config, db)
    root = resolve_root(plan.config.storage)
    artifacts = ArtifactStore(root)
    nodes, where = _cluster(plan, address, check_cluster)
    found = _store_exists(url)
    with tempfile.TemporaryDirectory(prefix="raypipe-plan-") as tmp:
        # no store yet: plan against an empty one rather than create the project's
        meta = MetadataStore(url if found else f"{tmp}/empty.db")
        try:
            stages = Forecast(plan, meta, artifacts, use_cache=use_cache).stages(nodes, "" if nodes else where)
        finally:
            meta.close()
    return PipelinePlan(plan.config.name, meta.location if found else url, root, stages, where, found)


# ---------------------------------------------------------------------------- rerun


@dataclass
class RerunCheck:
    """A recorded run, and how its environment differs from now (one line per difference)."""

    run: RunRecord
    recorded: dict[str, Any] | None
    now: dict[str, Any]
    changes: list[str] = field(default_factory=list)
    db: str = ""

    def to_dict(self) -> dict[str, Any]:
        keep = ("git_commit", "git_dirty", "git_root", "python")
        return {
            "run_id": self.run.run_id,
            "pipeline": self.run.pipeline,
            "config_path": self.run.config_path,
            "recorded": None if self.recorded is None else {k: self.recorded.get(k) for k in keep},
            "now": {k: self.now.get(k) for k in keep},
            "changes": self.changes,
        }


def rerun_check(run_id: str, db: str | None = None) -> RerunCheck:
    """What ``raypipe rerun`` prints before it starts: the recorded git commit, dirty flag and
    packages of ``run_id`` against this process's."""
    meta = open_existing(db)
    try:
        rec = meta.get_run(run_id)
        recorded = meta.environment_of(rec.run_id)
        url = meta.url
    finally:
        meta.close()
    now = provenance.capture(rec.config_path)
    return RerunCheck(rec, recorded, now, provenance.environment_changes(recorded, now), url)


def rerun_plan(check: RerunCheck, overrides: Sequence[str] = ()) -> Plan:
    """The recorded run's config (as stored with it), ``overrides`` applied, validated and planned."""
    source = ConfigSource(path=check.run.config_path or f"<run {check.run.run_id}>")
    data = json.loads(check.run.config_json)
    if overrides:
        data = apply_overrides(data, overrides)
    return build_plan(parse_config(data, source), source)


def rerun(
    check: RerunCheck,
    *,
    overrides: Sequence[str] = (),
    address: str | None = None,
    use_cache: bool = True,
    on_event: EventHook | None = None,
    on_start: Callable[[str, Plan], None] | None = None,
    run_id: str | None = None,
) -> RunResult:
    """A new run from the config recorded with ``check.run`` (see :func:`rerun_check`), in the
    same metadata store, acting as the caller (checked as ``raypipe run`` is)."""
    plan = rerun_plan(check, overrides)
    return driver.start_run(
        plan,
        config_path=check.run.config_path,
        address=address,
        use_cache=use_cache,
        on_event=on_event,
        on_start=on_start,
        run_id=run_id,
        db=check.db,
        after_success=AFTER_SUCCESS,
    )
