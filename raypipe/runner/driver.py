"""A run's driver: start a planned pipeline run or resume a recorded one, on Ray, with every
stage and artifact recorded.  The API (:func:`raypipe.run`, :func:`raypipe.resume`) and the
runner's entry point (``python -m raypipe.runner``) both come here."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from raypipe import identity
from raypipe.config import ConfigSource, PipelineConfig, parse_config
from raypipe.exceptions import RaypipeError
from raypipe.failures import stage_failures
from raypipe.principal import Principal, acting_as
from raypipe.runner import provenance
from raypipe.runner.events import tee
from raypipe.runner.executor import AfterSuccess, Executor, RunResult, StageEvent, request_stop
from raypipe.runner.notify_hook import RunNotifier
from raypipe.runner.plan import Plan, build_plan
from raypipe.runner.ray_session import check_storage_shared, ensure_ray
from raypipe.runner.run_metrics import RunMetrics
from raypipe.scheduler.client import SchedulerClient, configure_controller, get_controller, platform_version
from raypipe.secrets import redact, resolve_secrets
from raypipe.store.artifacts import ArtifactStore, is_local, resolve_root
from raypipe.store.metadata import MetadataStore, open_existing, pid_alive, resolve_db
from raypipe.store.platform import PlatformStore, StoredPlatform

EventHook = Callable[[StageEvent], None]
StartHook = Callable[[str, Plan], None]

_RUN_ID = re.compile(r"^(?!\.)[A-Za-z0-9_.-]{1,200}$")  # a folder name too (checkpoints/<run id>/)


def metadata_url(cfg: PipelineConfig, db: str | None = None) -> str:
    """The metadata store of a pipeline: ``db`` (``--db``), ``$RAYPIPE_DB``, its ``metadata:``,
    ``raypipe.db`` in an absolute local storage root, else the project's store
    (:func:`raypipe.store.metadata.resolve_db`)."""
    return resolve_db(db, metadata=cfg.metadata, storage=cfg.storage)


def stored_config_json(cfg: PipelineConfig, storage: str) -> str:
    """What ``runs.config_json`` keeps of a run's config: the config as validated (secret
    references as written, ``${env:PG_PASSWORD}``) with its storage root resolved, and a
    password written as it is in the ``metadata`` URL redacted (``postgresql://u:***@h/db``):
    a resumed or retraining run reaches its store through ``--db`` or ``$RAYPIPE_DB``, never
    through this copy."""
    update: dict[str, Any] = {"storage": storage}
    if cfg.metadata is not None:
        update["metadata"] = redact(cfg.metadata)
    return cfg.model_copy(update=update).model_dump_json()


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def in_ray_job() -> bool:
    """Whether this process is the entrypoint of a Ray job (``ray job submit``)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_job_paths(cfg: PipelineConfig, db: str | None) -> None:
    """Inside a Ray job the working directory is Ray's temporary copy of ``--working-dir``,
    deleted with the session: a relative local storage root or database would put the
    run's artifacts and records there, invisible to ``raypipe runs`` and then lost."""
    if not in_ray_job():
        return
    bad = []
    if is_local(cfg.storage) and not os.path.isabs(os.path.expanduser(cfg.storage)):
        bad.append(f"storage {cfg.storage!r}")
    url = metadata_url(cfg, db)
    real = resolve_secrets(url, "metadata store URL")
    if not real.startswith(("sqlite:", "postgresql")) and "://" not in real and not os.path.isabs(real):
        bad.append(f"metadata store {url!r}")
    if bad:
        raise RaypipeError(
            f"this run is a Ray job, whose working directory ({os.getcwd()}) is Ray's temporary copy of "
            f"--working-dir, deleted with the session: {' and '.join(bad)} would be lost there. Give an "
            "absolute path every node shares or an object store: --set storage=/shared/raypipe (or "
            "s3://bucket/raypipe) and RAYPIPE_DB=/shared/raypipe/raypipe.db (or a postgresql:// URL) in "
            "the job's runtime_env env_vars"
        )


def _with_failures(result: RunResult, meta: MetadataStore) -> RunResult:
    """``result`` with the whole failure (message, category) of each failed stage, from its record."""
    if result.errors:
        found = stage_failures(meta.stage_runs(result.run_id))
        result.failures = {stage: found[stage] for stage in result.errors if stage in found}
    return result


def _principal(meta: MetadataStore, on_behalf_of: str | None) -> tuple[StoredPlatform | None, Principal]:
    """The platform config in force in ``meta`` and the run's principal: the caller's
    (:func:`raypipe.identity.resolve`), or ``on_behalf_of``'s (a closed loop's retraining run)."""
    platform = PlatformStore(meta).latest()
    if on_behalf_of:
        return platform, identity.delegated(platform, on_behalf_of)
    return platform, identity.resolve(platform)


def _notifier(cfg: PipelineConfig, platform: StoredPlatform | None, run_id: str) -> RunNotifier:
    """The run's notifications: the pipeline's ``notify``, else the platform config's."""
    return RunNotifier.of(cfg.notify, platform.config.notify if platform is not None else None, cfg.name, run_id)


def _run_notified(notes: RunNotifier, metrics: RunMetrics, ex: Executor, meta: MetadataStore) -> RunResult:
    """Execute the run; its end is notified (in the background: the run waits at most the
    notifier's flush bound for the receivers)."""
    try:
        result = _with_failures(metrics.run(ex.execute), meta)
        notes.ended(result)
        return result
    finally:
        notes.close()


def scheduler_client(
    cfg: PipelineConfig, platform: StoredPlatform | None, who: Principal, run_id: str
) -> SchedulerClient:
    """The run's view of the cluster's scheduler.  With a platform config, the controller gets
    its settings (ignored if it follows that version or a newer one already); without one, the
    pipeline's ``scheduler:`` section as before, unless the controller follows a platform
    config: then this store is not the platform's, and the run is refused."""
    handle = get_controller()
    if platform is not None:
        configure_controller(handle, platform.settings())
    else:
        current = platform_version(handle)
        if current is not None:
            raise RaypipeError(
                f"the scheduler of this Ray cluster follows an admin's platform config (version {current}), and "
                "this run's metadata store has none: run it with the platform's metadata store (--db or "
                "$RAYPIPE_DB), so its teams and priorities are checked"
            )
        if "scheduler" in cfg.model_fields_set:
            done = configure_controller(handle, cfg.scheduler.settings())
            if not done["applied"]:
                raise RaypipeError(
                    f"the scheduler of this Ray cluster now follows platform config version {done['version']}; "
                    "run this pipeline with the platform's metadata store (--db or $RAYPIPE_DB)"
                )
    return SchedulerClient(handle, owner=run_id, principal=who.name)


def _connect_or_fail(
    meta: MetadataStore,
    run_id: str,
    cfg: PipelineConfig,
    address: str | None,
    platform: StoredPlatform | None,
    who: Principal,
) -> SchedulerClient | None:
    """Connect to Ray and the scheduler; on failure the run is recorded as failed, not left running."""
    try:
        ensure_ray(cfg.ray, address)
        check_storage_shared(resolve_root(cfg.storage))
        if not cfg.scheduler.enabled:
            return None
        return scheduler_client(cfg, platform, who, run_id)
    except BaseException as e:
        meta.finish_run(run_id, "failed", f"cannot start Ray or the scheduler: {e}")
        raise


def start_run(
    plan: Plan,
    *,
    config_path: str | None = None,
    address: str | None = None,
    use_cache: bool = True,
    on_event: EventHook | None = None,
    on_start: StartHook | None = None,
    run_id: str | None = None,
    db: str | None = None,
    after_success: Mapping[str, AfterSuccess] | None = None,
    on_behalf_of: str | None = None,
) -> RunResult:
    """Run a planned pipeline to the end (see :func:`raypipe.run`); ``after_success``: hooks
    per stage kind (:class:`~raypipe.runner.executor.Executor`).  The run acts as the caller's
    principal (``on_behalf_of``: that user's, for a closed loop's retraining run), checked
    against the store's platform config before anything is recorded."""
    if run_id is not None and not _RUN_ID.match(run_id):
        raise RaypipeError(
            f"run id {run_id!r}: use letters, digits, '_', '.' and '-' (at most 200; not starting with '.')"
        )
    cfg = plan.config
    check_job_paths(cfg, db)
    root = resolve_root(cfg.storage)
    artifacts = ArtifactStore(root)
    artifacts.check_writable()
    meta = MetadataStore(metadata_url(cfg, db))
    try:
        platform, who = _principal(meta, on_behalf_of)
        identity.check_pipeline(cfg, platform, who, plan.source)
        if run_id is None:
            run_id = new_run_id(cfg.name)
        elif meta.run_exists(run_id):
            raise RaypipeError(f"run {run_id} already exists in {meta.location}; give a new run id")
        with acting_as(who):
            meta.create_run(run_id, cfg.name, stored_config_json(cfg, root), config_path, root, actor=who.name)
            meta.record_environment(run_id, provenance.capture(config_path))
            if on_start:
                on_start(run_id, plan)
            the_run = run_id
            metrics = RunMetrics(plan)  # Prometheus, through the cluster's raypipe-metrics actor
            notes = _notifier(cfg, platform, run_id)
            ex = Executor(
                plan,
                run_id,
                meta,
                artifacts,
                use_cache=use_cache,
                on_event=tee(notes.on_event, metrics.on_event, on_event),
                connect=lambda: _connect_or_fail(meta, the_run, cfg, address, platform, who),
                after_success=after_success,
            )
            return _run_notified(notes, metrics, ex, meta)
    finally:
        meta.close()


def resume_run(
    run_id: str,
    *,
    db: str | None = None,
    address: str | None = None,
    on_event: EventHook | None = None,
    on_start: StartHook | None = None,
    after_success: Mapping[str, AfterSuccess] | None = None,
    on_behalf_of: str | None = None,
) -> RunResult:
    """Continue a failed, crashed or killed run; stages it finished are not run again.  The
    resume acts as the caller (or ``on_behalf_of``), checked like a new run."""
    meta = open_existing(db)
    try:
        platform, who = _principal(meta, on_behalf_of)
        rec = meta.get_run(run_id)
        if rec.status == "succeeded":
            raise RaypipeError(f"run {rec.run_id} already succeeded; nothing to resume")
        alive = rec.driver_pid != os.getpid() and pid_alive(rec.driver_pid)
        if rec.status == "running" and rec.driver_host == os.uname().nodename and alive:
            raise RaypipeError(f"run {rec.run_id} is still running (driver pid {rec.driver_pid}); stop it first")
        source = ConfigSource(path=rec.config_path or f"<run {rec.run_id}>")
        cfg = parse_config(json.loads(rec.config_json), source)
        plan = build_plan(cfg, source)
        identity.check_pipeline(cfg, platform, who, source)
        artifacts = ArtifactStore(rec.storage)
        artifacts.check_writable()
        with acting_as(who):
            meta.claim_run(rec.run_id)
            done = {
                name: sr
                for name, sr in meta.done_stages(rec.run_id).items()
                if all(artifacts.exists(ref) for ref in meta.io_of(sr.id, "out").values())
            }
            if on_start:
                on_start(rec.run_id, plan)
            metrics = RunMetrics(plan)
            notes = _notifier(cfg, platform, rec.run_id)
            ex = Executor(
                plan,
                rec.run_id,
                meta,
                artifacts,
                reuse=done,
                on_event=tee(notes.on_event, metrics.on_event, on_event),
                connect=lambda: _connect_or_fail(meta, rec.run_id, cfg, address, platform, who),
                after_success=after_success,
            )
            return _run_notified(notes, metrics, ex, meta)
    finally:
        meta.close()


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM (``loop stop``, a supervisor) stops the run cleanly: its stages
    are cancelled and it is recorded ``stopped`` (not left ``running``)."""

    def handler(signum: int, frame: Any) -> None:
        request_stop("SIGTERM")  # the run loop stops at its next turn (never inside a Ray call)

    handler.raypipe_stop = True  # type: ignore[attr-defined] # kept when Ray connects (ray_session.ensure_ray)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
