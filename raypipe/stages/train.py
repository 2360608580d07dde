"""``train`` stage kind: a PyTorch training loop on Ray Train, as a gang the scheduler admitted.

``function: pkg.mod:loop`` is Ray Train's ``train_loop_per_worker(config)``: it
reads its shard of every dataset input with ``ray.train.get_dataset_shard(name)``
(streamed from the dataset's files by Ray Data; nothing is collected on the
driver), trains, and calls ``ray.train.report(metrics, checkpoint=...)``.  Inputs
that are not datasets (a scaler, a vocabulary) arrive in ``config`` under their
input name, next to ``params.config``.

One Ray Train worker runs per bundle of the stage's gang (``gang_size``), each with
the stage's ``resources``.  The stage holds a ledger grant and Ray Train's own
placement group is kept on the granted nodes by label selectors, so the gang the
scheduler admitted is where the workers run.  Reading the datasets (Ray Data
tasks feeding the workers) takes CPUs beside the grant, bounded by Ray Train.  ``use_gpu: auto`` trains on GPUs when
the grant has GPUs and CUDA is present, else on CPU with gloo, with the same code.
Checkpoints go to the stage's checkpoint folder (the same for every attempt and for
``resume``), so a restarted attempt, and each of Ray Train's ``max_failures``
restarts, continues from the last checkpoint (``ray.train.get_checkpoint()``).

Outputs: ``checkpoint`` (the last checkpoint, a ``.tar`` of its folder),
``metrics`` (the last report) and ``history`` (every report).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from raypipe.exceptions import StageError
from raypipe.stages.base import StageContext, StageKind, StageParams, module_fingerprint
from raypipe.stages.python import FUNC_RE, function_fingerprint, import_check, import_function


class TrainParams(StageParams):
    function: Annotated[str, Field(pattern=FUNC_RE)]
    config: dict[str, Any] = Field(default_factory=dict)
    use_gpu: bool | Literal["auto"] = "auto"
    #: Restarts of the worker group (from the last checkpoint) after a worker or node dies.
    max_failures: Annotated[int, Field(ge=-1)] = 0
    keep_checkpoints: Annotated[int, Field(ge=1)] = 2


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
        return ["checkpoint", "metrics", "history"]

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        problem = import_check(self.params.function)
        issues: list[tuple[tuple[str | int, ...], str]] = [(("function",), problem)] if problem else []
        for name in set(input_names) & set(self.params.config):
            issues.append((("config", name), f"{name!r} is both an input and a config key; rename one"))
        return issues

    def fingerprint(self) -> str:
        return module_fingerprint(__name__) + function_fingerprint(self.params.function)

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from raypipe.scheduler.backend import NODE_ID_LABEL
        from raypipe.stages.data.common import as_dataset, is_table

        loop = import_function(self.params.function)
        datasets, config = {}, dict(self.params.config)
        for name, value in inputs.items():
            if is_table(value):
                datasets[name] = as_dataset(value, f"input {name!r}")
            else:
                config[name] = value
        gpu = use_gpu(self.params.use_gpu, ctx.resources.gpu)
        selectors = [{NODE_ID_LABEL: n} for n in ctx.grant_nodes] if ctx.grant_nodes else None
        scaling = ScalingConfig(
            num_workers=ctx.gang_size,
            use_gpu=gpu,
            resources_per_worker=worker_resources(ctx, gpu),
            label_selector=selectors,
        )
        storage = ctx.checkpoint_dir or str(ctx.workdir / "ray-train")
        run_config = RunConfig(
            name="train",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=self.params.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=self.params.keep_checkpoints),
            callbacks=[_history_callback(f"{storage}/history.jsonl")],
        )
        trainer = TorchTrainer(
            loop, train_loop_config=config, scaling_config=scaling, run_config=run_config, datasets=datasets
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        history = _read_history(f"{storage}/history.jsonl")
        out: dict[str, Any] = {"metrics": _plain(result.metrics or {}), "history": history}
        if result.checkpoint is None:
            raise StageError(f"{self.params.function} reported no checkpoint (call ray.train.report(..., checkpoint=))")
        with result.checkpoint.as_directory() as folder:
            archive = ctx.workdir / "checkpoint.tar"
            with tarfile.open(archive, "w") as tar:
                for f in sorted(Path(folder).rglob("*")):
                    tar.add(f, arcname=str(f.relative_to(folder)), recursive=False)
        out["checkpoint"] = archive
        return out


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    import math

    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            v = None
        elif hasattr(v, "item"):
            v = v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            out[str(k)] = v
    return out


def _fs_path(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return (pafs.LocalFileSystem(), uri) if "://" not in uri else pafs.FileSystem.from_uri(uri)


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
            with fs.open_output_stream(p) as f:  # object stores cannot append
                f.write(old + (json.dumps(_plain(metrics[0])) + "\n").encode())

    return History()


def _read_history(path: str) -> list[dict[str, Any]]:
    fs, p = _fs_path(path)
    if fs.get_file_info(p).type.name != "File":
        return []
    with fs.open_input_stream(p) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
