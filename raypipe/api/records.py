"""The record: runs, their failures and outputs, models, artifacts, the metadata store's schema
version, the scheduler's queue, the scheduling benchmark."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from raypipe import identity
from raypipe.api.pipelines import open_metadata
from raypipe.bench.scheduling import run_scheduling_benchmark
from raypipe.failures import Failure, stage_failures
from raypipe.runner.executor import RunResult
from raypipe.runner.plan import Plan
from raypipe.runner.ray_session import connect_existing
from raypipe.scheduler.client import get_controller
from raypipe.store.artifacts import ArtifactStore, root_of
from raypipe.store.metadata import RunRecord, StageRunRecord, open_existing
from raypipe.store.migrations import MIGRATIONS, code_version
from raypipe.store.registry import AliasEvent, LineageNode, ModelRegistry, ModelSummary, ModelVersion, parse_ref


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
        with identity.acting_for(meta):  # the move is audited with the caller's name
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

    connect_existing(address)
    handle = get_controller(create=False)
    return {"jobs": ray.get(handle.queue.remote()), "stats": ray.get(handle.stats.remote())}


def db_status(db: str | None = None) -> dict[str, Any]:
    """The schema version of the metadata store and of this code, without changing the store:
    ``{"db", "backend", "version" (None: an empty database), "code_version", "state"
    ("current", "older": ``raypipe db upgrade`` applies ``pending``, "newer": upgrade raypipe,
    "empty"), "pending": [{"version", "description"}]}``."""
    meta = open_existing(db, upgrade=False)
    try:
        version = meta.schema_version
    finally:
        meta.close()
    code = code_version()
    if version is None:
        state = "empty"
    else:
        state = "current" if version == code else ("older" if version < code else "newer")
    pending = [m.to_dict() for m in MIGRATIONS if version is None or m.version > version]
    return {
        "db": meta.location,
        "backend": meta.backend,
        "version": version,
        "code_version": code,
        "state": state,
        "pending": pending if state in ("older", "empty") else [],
    }


def db_upgrade(db: str | None = None) -> dict[str, Any]:
    """Bring the metadata store to this code's schema version, one migration per transaction:
    ``{"db", "from_version", "to_version", "code_version", "applied": [{"version", "description"}]}``.
    A store newer than the code is refused (a ``StorageError``)."""
    meta = open_existing(db, upgrade=False)
    try:
        return meta.upgrade_schema().to_dict()
    finally:
        meta.close()


def read_artifact(uri_or_sha: str, db: str | None = None, *, allow_pickle: bool = False) -> Any:
    """Load a stored artifact (by sha256 or URI) as the value the stage returned, its bytes
    checked against its sha256.  A pickle (a stage's output with ``pickle: true``) is read
    only with ``allow_pickle``: unpickling runs code from the file."""
    meta = open_metadata(db)
    try:
        ref = meta.artifact(uri_or_sha)
    finally:
        meta.close()
    return ArtifactStore(root_of(ref.uri)).get_value(ref, allow_pickle=allow_pickle)


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

    return run_scheduling_benchmark(config, on_progress=on_progress, on_start=on_start)
