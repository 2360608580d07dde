"""The one training loop of built-in models, and their predictor.

What a built-in model is (its YAML spec, the features it takes) is
:mod:`raypipe.models.builtin_spec`; its network is :mod:`raypipe.models.networks`.
``train`` (as Ray Train workers) and ``tune`` (as one Tune trial each) run the same
loop, :class:`_Loop`; only how it gets batches and reports differs (:class:`_TrainIO`,
:class:`_TuneIO`).  The loop trains an MLP or a small CNN on the feature columns of
the ``train`` dataset, evaluates on ``validation`` when given, and writes a
checkpoint every epoch (or every ``checkpoint_every_steps`` steps) that is itself a
model package (:mod:`raypipe.store.models`): the weights, the architecture, the
features, the label's classes and the standardization it expects.  A restarted
worker group (Ray Train's ``max_failures``) or trial continues from the last
checkpoint: the epoch and step count, optimizer and schedule state.

:func:`predictor` loads a stored package back for ``evaluate`` and serving.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from raypipe.exceptions import StageError
from raypipe.models.builtin_spec import BuiltinTraining, plain_label
from raypipe.models.networks import build_net, load_weights
from raypipe.models.preprocess import Encoded, Preprocessor, to_floats
from raypipe.store.models import ModelPackage

WEIGHTS = "model.pt"
TRAIN_STATE = "train_state.pt"


def prepare(
    params: BuiltinTraining, datasets: Mapping[str, Any], data: Mapping[str, Any], meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The loop's config for ``params`` and the Ray Dataset inputs (``train`` required,
    ``validation`` optional): the params, ``_data`` (:func:`~raypipe.models.builtin_spec.describe_data`
    of ``train``),
    ``_inputs`` and ``_meta`` (extra model metadata, e.g. ``trained_by`` and ``code``)."""
    unknown = sorted(set(datasets) - {"train", "validation"})
    if "train" not in datasets or unknown:
        raise StageError(
            "built-in models take dataset inputs `train` and optionally `validation`; got "
            + (", ".join(sorted(datasets)) or "none")
        )
    return {**params.model_dump(), "_data": dict(data), "_inputs": sorted(datasets), "_meta": dict(meta or {})}


def model_columns(data: Mapping[str, Any]) -> list[str]:
    """The columns the model reads: its features and the label."""
    return [*data["features"], data["label"]]


# ---------------------------------------------------------------- the loop
#: Rows encoded at once in a training worker (rounded up to a multiple of the batch size).
ENCODE_ROWS = 4096
#: The class index of rows whose label is missing or unknown (ignored by the loss).
IGNORE = -100

Tensors = tuple[Any, Any, Any]


class _IO:
    """How the loop gets data and reports: Ray Train workers or a Tune trial."""

    rank = 0

    def prepare(self, model: Any) -> Any:
        return model

    def batches(
        self, name: str, batch_size: int, epoch: int, encode: Callable[[Mapping[str, Any]], Tensors]
    ) -> Iterator[Tensors]:
        """Minibatches of encoded ``(dense, embedded, y)`` tensors, in stream order."""
        raise NotImplementedError

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def checkpoint(self) -> Any:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        raise NotImplementedError

    def allreduce(self, values: list[float]) -> list[float]:
        return values


def _split(t: Tensors, batch_size: int) -> Iterator[Tensors]:
    n = len(t[2])
    for i in range(0, n, batch_size):
        yield t[0][i : i + batch_size], t[1][i : i + batch_size], t[2][i : i + batch_size]


class _TrainIO(_IO):
    def __init__(self, inputs: list[str], columns: list[str]) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.inputs = inputs
        self.columns = columns

    def prepare(self, model: Any) -> Any:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def has(self, name: str) -> bool:
        return name in self.inputs

    def batches(
        self, name: str, batch_size: int, epoch: int, encode: Callable[[Mapping[str, Any]], Tensors]
    ) -> Iterator[Tensors]:
        import ray.train

        shard = ray.train.get_dataset_shard(name)
        rows = batch_size * max(1, math.ceil(ENCODE_ROWS / batch_size))
        for table in shard.iter_batches(batch_size=rows, batch_format="pyarrow"):
            yield from _split(encode({c: table.column(c) for c in self.columns}), batch_size)

    def checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=ckpt)

    def allreduce(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        if self.world <= 1 or not dist.is_initialized():
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


class _TuneIO(_IO):
    def __init__(self, frames: Mapping[str, Any], seed: int) -> None:
        self.frames, self.seed = frames, seed
        self.encoded: dict[str, Tensors] = {}

    def has(self, name: str) -> bool:
        return name in self.frames

    def batches(
        self, name: str, batch_size: int, epoch: int, encode: Callable[[Mapping[str, Any]], Tensors]
    ) -> Iterator[Tensors]:
        import torch

        if name not in self.encoded:  # a trial's frames are encoded once
            df = self.frames[name]
            self.encoded[name] = encode({c: df[c] for c in df.columns})
        t = self.encoded[name]
        n = len(t[2])
        if name == "train":
            order = torch.as_tensor(np.random.default_rng(self.seed + epoch).permutation(n))
            t = (t[0][order], t[1][order], t[2][order])
        yield from _split(t, batch_size)

    def checkpoint(self) -> Any:
        import ray.tune

        return ray.tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        import ray.tune

        ckpt = ray.tune.Checkpoint.from_directory(folder) if folder else None
        ray.tune.report(metrics, checkpoint=ckpt)


def label_codes(meta: Mapping[str, Any], values: Any) -> np.ndarray:
    """Classification: the class index of each label (:data:`IGNORE` for missing or
    unknown labels); regression: float64 values (NaN for missing)."""

    if meta["task"] != "classification":
        return to_floats(values)
    import pandas as pd
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_numpy(zero_copy_only=False)
    index = pd.Index(list(meta["classes"]))
    codes = index.get_indexer(pd.Index(np.asarray(values)).map(plain_label) if index.dtype == object else values)
    return np.where(codes < 0, IGNORE, codes).astype(np.int64)


class _Loop:
    def __init__(self, config: Mapping[str, Any], io: _IO) -> None:
        self.params = BuiltinTraining.model_validate({k: v for k, v in config.items() if not k.startswith("_")})
        self.meta: dict[str, Any] = dict(config["_data"])
        self.meta["spec"] = self.params.model.model_dump()
        self.pre = Preprocessor.from_meta(self.meta)
        self.io = io
        self.extra_meta: dict[str, Any] = dict(config.get("_meta", {}))

    def _encode(self, columns: Mapping[str, Any]) -> Tensors:
        """Encoded features and label codes of a chunk of rows; rows without a usable label
        (missing, or a class training never saw) are dropped."""
        import torch

        enc = self.pre.encode(columns)
        y = label_codes(self.meta, columns[self.meta["label"]])
        keep = (y != IGNORE) if self.meta["task"] == "classification" else ~np.isnan(y)
        dense, emb = enc.dense, enc.embedded
        if not keep.all():
            dense, emb, y = dense[keep], emb[keep], y[keep]
        yt = torch.from_numpy(y) if self.meta["task"] == "classification" else torch.from_numpy(y.astype(np.float32))
        if self.meta["task"] != "classification":
            yt = yt.unsqueeze(1)
        return torch.from_numpy(np.ascontiguousarray(dense)), torch.from_numpy(np.ascontiguousarray(emb)), yt

    def _schedule(self, opt: Any) -> Any:
        import torch

        s, epochs = self.params.schedule, self.params.epochs
        if s.name == "cosine":
            main: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, epochs - s.warmup_epochs), eta_min=s.min_lr
            )
        elif s.name == "step":
            main = torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
        elif s.name == "exponential":
            main = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma)
        else:
            main = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        if s.warmup_epochs == 0:
            return main
        warm = torch.optim.lr_scheduler.LinearLR(
            opt, start_factor=1.0 / (s.warmup_epochs + 1), total_iters=s.warmup_epochs
        )
        return torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[s.warmup_epochs])

    def run(self) -> None:
        import torch

        p = self.params
        torch.manual_seed(p.seed)
        net = build_net(self.meta, self.pre)
        o = p.optimizer
        if o.name == "sgd":
            opt: Any = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
            opt = cls(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        sched = self._schedule(opt)
        epoch, step, start_epoch = 0, 0, 0
        ckpt = self.io.checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                load_weights(net, torch.load(Path(d) / WEIGHTS, weights_only=True))
                # the optimizer's and the schedule's states: tensors and plain data
                state = torch.load(Path(d) / TRAIN_STATE, weights_only=True)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["schedule"])
            epoch, step = state["epoch"], state["step"]
            start_epoch = epoch
        model = self.io.prepare(net)
        loss_fn = torch.nn.CrossEntropyLoss() if self.meta["task"] == "classification" else torch.nn.MSELoss()
        every = p.checkpoint_every_steps
        skip = state["batch"] if ckpt is not None else 0  # batches of the epoch done before the checkpoint
        while epoch < p.epochs:
            model.train()
            sums = [0.0, 0.0, 0.0]  # loss * n, correct, n
            for i, (xd, xc, y) in enumerate(self.io.batches("train", p.batch_size, epoch, self._encode)):
                if i < skip:
                    continue
                opt.zero_grad()
                out = model(xd, xc)
                loss = loss_fn(out, y)
                loss.backward()
                opt.step()
                step += 1
                sums[0] += loss.item() * len(y)
                sums[1] += float((out.argmax(1) == y).sum()) if self.meta["task"] == "classification" else 0.0
                sums[2] += len(y)
                if every and step % every == 0:
                    self._report(
                        net, opt, sched, epoch, step, i + 1, {"epoch": epoch, "step": step, "start_epoch": start_epoch}
                    )
            skip = 0
            sched.step()
            loss_sum, correct, n = self.io.allreduce(sums)
            metrics: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "start_epoch": start_epoch,
                "loss": loss_sum / max(n, 1),
            }
            if self.meta["task"] == "classification":
                metrics["accuracy"] = correct / max(n, 1)
            metrics["lr"] = opt.param_groups[0]["lr"]
            if self.io.has("validation"):
                metrics.update(self._validate(model, loss_fn))
            epoch += 1
            self._report(net, opt, sched, epoch, step, 0, metrics)

    def _validate(self, model: Any, loss_fn: Any) -> dict[str, float]:
        import torch

        model.eval()
        sums = [0.0, 0.0, 0.0]
        with torch.no_grad():
            for xd, xc, y in self.io.batches("validation", 1024, 0, self._encode):
                out = model(xd, xc)
                sums[0] += float(loss_fn(out, y)) * len(y)
                sums[1] += float((out.argmax(1) == y).sum()) if self.meta["task"] == "classification" else 0.0
                sums[2] += len(y)
        loss_sum, correct, n = self.io.allreduce(sums)
        out_m = {"val_loss": loss_sum / max(n, 1)}
        if self.meta["task"] == "classification":
            out_m["val_accuracy"] = correct / max(n, 1)
        return out_m

    def _report(
        self, net: Any, opt: Any, sched: Any, epoch: int, step: int, batch: int, metrics: dict[str, Any]
    ) -> None:
        import torch

        if self.io.rank != 0:
            self.io.report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(net.state_dict(), Path(d) / WEIGHTS)
            state = {
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "epoch": epoch,
                "step": step,
                "batch": batch,
            }
            torch.save(state, Path(d) / TRAIN_STATE)
            ModelPackage.create(
                d, {**self.meta, **self.extra_meta, "metrics": metrics, "params": self.params.model_dump()}
            )
            self.io.report(metrics, d)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for built-in models."""
    _Loop(config, _TrainIO(list(config["_inputs"]), model_columns(config["_data"]))).run()


def merge_trial_config(base: Mapping[str, Any], trial: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with a trial's values: top-level keys (``epochs``) or dotted paths (``optimizer.lr``)."""
    out = json.loads(json.dumps(dict(base)))
    for key, value in trial.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StageError(f"trial parameter {key!r}: {part!r} is not a section")
        node[leaf] = value
    return out


def tune_trainable(base: Mapping[str, Any], datasets: Mapping[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A Tune function trainable for built-in models: ``base`` is the built-in training
    config (with ``_data`` from :func:`~raypipe.models.builtin_spec.describe_data`),
    ``datasets`` pandas frames by input name (``train``, optional ``validation``).  A
    trial's config overrides ``base``."""

    def trainable(config: dict[str, Any]) -> None:
        merged = merge_trial_config(base, config)
        _Loop(merged, _TuneIO(datasets, int(merged.get("seed", 0)))).run()

    return trainable


# ---------------------------------------------------------------- inference
class Predictor:
    """A stored built-in model, ready to predict on DataFrames or rows (CPU, eval mode)."""

    def __init__(self, package: ModelPackage) -> None:
        import torch

        meta = package.meta
        if not meta.get("spec"):
            raise StageError("model package has no built-in spec; give a `predict` function for user-trained models")
        self.meta = meta
        self.features: list[str] = meta["features"]
        self.pre = Preprocessor.from_meta(meta)
        self.net = build_net(meta, self.pre)
        load_weights(self.net, torch.load(package.file(WEIGHTS), weights_only=True))
        self.net.eval()
        self.classes = np.asarray(meta.get("classes") or [])

    def forward(self, enc: Encoded) -> np.ndarray:
        """Class probabilities (classification) or predicted values (regression) of encoded inputs."""
        import torch

        with torch.no_grad():
            out = self.net(torch.from_numpy(np.ascontiguousarray(enc.dense)), torch.from_numpy(enc.embedded))
            if self.meta["task"] == "classification":
                out = torch.softmax(out, dim=1)
            return out.numpy()

    def outputs(self, df: Any) -> np.ndarray:
        """Class probabilities (classification) or predicted values (regression) of a DataFrame
        (or any mapping of column -> values) holding the feature columns."""
        return self.forward(self.pre.encode({f: df[f] for f in self.features if f in df}))

    def labels(self, out: np.ndarray) -> np.ndarray:
        """Predictions from :meth:`forward`'s outputs: classes, or values."""
        if self.meta["task"] == "classification":
            return self.classes[out.argmax(1)]
        return out[:, 0]

    def predict(self, df: Any) -> np.ndarray:
        return self.labels(self.outputs(df))


def predictor(package: ModelPackage) -> Predictor:
    return Predictor(package)
