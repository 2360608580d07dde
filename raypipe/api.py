"""Public entry points: load, validate, run, resume, and read the record of runs and the model registry."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raypipe.config import ConfigSource, PipelineConfig, parse_config, read_config
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.failures import Failure, stage_failures
from raypipe.runner.executor import Executor, RunResult, StageEvent
from raypipe.runner.plan import Plan, build_plan
from raypipe.scheduler.client import SchedulerClient, get_controller
from raypipe.serve.app import AppStatus
from raypipe.store.artifacts import ArtifactStore, is_local, resolve_root, root_of
from raypipe.store.metadata import (
    MetadataStore,
    RunRecord,
    StageRunRecord,
    open_existing,
    pid_alive,
    resolve_db,
)
from raypipe.store.registry import AliasEvent, LineageNode, ModelRegistry, ModelSummary, ModelVersion, parse_ref

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
    from raypipe.serve.rollout import is_rollout_file

    if is_rollout_file(config):
        raise RaypipeError(
            f"{config}: a rollout spec, not a pipeline; start it with: raypipe rollout start APP --config {config}"
        )
    cfg, source = read_config(config, overrides)
    plan = build_plan(cfg, source)
    _check_loops(plan, str(config))
    return plan


def _check_loops(plan: Plan, where: str) -> None:
    """A deploy stage's ``retrain`` must cut a retraining path out of this pipeline."""
    from raypipe.serve.loop import retraining_pipeline

    for ps in plan.stages.values():
        retrain = getattr(ps.kind.params, "retrain", None) if ps.spec.kind == "deploy" else None
        if retrain is None or retrain.pipeline is not None:
            continue
        try:
            retraining_pipeline(plan.config.model_dump(mode="json"), retrain, ps.kind.params.app, ps.kind.params.model)
        except RaypipeError as e:
            raise ConfigError(f"{where}: stage {ps.spec.name}: {e}") from None


def validate(paths: Sequence[str | os.PathLike[str]]) -> list[Any]:
    """Validate several files; raise one error listing every file's problems.  A pipeline
    file gives its Plan, a rollout spec (``rollout:`` at the top) its RolloutSpec."""
    from raypipe.serve.rollout import is_rollout_file, load_rollout_file

    plans: list[Any] = []
    errors = []
    for p in paths:
        try:
            plans.append(load_rollout_file(p) if is_rollout_file(p) else load(p))
        except RaypipeError as e:
            errors.append(str(e))
    if errors:
        raise RaypipeError("\n".join(errors))
    return plans


def metadata_url(cfg: PipelineConfig, db: str | None = None) -> str:
    """The metadata store of a pipeline: ``db`` (``--db``), ``$RAYPIPE_DB``, its ``metadata:``,
    ``raypipe.db`` in an absolute local storage root, else the project's store
    (:func:`raypipe.store.metadata.resolve_db`)."""
    return resolve_db(db, metadata=cfg.metadata, storage=cfg.storage)


def open_metadata(db: str | None = None) -> MetadataStore:
    """The metadata store at ``db`` (a path, a sqlite:/// or a postgresql:// URL), ``$RAYPIPE_DB`` or
    ``./.raypipe/raypipe.db``."""
    return open_existing(db)


_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def _new_run_id(name: str) -> str:
    import time

    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


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
    if run_id is not None and not _RUN_ID.match(run_id):
        raise RaypipeError(f"run id {run_id!r}: use letters, digits, '_', '.' and '-' (at most 200)")
    plan = load(config, overrides)
    cfg = plan.config
    _check_job_paths(cfg, db)
    root = resolve_root(cfg.storage)
    artifacts = ArtifactStore(root)
    artifacts.check_writable()
    meta = MetadataStore(metadata_url(cfg, db))
    try:
        if run_id is None:
            run_id = _new_run_id(cfg.name)
        elif meta.run_exists(run_id):
            raise RaypipeError(f"run {run_id} already exists in {meta.location}; give a new run id")
        config_path = None if isinstance(config, PipelineConfig) else str(Path(config).resolve())
        stored = cfg.model_copy(update={"storage": root})
        meta.create_run(run_id, cfg.name, stored.model_dump_json(), config_path, root)
        if on_start:
            on_start(run_id, plan)
        ex = Executor(
            plan,
            run_id,
            meta,
            artifacts,
            use_cache=use_cache,
            on_event=on_event,
            connect=lambda: _connect_or_fail(meta, run_id, cfg, address),
        )
        return _with_failures(ex.execute(), meta)
    finally:
        meta.close()


def _with_failures(result: RunResult, meta: MetadataStore) -> RunResult:
    """``result`` with the whole failure (message, category) of each failed stage, from its record."""
    if result.errors:
        found = stage_failures(meta.stage_runs(result.run_id))
        result.failures = {stage: found[stage] for stage in result.errors if stage in found}
    return result


def _connect_or_fail(
    meta: MetadataStore, run_id: str, cfg: PipelineConfig, address: str | None
) -> SchedulerClient | None:
    """Connect to Ray and the scheduler; on failure the run is recorded as failed, not left running."""
    from raypipe.runner.ray_session import check_storage_shared, ensure_ray

    try:
        ensure_ray(cfg.ray, address)
        check_storage_shared(resolve_root(cfg.storage))
        if not cfg.scheduler.enabled:
            return None
        explicit = "scheduler" in cfg.model_fields_set
        return SchedulerClient(get_controller(cfg.scheduler.settings() if explicit else None), owner=run_id)
    except BaseException as e:
        meta.finish_run(run_id, "failed", f"cannot start Ray or the scheduler: {e}")
        raise


def in_ray_job() -> bool:
    """Whether this process is the entrypoint of a Ray job (``ray job submit``)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def _check_job_paths(cfg: PipelineConfig, db: str | None) -> None:
    """Inside a Ray job the working directory is Ray's temporary copy of ``--working-dir``,
    deleted with the session: a relative local storage root or database would put the
    run's artifacts and records there, invisible to ``raypipe runs`` and then lost."""
    if not in_ray_job():
        return
    bad = []
    if is_local(cfg.storage) and not os.path.isabs(os.path.expanduser(cfg.storage)):
        bad.append(f"storage {cfg.storage!r}")
    url = metadata_url(cfg, db)
    if not url.startswith(("sqlite:", "postgresql")) and "://" not in url and not os.path.isabs(url):
        bad.append(f"metadata store {url!r}")
    if bad:
        raise RaypipeError(
            f"this run is a Ray job, whose working directory ({os.getcwd()}) is Ray's temporary copy of "
            f"--working-dir, deleted with the session: {' and '.join(bad)} would be lost there. Give an "
            "absolute path every node shares or an object store: --set storage=/shared/raypipe (or "
            "s3://bucket/raypipe) and RAYPIPE_DB=/shared/raypipe/raypipe.db (or a postgresql:// URL) in "
            "the job's runtime_env env_vars"
        )


def _pid_alive(pid: int | None) -> bool:
    return pid != os.getpid() and pid_alive(pid)


def resume(
    run_id: str,
    *,
    db: str | None = None,
    address: str | None = None,
    on_event: EventHook | None = None,
    on_start: Callable[[str, Plan], None] | None = None,
) -> RunResult:
    """Continue a failed, crashed or killed run; stages it finished are not run again."""
    meta = open_metadata(db)
    try:
        rec = meta.get_run(run_id)
        if rec.status == "succeeded":
            raise RaypipeError(f"run {rec.run_id} already succeeded; nothing to resume")
        if rec.status == "running" and rec.driver_host == os.uname().nodename and _pid_alive(rec.driver_pid):
            raise RaypipeError(f"run {rec.run_id} is still running (driver pid {rec.driver_pid}); stop it first")
        source = ConfigSource(path=rec.config_path or f"<run {rec.run_id}>")
        cfg = parse_config(json.loads(rec.config_json), source)
        plan = build_plan(cfg, source)
        artifacts = ArtifactStore(rec.storage)
        artifacts.check_writable()
        meta.claim_run(rec.run_id)
        done = {
            name: sr
            for name, sr in meta.done_stages(rec.run_id).items()
            if all(artifacts.exists(ref) for ref in meta.io_of(sr.id, "out").values())
        }
        if on_start:
            on_start(rec.run_id, plan)
        ex = Executor(
            plan,
            rec.run_id,
            meta,
            artifacts,
            reuse=done,
            on_event=on_event,
            connect=lambda: _connect_or_fail(meta, rec.run_id, cfg, address),
        )
        return _with_failures(ex.execute(), meta)
    finally:
        meta.close()


@dataclass(frozen=True)
class RunFailures:
    """Why a run's unfinished stages failed last (see :mod:`raypipe.failures`)."""

    run_id: str
    status: str
    config_path: str | None
    failures: dict[str, Failure]

    @property
    def deterministic(self) -> bool:
        """The run ended (not killed mid-way: then resuming runs what it left) and every
        failure would happen again on a resume (a missed gate, a failed validation...)."""
        ended = self.status == "failed"
        return ended and bool(self.failures) and all(f.deterministic for f in self.failures.values())


def run_failures(run_id: str, db: str | None = None) -> RunFailures:
    """The last failure of each stage of a run that did not finish (for ``resume``'s warning)."""
    meta = open_metadata(db)
    try:
        rec = meta.get_run(run_id)
        done = set(meta.done_stages(rec.run_id))
        found = stage_failures(meta.stage_runs(rec.run_id))
        return RunFailures(rec.run_id, rec.status, rec.config_path, {k: f for k, f in found.items() if k not in done})
    finally:
        meta.close()


@dataclass(frozen=True)
class RunDetail:
    run: RunRecord
    stages: list[StageRunRecord]
    outputs: dict[int, dict[str, Any]]

    def failure_of(self, stage_run: StageRunRecord) -> Failure | None:
        """A stage run's failure: its clean message (no Ray traceback, no colour codes), category
        and traceback."""
        return stage_failures([stage_run]).get(stage_run.stage)

    @property
    def failures(self) -> dict[str, Failure]:
        """Stage -> the failure of its latest run, for the stages the run did not finish."""
        return stage_failures(self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Each stage run's ``error`` is the clean message; ``error_category`` and ``traceback``
        (when one was recorded) beside it."""
        stages = []
        for s in self.stages:
            f = self.failure_of(s)
            err = f.to_dict() if f is not None else {"error_category": None, "traceback": None}
            stages.append({**s.to_dict(), **err, "outputs": self.outputs.get(s.id, {})})
        return {"run": self.run.to_dict(), "stages": stages}


def list_runs(db: str | None = None, limit: int = 50) -> list[RunRecord]:
    """Recent runs; runs a driver on this machine left ``running`` when it died are marked
    ``interrupted`` first (:meth:`MetadataStore.reap_dead_drivers`)."""
    meta = open_metadata(db)
    try:
        meta.reap_dead_drivers()
        return meta.list_runs(limit)
    finally:
        meta.close()


def show_run(run_id: str, db: str | None = None) -> RunDetail:
    meta = open_metadata(db)
    try:
        meta.reap_dead_drivers()
        rec = meta.get_run(run_id)
        stages = meta.stage_runs(rec.run_id)
        outputs = {s.id: {k: v.to_dict() for k, v in meta.io_of(s.id, "out").items()} for s in stages}
        return RunDetail(rec, stages, outputs)
    finally:
        meta.close()


@dataclass(frozen=True)
class ModelDetail:
    """A model version, the lineage of its artifact down to the raw files, and its model's aliases."""

    version: ModelVersion
    description: str
    aliases: dict[str, int]
    lineage: LineageNode
    alias_history: list[AliasEvent]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.version.to_dict(),
            "description": self.description,
            "model_aliases": dict(self.aliases),
            "lineage": self.lineage.to_dict(),
            "alias_history": [e.to_dict() for e in self.alias_history],
        }


def list_models(db: str | None = None) -> list[ModelSummary]:
    """Registered models by name: versions, the latest one (with its metrics) and aliases."""
    meta = open_metadata(db)
    try:
        return ModelRegistry(meta).list_models()
    finally:
        meta.close()


def show_model(ref: str, db: str | None = None) -> ModelDetail:
    """A model version by ``NAME`` (latest), ``NAME:VERSION`` or ``NAME@ALIAS``, with its lineage."""
    meta = open_metadata(db)
    try:
        reg = ModelRegistry(meta)
        mv = reg.get(ref)
        summary = reg.summary(mv.name)
        return ModelDetail(
            version=mv,
            description=summary.description,
            aliases=summary.aliases,
            lineage=reg.lineage_tree(mv.sha256, mv.run_id),
            alias_history=reg.alias_history(mv.name),
        )
    finally:
        meta.close()


def set_model_alias(
    name: str, version: int, alias: str, *, remove: bool = False, reason: str = "", db: str | None = None
) -> AliasEvent | None:
    """Point ``alias`` of model ``name`` at ``version`` (moving it from another version), or with
    ``remove`` delete it if it points at ``version``.  Returns the recorded change (None: no change)."""
    parse_ref(f"{name}@{alias}")  # a clear error for a malformed name or alias
    meta = open_metadata(db)
    try:
        reg = ModelRegistry(meta)
        if remove:
            return reg.remove_alias(name, alias, reason=reason, version=version)
        return reg.set_alias(name, version, alias, reason=reason)
    finally:
        meta.close()


def final_outputs(plan: Plan, result: RunResult, max_bytes: int = 8192) -> dict[str, dict[str, Any]]:
    """Small JSON outputs of the stages nothing depends on: what a person wants to see at the end."""
    sinks = [s for s in plan.order if not any(s in ps.upstream for ps in plan.stages.values())]
    shown: dict[str, dict[str, Any]] = {}
    for stage in sinks:
        for name, ref in result.outputs.get(stage, {}).items():
            if ref.format == "json" and ref.size <= max_bytes:
                shown.setdefault(stage, {})[name] = ArtifactStore(root_of(ref.uri)).get_value(ref)
    return shown


def scheduler_queue(address: str | None = None) -> dict[str, Any]:
    """Every queued and running job of the cluster's scheduler, with why each waiting job waits."""
    import ray

    from raypipe.runner.ray_session import connect_existing

    connect_existing(address)
    handle = get_controller(create=False)
    return {"jobs": ray.get(handle.queue.remote()), "stats": ray.get(handle.stats.remote())}


def read_artifact(uri_or_sha: str, db: str | None = None) -> Any:
    """Load a stored artifact (by sha256 or URI) as the value the stage returned."""
    meta = open_metadata(db)
    try:
        ref = meta.artifact(uri_or_sha)
    finally:
        meta.close()
    return ArtifactStore(root_of(ref.uri)).get_value(ref)


def bench_scheduling(
    config: Mapping[str, Any],
    *,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_start: Callable[[Any, Any], None] | None = None,
) -> dict[str, Any]:
    """Replay a job trace through scheduling policies, simulated and/or live; return results.json's document.

    ``config`` holds the fields of :class:`raypipe.bench.scheduling.SchedulingBenchConfig`
    (``trace``, ``format``, ``gpus``/``gpus_per_node`` or ``cluster``, ``policies``,
    ``mode``, ``out``...).  Invalid input raises a ``RaypipeError`` before anything runs.
    ``on_progress(policy, finished, total)`` reports progress; ``on_start(trace, cluster)``
    is called once both are loaded.
    """
    from raypipe.bench.scheduling import run_scheduling_benchmark

    return run_scheduling_benchmark(config, on_progress=on_progress, on_start=on_start)


# --------------------------------------------------------------------------- A/B reports and canary rollouts


def _serve_session(address: str | None) -> None:
    """Join the running cluster whose Serve apps are asked (flag, $RAY_ADDRESS, or ``ray start``'s)."""
    from raypipe.runner.ray_session import connect_existing

    connect_existing(address)


def _metadata_or_none(db: str | None) -> MetadataStore | None:
    try:
        return open_metadata(db)
    except RaypipeError:
        if db:
            raise
        return None


def ab_report(
    app: str,
    *,
    since_s: float | None = None,
    control: str | None = None,
    metric: str = "auto",
    min_samples: int = 100,
    alpha: float = 0.05,
    db: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """The A/B statistics of a deployed app: per-variant counts, rates and latency, each variant
    against the control (default: the ``production`` variant, else the lowest version), the
    sample-ratio-mismatch check; over the last ``since_s`` seconds (default: everything)."""
    from raypipe.serve import ops

    ops.check_report_args(since_s, metric, min_samples, alpha)
    _serve_session(address)
    meta = _metadata_or_none(db)
    try:
        return ops.ab_report(
            app, meta, since_s=since_s, control=control, metric=metric, min_samples=min_samples, alpha=alpha
        )
    finally:
        if meta is not None:
            meta.close()


def rollout_spec(
    app: str,
    *,
    candidate: str | None = None,
    baseline: str | None = None,
    steps: Sequence[float] | None = None,
    interval_s: float | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Any:
    """A validated :class:`~raypipe.serve.rollout.RolloutSpec` from a rollout YAML file and/or flags
    (flags win); checked before Ray is touched."""
    from raypipe.serve.rollout import build_spec, load_rollout_file

    flags = {"candidate": candidate, "baseline": baseline, "steps": steps, "interval_s": interval_s}
    flags = {k: (list(v) if k == "steps" else v) for k, v in flags.items() if v is not None}
    if config is not None:
        spec = load_rollout_file(config, flags)
        if spec.app != app:
            raise RaypipeError(f"{config}: rolls out app {spec.app!r}, but the command names app {app!r}")
        return spec
    if candidate is None:
        raise RaypipeError("rollout start: give --candidate (e.g. v4 or digits@candidate) or --config FILE")
    return build_spec({"app": app, **flags}, where="rollout start")


def rollout_start(spec: Any, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Start a canary rollout (a detached controller actor: it goes on without this driver)."""
    from raypipe.serve import ops

    meta = open_metadata(db)
    try:
        _serve_session(address)
        return ops.rollout_start(spec, meta)
    finally:
        meta.close()


def rollout_status(app: str, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The app's latest rollout: live state (step, weights, last decision) and its recorded events."""
    from raypipe.serve import ops

    meta = open_metadata(db)
    try:
        live_ok = True
        try:
            _serve_session(address)
        except RaypipeError:
            live_ok = False  # no cluster to ask: the record alone
        return ops.rollout_status(app, meta, live_ok=live_ok)
    finally:
        meta.close()


def rollout_abort(app: str, *, reason: str = "", db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Stop the app's rollout: candidate weight 0, an ``aborted`` event."""
    from raypipe.serve import ops

    meta = open_metadata(db)
    try:
        _serve_session(address)
        return ops.rollout_abort(app, meta, reason)
    finally:
        meta.close()


# --------------------------------------------------------------------------- drift monitoring


def monitor_status(app: str, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The drift monitor of a served app (``raypipe-monitor-<app>``): per-feature statistics and
    thresholds, the last windows per variant, events, the debouncer and memory; an app without a
    monitor is a RaypipeError."""
    from raypipe.runner.ray_session import connect_existing
    from raypipe.serve.loop import loop_status as read_loop
    from raypipe.serve.monitor import monitor_status as read_status

    connect_existing(address)
    st = read_status(app)
    try:
        meta = open_metadata(db)
    except RaypipeError:
        return st  # no store: the monitor's own view
    try:
        loop = read_loop(app, meta)
        st["loop"] = {"state": loop.get("state"), "cycles": len(loop.get("cycles") or [])}
    except RaypipeError:
        st["loop"] = None  # no closed loop recorded for the app
    finally:
        meta.close()
    return st


def loop_status(app: str, *, db: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The app's closed loop: live state (if its controller runs) and the timeline of its cycles
    (drift, retraining run, gate, canary steps, promotion or rollback), from the metadata store."""
    from raypipe.serve.loop import loop_status as read_status

    meta = open_metadata(db)
    try:
        try:
            _serve_session(address)
        except RaypipeError:
            pass  # no cluster to ask: the record alone
        return read_status(app, meta)
    finally:
        meta.close()


def loop_stop(app: str, *, db: str | None = None, address: str | None = None) -> bool:
    """Disarm the app's closed loop and stop a retraining run in flight (its driver records it
    ``stopped``); the stop is recorded in the loop's timeline in the metadata store."""
    from raypipe.runner.ray_session import connect_existing
    from raypipe.serve.loop import LOOP_SERIES, stop_loop
    from raypipe.store.rollouts import LoopStore

    connect_existing(address)
    if not stop_loop(app):
        raise RaypipeError(f"app {app!r} has no closed loop running")
    try:
        meta = open_metadata(db)
    except RaypipeError:
        return True  # no store to record it in: the loop is stopped all the same
    try:
        LoopStore(meta).record(app, LOOP_SERIES, "stopped", {"by": "raypipe loop stop"})
    finally:
        meta.close()
    return True


# ---------------------------------------------------------------------- serving
def _connect_serving(address: str | None) -> None:
    from raypipe.runner.ray_session import connect_existing

    try:
        connect_existing(address)
    except RaypipeError as e:
        raise RaypipeError(
            f"{e}; serving needs a Ray cluster that outlives this command: start one with "
            "`ray start --head` and pass --address (or set RAY_ADDRESS)"
        ) from None


def deploy(source: str | os.PathLike[str], *, db: str | None = None, address: str | None = None) -> list[AppStatus]:
    """Deploy what ``source`` describes: an app spec YAML (``app``, ``model``, ``variants``...,
    see :class:`raypipe.serve.spec.ServeSpec`) or a pipeline YAML, whose ``deploy`` stages are
    deployed with the pipeline's metadata store (the other stages are not run).  Joins a
    running Ray cluster (``address``, the pipeline's ``ray.address``, ``$RAY_ADDRESS`` or the
    one ``ray start`` left on this machine); returns each app's status once it serves."""
    from raypipe.serve import app as serving
    from raypipe.serve.spec import ServeSpec, load_spec, read_yaml

    data = read_yaml(source)
    specs: list[ServeSpec]
    if "stages" in data:
        plan = load(source)
        specs = [ps.kind.params for ps in plan.stages.values() if ps.spec.kind == "deploy"]  # type: ignore[misc]
        if not specs:
            raise RaypipeError(
                f"{source}: pipeline {plan.config.name!r} has no `deploy` stage; add one or give an app spec "
                "(app, model, variants)"
            )
        db = metadata_url(plan.config, db)
        address = address or plan.config.ray.address
        pipeline: dict[str, Any] | None = {
            **plan.config.model_dump(mode="json"),
            "storage": resolve_root(plan.config.storage),
        }
    else:
        specs = [load_spec(source)]
        pipeline = None
    _connect_serving(address)
    return [serving.deploy(spec, db=db, pipeline=pipeline) for spec in specs]


def split(app: str, weights: Mapping[str, float] | Sequence[str], *, address: str | None = None) -> AppStatus:
    """Change a served app's traffic split live (``["v3=50", "v4=50"]`` or ``{"v3": 50, ...}``)."""
    from raypipe.serve import app as serving

    _connect_serving(address)
    return serving.set_weights(app, weights)


def serve_status(app: str | None = None, *, address: str | None = None) -> list[AppStatus]:
    """The status of one served app (or of every app raypipe deployed on the cluster)."""
    from raypipe.serve import app as serving

    _connect_serving(address)
    return [serving.status(name) for name in ([app] if app else serving.apps())]


def serve_shutdown(app: str, *, address: str | None = None) -> None:
    """Stop a served app: its Serve deployments, its resource reservation and its metrics."""
    from raypipe.serve import app as serving

    _connect_serving(address)
    serving.shutdown(app)
