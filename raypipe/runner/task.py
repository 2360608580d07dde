"""The body of one stage attempt, executed as a Ray task on a worker."""

from __future__ import annotations

from typing import Any

from raypipe.exceptions import StageError, StorageError
from raypipe.resources import Resources
from raypipe.runner.stage_log import capture
from raypipe.runner.worker_output import WorkerOutput
from raypipe.secrets import resolve_secrets
from raypipe.stages.base import StageContext, StageKind
from raypipe.stages.registry import get_stage_kind
from raypipe.store import claims
from raypipe.store.artifacts import ArtifactRef, ArtifactStore
from raypipe.store.logs import publish


def stage_kind(payload: dict[str, Any]) -> StageKind:
    """The payload's stage kind with its params.  Secret references (``${env:NAME}``...) are
    resolved here, in the task, where the stage reads its params: the payload, the stored
    config and the cache key keep them as written."""
    cls = get_stage_kind(payload["kind"])
    params = payload["params"]
    if cls.Params.resolve_references:  # a deploy stage resolves its own (the app keeps the references)
        params = resolve_secrets(params, f"stages.{payload['stage']}.params")
    return cls(cls.Params.model_validate(params))


def execute_stage(payload: dict[str, Any]) -> dict[str, Any]:
    """Load inputs, run the stage kind, store outputs by content; return their references.

    ``payload`` holds only plain data (kind name, params, artifact refs), so the
    task is the same whether it runs on this machine or on a remote node.  What the stage
    prints and logs is also kept in its attempt's log file (:mod:`raypipe.runner.stage_log`).
    """
    import ray

    store = ArtifactStore(payload["storage"])
    kind = stage_kind(payload)
    declared = payload.get("outputs")
    ctx = StageContext(
        run_id=payload["run_id"],
        stage=payload["stage"],
        attempt=payload["attempt"],
        resources=Resources.from_dict(payload["resources"]),
        storage=payload["storage"],
        job_id=payload.get("job_id"),
        checkpoint_dir=payload.get("checkpoint_dir"),
        gang_size=payload.get("gang_size", 1),
        grant_nodes=payload.get("grant_nodes"),
    )
    header = f"stage {ctx.stage} attempt {ctx.attempt} of run {ctx.run_id} ({payload['kind']})"
    runtime = ray.get_runtime_context()
    task_id = runtime.get_task_id() if ray.is_initialized() else None
    # the Ray tasks and actors this task starts print elsewhere: their output joins the log
    workers = WorkerOutput(task_id, runtime.get_job_id()) if task_id else None

    def keep_log() -> None:  # on an object-store root the log is uploaded when the attempt ends
        publish(ctx.storage, ctx.run_id, ctx.stage, ctx.attempt, ctx.log_path)

    try:
        # the stage's log file; who claims what it writes (raypipe.store.claims)
        with (
            capture(ctx.log_path, header, workers=workers, on_close=keep_log),
            claims.owner(ctx.run_id, ctx.stage, ctx.attempt),
            kind.session(ctx),
        ):
            refs = _run(kind, ctx, store, payload, declared)
    finally:
        ctx.cleanup()
    return {"outputs": refs, "node_id": runtime.get_node_id()}


def _run(
    kind: StageKind, ctx: StageContext, store: ArtifactStore, payload: dict[str, Any], declared: list[str] | None
) -> dict[str, Any]:
    ctx.input_refs = {name: ArtifactRef.from_dict(d) for name, d in payload["inputs"].items()}
    allow_pickle = bool(payload.get("pickle"))  # the stage's `pickle: true`
    inputs = {}
    for name, ref in ctx.input_refs.items():
        try:
            inputs[name] = store.get_value(ref, allow_pickle=allow_pickle)
        except StorageError as e:
            raise type(e)(f"stage {payload['stage']!r}, input {name!r}: {e}") from None  # PickleRefused stays one
    values = kind.run(ctx, inputs) or {}
    if declared is not None and set(values) != set(declared):
        missing = sorted(set(declared) - set(values))
        extra = sorted(set(values) - set(declared))
        raise StageError(
            f"stage {payload['stage']!r} declares outputs {declared} but returned {sorted(values)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; undeclared {extra}" if extra else "")
        )
    refs = {}
    for name, value in values.items():
        try:
            refs[name] = store.put_value(value, allow_pickle=allow_pickle).to_dict()
        except StorageError as e:
            raise type(e)(f"stage {payload['stage']!r}, output {name!r}: {e}") from None
    return refs
