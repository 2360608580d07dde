"""``train`` stage kind: PyTorch training on Ray Train, as a gang the scheduler admitted.

Two ways to say what to train:

- ``model: {type: mlp|cnn, ...}`` with ``optimizer``, ``schedule``, ``epochs``,
  ``batch_size``...: the built-in loop (:mod:`raypipe.models.builtin`) trains it on
  the ``train`` dataset input (features: its numeric columns but ``label``,
  standardized with the training split's statistics), validates on ``validation``
  when given, and checkpoints every epoch (or every ``checkpoint_every_steps``).
- ``function: pkg.mod:loop``: Ray Train's ``train_loop_per_worker(config)``; it reads
  its shard of every dataset input with ``ray.train.get_dataset_shard(name)``, trains
  and calls ``ray.train.report(metrics, checkpoint=...)``.  Non-dataset inputs (a
  vocabulary) arrive in ``config`` under their input name, next to ``params.config``.

One Ray Train worker runs per bundle of the stage's gang (``gang_size``), each with
the stage's ``resources``.  The stage holds a ledger grant and Ray Train's own
placement group is kept on the granted nodes by label selectors, so the gang the
scheduler admitted is where the workers run.  Datasets up to 256 MB are read into
Ray's object store once, so epochs do not re-read files.  ``use_gpu: auto`` trains
on GPUs when the grant has GPUs and CUDA is present, else on CPU with gloo, with the
same code.  Checkpoints go to the stage's checkpoint folder (the same for every
attempt of the run and for its ``resume``; another run of the pipeline has its own),
so a restarted attempt, and each of Ray Train's ``max_failures`` restarts after a
worker or node dies, continues from the last checkpoint.

Outputs: ``model`` (a model package, :mod:`raypipe.store.models`: the last
checkpoint's files and what the model expects: features, input schema, classes,
standardization, architecture; for user loops, ``predict`` names the function
``evaluate`` uses to run it), ``metrics`` (the last report) and ``history`` (every
report, across restarts).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from raypipe._json import json_scalars
from raypipe.config.tracking import TrackingConfig
from raypipe.exceptions import StageError
from raypipe.models import BUILTIN_MODULES, builtin
from raypipe.models.builtin_spec import BuiltinTraining, ModelSpec
from raypipe.scheduler.backend import NODE_ID_LABEL
from raypipe.stages import tracking
from raypipe.stages.base import CommitContext, StageContext, StageKind, StageParams, module_fingerprint, progress
from raypipe.stages.data.common import as_dataset, data_session, is_table, select_model_columns
from raypipe.stages.data.profile import describe_training_data
from raypipe.stages.python import FUNC_RE, function_fingerprint, import_check, import_function
from raypipe.store.models import META_FILE, ModelPackage


class TrainParams(BuiltinTraining, StageParams):
    """Either ``function`` (a user loop) or ``model`` (the built-in loop, with the
    training fields of :class:`~raypipe.models.builtin_spec.BuiltinTraining`)."""

    #: A user loop: Ray Train's ``train_loop_per_worker(config)``.
    function: Annotated[str | None, Field(pattern=FUNC_RE)] = None
    #: A built-in model (``{type: mlp|cnn, ...}``), trained by the built-in loop.
    model: ModelSpec | None = None  # type: ignore[assignment]
    #: For user loops: ``config`` of the loop; ``predict`` loads the checkpoint for ``evaluate``.
    config: dict[str, Any] = Field(default_factory=dict)
    predict: Annotated[str | None, Field(pattern=FUNC_RE)] = None
    use_gpu: bool | Literal["auto"] = "auto"
    #: Restarts of the worker group (from the last checkpoint) after a worker or node dies.
    max_failures: Annotated[int, Field(ge=-1)] = 0
    keep_checkpoints: Annotated[int, Field(ge=1)] = 2
    #: Experiment tracking (MLflow, W&B) of the training; default: the pipeline's ``tracking``.
    tracking: TrackingConfig | None = None

    not_in_cache_key: ClassVar[frozenset[str]] = frozenset({"tracking"})

    @model_validator(mode="after")
    def _one_loop(self) -> TrainParams:
        if (self.function is None) == (self.model is None):
            raise ValueError("give either `function` (your training loop) or `model` (a built-in model), not both")
        if self.function is not None:
            fields = BuiltinTraining.model_fields
            builtin_only = sorted(
                f
                for f in (set(fields) - {"model"}) & self.model_fields_set
                if getattr(self, f) != fields[f].get_default(call_default_factory=True)
            )
            if builtin_only:
                raise ValueError(
                    f"{', '.join(builtin_only)}: only for built-in models (`model:`); put them in `config`"
                )
        elif self.config or self.predict:
            raise ValueError("`config` and `predict` are for user loops (`function:`)")
        return self

    def builtin(self) -> BuiltinTraining:
        fields = set(BuiltinTraining.model_fields)
        return BuiltinTraining.model_validate({k: v for k, v in self.model_dump().items() if k in fields})


def use_gpu(setting: bool | str, granted_gpus: float) -> bool:
    if setting != "auto":
        return bool(setting)
    if granted_gpus <= 0:
        return False
    import torch

    return torch.cuda.is_available()


def worker_resources(ctx: StageContext, gpu: bool) -> dict[str, float]:
    res: dict[str, float] = {"CPU": ctx.resources.cpu}
    if gpu:
        res["GPU"] = ctx.resources.gpu
    if ctx.resources.memory_mb > 0:
        res["memory"] = ctx.resources.memory_mb * 1024 * 1024
    res.update(ctx.resources.custom_dict)
    return res


class TrainStage(StageKind):
    Params = TrainParams
    packages = ("ray", "torch", "numpy")
    runs_ray_work = True
    params: TrainParams

    def outputs(self) -> list[str]:
        return ["model", "metrics", "history"]

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        issues: list[tuple[tuple[str | int, ...], str]] = []
        if self.params.function is not None:
            problem = import_check(self.params.function)
            issues += [(("function",), problem)] if problem else []
            for name in set(input_names) & set(self.params.config):
                issues.append((("config", name), f"{name!r} is both an input and a config key; rename one"))
        else:
            unknown = sorted(set(input_names) - {"train", "validation"})
            if "train" not in input_names or unknown:
                issues.append(
                    (
                        ("model",),
                        "built-in models take inputs `train` (a dataset) and optionally `validation`"
                        + (f"; unexpected: {', '.join(unknown)}" if unknown else ""),
                    )
                )
        if self.params.predict is not None and (problem := import_check(self.params.predict)):
            issues.append((("predict",), problem))
        return issues + tracking.missing_packages(self.params.tracking)

    def after_success(self, commit: CommitContext) -> str | None:
        tracking.tag_model(
            self.params.tracking, commit.run_id, commit.stage, commit.outputs.get("model"), commit.cached
        )
        return None

    def fingerprint(self) -> str:
        code = module_fingerprint(__name__)
        if self.params.function is not None:
            return code + function_fingerprint(self.params.function)
        return code + module_fingerprint(*BUILTIN_MODULES)

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        with data_session(ctx):  # reading inputs and their statistics: bounded by the grant, quiet
            datasets, config = {}, dict(self.params.config)
            for name, value in inputs.items():
                if is_table(value):
                    datasets[name] = as_dataset(value, f"input {name!r}")
                else:
                    config[name] = value
            meta = {
                "trained_by": {
                    "kind": "train",
                    "function": self.params.function,
                    "stage": ctx.stage,
                    "run_id": ctx.run_id,
                },
                "code": self.code_fingerprint(),
            }
            if self.params.function is not None:
                loop: Any = import_function(self.params.function)
            else:
                loop = builtin.train_loop
                params = self.params.builtin()
                if "train" not in datasets:
                    raise StageError("built-in models take a dataset input `train`")
                data = describe_training_data(params, datasets["train"], ctx)
                datasets = select_model_columns(datasets, builtin.model_columns(data))
                config = builtin.prepare(params, datasets, data, meta)
            datasets = {n: _in_memory_if_small(ds, ctx.input_refs.get(n)) for n, ds in datasets.items()}
        gpu = use_gpu(self.params.use_gpu, ctx.resources.gpu)
        selectors = [{NODE_ID_LABEL: n} for n in ctx.grant_nodes] if ctx.grant_nodes else None
        scaling = ScalingConfig(  # type: ignore[call-arg]  # Train v2's config at runtime; mypy sees ray.air's
            num_workers=ctx.gang_size,
            use_gpu=gpu,
            resources_per_worker=worker_resources(ctx, gpu),
            label_selector=selectors,
        )
        storage = ctx.checkpoint_dir or str(ctx.workdir / "ray-train")
        tracked = tracking.TrainTracking(
            self.params.tracking, ctx, self.params.model_dump(mode="json", exclude={"tracking"}, exclude_none=True)
        )
        with tracked.session():
            run_config = RunConfig(  # type: ignore[call-arg]  # Train v2's config at runtime; mypy sees ray.air's
                name="train",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=self.params.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=self.params.keep_checkpoints),
                callbacks=[_history_callback(f"{storage}/history.jsonl"), *tracked.callbacks()],
                logging_config=LoggingConfig(log_level="WARNING"),  # progress: one line per report (below)
            )
            trainer = TorchTrainer(
                loop,
                train_loop_config=config,
                scaling_config=scaling,
                run_config=run_config,
                datasets=datasets,
                dataset_config=DataConfig(datasets_to_split=shards_to_split(ctx.gang_size)),
            )
            with ray_train_poll_interval(ctx.gang_size):
                result = trainer.fit()
            if result.error is not None:
                raise result.error
            if result.checkpoint is None:
                raise StageError(
                    f"{self.params.function} reported no checkpoint (call ray.train.report(..., checkpoint=))"
                )
            tracked.finish(_read_history(f"{storage}/history.jsonl"))
        metrics = json_scalars(result.metrics or {})
        folder = ctx.workdir / "model"
        with result.checkpoint.as_directory() as d:
            shutil.copytree(d, folder)
        if self.params.function is None:
            package = ModelPackage.open(folder)
        else:
            own = ModelPackage.open(folder).meta if (folder / META_FILE).is_file() else {}
            schema = {n: str(t) for n, t in zip(*_names_types(datasets), strict=True)} if datasets else None
            package = ModelPackage.create(
                folder,
                {
                    "task": None,
                    "features": None,
                    "label": None,
                    "classes": None,
                    "spec": None,
                    "preprocessing": None,
                    "input_schema": schema,
                    "predict": self.params.predict,
                    **meta,
                    "params": json_scalars(self.params.config),
                    "metrics": metrics,
                    **own,
                },
            )
        history = _read_history(f"{storage}/history.jsonl")
        return {"model": package, "metrics": metrics, "history": history}


def shards_to_split(workers: int) -> Literal["all"] | list[str]:
    """Ray Train's ``DataConfig.datasets_to_split`` for ``workers`` workers: with two or more,
    every dataset input is split into a shard per worker; one worker reads each whole, unsplit:
    a split into one shard would start a split coordinator actor per dataset input, each on
    the critical path of the first epoch (seconds on a small machine)."""
    return "all" if workers > 1 else []


#: Datasets up to this size are read once into Ray's object store before training, so
#: epochs iterate blocks in memory instead of re-reading the files every epoch.
MATERIALIZE_MAX_BYTES = 256 * 1024 * 1024


def _in_memory_if_small(ds: Any, ref: Any) -> Any:
    size = getattr(ref, "size", None)
    return ds.materialize() if size is not None and size <= MATERIALIZE_MAX_BYTES else ds


def _names_types(datasets: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    schema = (datasets.get("train") or next(iter(datasets.values()))).schema()
    return list(schema.names), list(schema.types)


def _fs_path(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return (pafs.LocalFileSystem(), uri) if "://" not in uri else pafs.FileSystem.from_uri(uri)


#: How often Ray Train's controller polls its workers (seconds), unless the user set
#: ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: :func:`poll_interval_s`.  The start of training and
#: the end of a run each wait for a poll, and so does every ``ray.train.report`` after the
#: first: a worker holds one unconsumed report (Ray Train's result queue has size 1) and the
#: next report blocks until the controller's poll takes it.  Ray's default of 2 s therefore adds
#: up to 2 s per epoch that reports; a short poll removes that wait.  A poll is one small actor
#: call per worker, so the interval grows with the gang (:data:`POLLS_PER_S_MAX` calls a
#: second at most) up to Ray's default.  A poll that does not answer in time is only waited
#: for again (a worker is declared dead after ``RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S``,
#: 10 minutes).
POLL_INTERVAL_MIN_S = 0.1
POLL_INTERVAL_MAX_S = 2.0
POLLS_PER_S_MAX = 40.0
_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def poll_interval_s(workers: int) -> float:
    """The worker-poll interval for a gang of ``workers``: 0.1 s up to 4 workers, then growing
    so the controller makes at most :data:`POLLS_PER_S_MAX` polls a second, at most 2 s."""
    return min(POLL_INTERVAL_MAX_S, max(POLL_INTERVAL_MIN_S, workers / POLLS_PER_S_MAX))


@contextmanager
def ray_train_poll_interval(workers: int = 1) -> Iterator[None]:
    """While inside, Ray Train's controllers started by this process poll every
    :func:`poll_interval_s` of ``workers`` (Ray Train hands the variable to its controller)."""
    if _POLL_ENV in os.environ:
        yield
        return
    os.environ[_POLL_ENV] = f"{poll_interval_s(workers):g}"
    try:
        yield
    finally:
        os.environ.pop(_POLL_ENV, None)


def _history_callback(path: str) -> Any:
    """A Ray Train callback (run in Train's controller) that appends every report of
    rank 0 to a JSON-lines file beside the checkpoints: the whole history, also
    across restarts (Ray Train keeps only the metrics of retained checkpoints)."""
    from ray.train import UserCallback

    class History(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if not metrics:
                return
            fs, p = _fs_path(path)
            old = b""
            if fs.get_file_info(p).type.name == "File":
                with fs.open_input_stream(p) as f:
                    old = f.read()
            row = json_scalars(metrics[0])
            with fs.open_output_stream(p) as f:  # object stores cannot append
                f.write(old + (json.dumps(row) + "\n").encode())
            progress(
                "report " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            )

    return History()


def _read_history(path: str) -> list[dict[str, Any]]:
    fs, p = _fs_path(path)
    if fs.get_file_info(p).type.name != "File":
        return []
    with fs.open_input_stream(p) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
