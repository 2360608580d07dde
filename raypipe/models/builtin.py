"""Models described in YAML and the one training loop that trains them.

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
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raypipe.exceptions import DataError, StageError
from raypipe.store.models import ModelPackage

WEIGHTS = "model.pt"
TRAIN_STATE = "train_state.pt"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLPSpec(_Spec):
    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 128])
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    activation: Literal["relu", "gelu", "tanh"] = "relu"


class CNNSpec(_Spec):
    """A small CNN over features laid out as an image (``input_shape: [C, H, W]``, row-major)."""

    type: Literal["cnn"] = "cnn"
    input_shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=3, max_length=3)]
    channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [16, 32])
    kernel: Annotated[int, Field(ge=1)] = 3
    hidden: Annotated[int, Field(ge=1)] = 64
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    activation: Literal["relu", "gelu", "tanh"] = "relu"


ModelSpec = Annotated[MLPSpec | CNNSpec, Field(discriminator="type")]


class OptimizerSpec(_Spec):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd only


class ScheduleSpec(_Spec):
    """Learning-rate schedule, stepped once per epoch (``warmup_epochs`` ramp linearly first)."""

    name: Literal["constant", "cosine", "step", "exponential"] = "constant"
    step_size: Annotated[int, Field(ge=1)] = 10  # step
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1  # step, exponential
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    min_lr: Annotated[float, Field(ge=0)] = 0.0  # cosine


class BuiltinTraining(_Spec):
    """What the built-in loop trains: ``params.model`` and the training settings of ``train``/``tune``."""

    model: ModelSpec
    label: str = "label"
    #: Input columns, in order; default: every numeric column except the label.
    features: list[str] | None = None
    task: Literal["classification", "regression"] = "classification"
    #: Standardize features with the training split's mean and standard deviation.
    standardize: bool = True
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    seed: int = 0
    #: Also checkpoint every N optimizer steps inside an epoch (default: once per epoch).
    checkpoint_every_steps: Annotated[int | None, Field(ge=1)] = None

    @model_validator(mode="after")
    def _cnn_size(self) -> BuiltinTraining:
        if isinstance(self.model, CNNSpec) and self.features is not None:
            c, h, w = self.model.input_shape
            if c * h * w != len(self.features):
                raise ValueError(
                    f"model.input_shape {self.model.input_shape} needs {c * h * w} features, got {len(self.features)}"
                )
        return self


# ---------------------------------------------------------------- the data contract
def describe_data(params: BuiltinTraining, ds: Any, schema: Any) -> dict[str, Any]:
    """What the model expects, computed from the training dataset in one pass: features,
    input schema, the label's classes and the standardization statistics."""

    names = list(schema.names)
    if params.label not in names:
        raise DataError(f"label column {params.label!r} is not in the training data; columns: {', '.join(names)}")
    types = dict(zip(schema.names, [str(t) for t in schema.types], strict=True))
    if params.features is None:
        features = [n for n in names if n != params.label and _numeric(types[n])]
    else:
        missing = [f for f in params.features if f not in types]
        if missing:
            raise DataError(f"feature columns not in the training data: {', '.join(missing)}")
        features = list(params.features)
    bad = [f for f in features if not _numeric(types[f])]
    if bad:
        raise DataError(f"feature columns must be numeric: {', '.join(f'{f} ({types[f]})' for f in bad)}")
    if not features:
        raise DataError("no numeric feature columns in the training data")
    if isinstance(params.model, CNNSpec):
        c, h, w = params.model.input_shape
        if c * h * w != len(features):
            raise DataError(
                f"model.input_shape {params.model.input_shape} needs {c * h * w} features, the data has {len(features)}"
            )
    stats = _block_stats_total(ds, features, params.label, params.standardize, params.task == "classification")
    out: dict[str, Any] = {
        "features": features,
        "label": params.label,
        "task": params.task,
        "input_schema": {f: types[f] for f in features},
        "spec": params.model.model_dump(),
        "preprocessing": None,
        "classes": None,
    }
    if params.standardize:
        out["preprocessing"] = {
            "standardize": {"mean": stats["mean"], "std": [s if s > 0 else 1.0 for s in stats["std"]]}
        }
    if params.task == "classification":
        classes = stats["classes"]
        if len(classes) < 2:
            raise DataError(
                f"label {params.label!r} has {len(classes)} distinct value(s); classification needs 2 or more"
            )
        out["classes"] = classes
    return out


def _block_stats(batch: Any, features: list[str], label: str, classes: bool) -> dict[str, Any]:
    """Per block: row count, feature means and sums of squared deviations, label values."""
    x = np.stack([batch[f].to_numpy(zero_copy_only=False).astype(np.float64) for f in features], axis=1)
    mean = x.mean(axis=0) if len(x) else np.zeros(len(features))
    m2 = ((x - mean) ** 2).sum(axis=0)
    labels = sorted(set(batch[label].drop_null().to_pylist())) if classes else []
    return {"n": [len(x)], "mean": [mean.tolist()], "m2": [m2.tolist()], "labels": [json.dumps(labels)]}


def _block_stats_total(ds: Any, features: list[str], label: str, standardize: bool, classes: bool) -> dict[str, Any]:
    """One map pass (no shuffle) and a merge on the caller (Chan et al.'s parallel variance)."""
    if not (standardize or classes):
        return {}
    parts = ds.map_batches(
        _block_stats, fn_args=(features, label, classes), batch_format="pyarrow", batch_size=None
    ).take_all()
    n, mean, m2, labels = 0, np.zeros(len(features)), np.zeros(len(features)), set()
    for p in parts:
        k = p["n"]
        if k == 0:
            continue
        pm, pm2 = np.asarray(p["mean"]), np.asarray(p["m2"])
        delta = pm - mean
        total = n + k
        mean = mean + delta * k / total
        m2 = m2 + pm2 + delta**2 * n * k / total
        n = total
        labels.update(json.loads(p["labels"]))
    if n == 0:
        raise DataError("the training data has no rows")
    std = np.sqrt(m2 / n)
    return {
        "mean": mean.tolist(),
        "std": [float(s) if math.isfinite(s) else 0.0 for s in std],
        "classes": sorted(labels),
    }


def _numeric(arrow_type: str) -> bool:
    return arrow_type.startswith(("int", "uint", "float", "double", "halffloat", "bool", "decimal"))


def prepare(
    params: BuiltinTraining, datasets: Mapping[str, Any], meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The loop's config for ``params`` and the Ray Dataset inputs (``train`` required,
    ``validation`` optional): the params, ``_data`` (:func:`describe_data` of ``train``),
    ``_inputs`` and ``_meta`` (extra model metadata, e.g. ``trained_by`` and ``code``)."""
    unknown = sorted(set(datasets) - {"train", "validation"})
    if "train" not in datasets or unknown:
        raise StageError(
            "built-in models take dataset inputs `train` and optionally `validation`; got "
            + (", ".join(sorted(datasets)) or "none")
        )
    data = describe_data(params, datasets["train"], datasets["train"].schema())
    return {**params.model_dump(), "_data": data, "_inputs": sorted(datasets), "_meta": dict(meta or {})}


# ---------------------------------------------------------------- networks
def build_module(spec: Mapping[str, Any], n_in: int, n_out: int) -> Any:
    import torch.nn as nn

    act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[spec.get("activation", "relu")]
    layers: list[Any] = []
    if spec["type"] == "mlp":
        width = n_in
        for h in spec["hidden"]:
            layers += [nn.Linear(width, h), act()]
            if spec.get("dropout"):
                layers.append(nn.Dropout(spec["dropout"]))
            width = h
        layers.append(nn.Linear(width, n_out))
        return nn.Sequential(*layers)
    c, h, w = spec["input_shape"]
    layers.append(nn.Unflatten(1, (c, h, w)))
    for ch in spec["channels"]:
        layers += [nn.Conv2d(c, ch, spec["kernel"], padding="same"), act()]
        c = ch
    ph, pw = min(h, 4), min(w, 4)  # small images keep their layout; larger ones are pooled to 4x4
    layers += [nn.AdaptiveAvgPool2d((ph, pw)), nn.Flatten(), nn.Linear(c * ph * pw, spec["hidden"]), act()]
    if spec.get("dropout"):
        layers.append(nn.Dropout(spec["dropout"]))
    layers.append(nn.Linear(spec["hidden"], n_out))
    return nn.Sequential(*layers)


def _n_out(meta: Mapping[str, Any]) -> int:
    return len(meta["classes"]) if meta["task"] == "classification" else 1


# ---------------------------------------------------------------- the loop
class _IO:
    """How the loop gets data and reports: Ray Train workers or a Tune trial."""

    rank = 0

    def prepare(self, model: Any) -> Any:
        return model

    def batches(self, name: str, batch_size: int, epoch: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def checkpoint(self) -> Any:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        raise NotImplementedError

    def allreduce(self, values: list[float]) -> list[float]:
        return values


class _TrainIO(_IO):
    def __init__(self, inputs: list[str]) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.inputs = inputs

    def prepare(self, model: Any) -> Any:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def has(self, name: str) -> bool:
        return name in self.inputs

    def batches(self, name: str, batch_size: int, epoch: int) -> Iterator[dict[str, Any]]:
        import ray.train

        shard = ray.train.get_dataset_shard(name)
        yield from shard.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=None)

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

    def has(self, name: str) -> bool:
        return name in self.frames

    def batches(self, name: str, batch_size: int, epoch: int) -> Iterator[dict[str, Any]]:
        import torch

        df = self.frames[name]
        order = np.random.default_rng(self.seed + epoch).permutation(len(df)) if name == "train" else np.arange(len(df))
        cols = {c: torch.as_tensor(np.array(df[c].to_numpy(), copy=True)) for c in df.columns}
        for i in range(0, len(df), batch_size):
            idx = torch.as_tensor(order[i : i + batch_size])
            yield {c: v[idx] for c, v in cols.items()}

    def checkpoint(self) -> Any:
        import ray.tune

        return ray.tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        import ray.tune

        ckpt = ray.tune.Checkpoint.from_directory(folder) if folder else None
        ray.tune.report(metrics, checkpoint=ckpt)


class _Loop:
    def __init__(self, config: Mapping[str, Any], io: _IO) -> None:
        self.params = BuiltinTraining.model_validate({k: v for k, v in config.items() if not k.startswith("_")})
        self.meta: dict[str, Any] = dict(config["_data"])
        self.meta["spec"] = self.params.model.model_dump()
        self.io = io
        self.extra_meta: dict[str, Any] = dict(config.get("_meta", {}))

    def _xy(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        import torch

        x = torch.stack([batch[f].to(torch.float32) for f in self.meta["features"]], dim=1)
        pre = self.meta.get("preprocessing") or {}
        if "standardize" in pre:
            x = (x - self._mean) / self._std
        y = batch[self.meta["label"]]
        if self.meta["task"] == "classification":
            y = torch.searchsorted(self._classes, y.to(self._classes.dtype).contiguous())
        else:
            y = y.to(torch.float32).unsqueeze(1)
        return x, y

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
        pre = (self.meta.get("preprocessing") or {}).get("standardize")
        if pre:
            self._mean = torch.tensor(pre["mean"], dtype=torch.float32)
            self._std = torch.tensor(pre["std"], dtype=torch.float32)
        if self.meta["task"] == "classification":
            self._classes = torch.tensor(self.meta["classes"])
        net = build_module(self.meta["spec"], len(self.meta["features"]), _n_out(self.meta))
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
                net.load_state_dict(torch.load(Path(d) / WEIGHTS, weights_only=True))
                state = torch.load(Path(d) / TRAIN_STATE, weights_only=False)
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
            for i, batch in enumerate(self.io.batches("train", p.batch_size, epoch)):
                if i < skip:
                    continue
                x, y = self._xy(batch)
                opt.zero_grad()
                out = model(x)
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
            for batch in self.io.batches("validation", 1024, 0):
                x, y = self._xy(batch)
                out = model(x)
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
    _Loop(config, _TrainIO(list(config["_inputs"]))).run()


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
    config (with ``_data`` from :func:`describe_data`), ``datasets`` pandas frames by
    input name (``train``, optional ``validation``).  A trial's config overrides ``base``."""

    def trainable(config: dict[str, Any]) -> None:
        merged = merge_trial_config(base, config)
        _Loop(merged, _TuneIO(datasets, int(merged.get("seed", 0)))).run()

    return trainable


# ---------------------------------------------------------------- inference
class Predictor:
    """A stored built-in model, ready to predict on DataFrames (CPU, eval mode)."""

    def __init__(self, package: ModelPackage) -> None:
        import torch

        meta = package.meta
        if not meta.get("spec"):
            raise StageError("model package has no built-in spec; give a `predict` function for user-trained models")
        self.meta = meta
        self.features: list[str] = meta["features"]
        self.net = build_module(meta["spec"], len(self.features), _n_out(meta))
        self.net.load_state_dict(torch.load(package.file(WEIGHTS), weights_only=True))
        self.net.eval()
        pre = (meta.get("preprocessing") or {}).get("standardize")
        self.mean = np.asarray(pre["mean"], dtype=np.float32) if pre else None
        self.std = np.asarray(pre["std"], dtype=np.float32) if pre else None

    def _x(self, df: Any) -> Any:
        import torch

        missing = [f for f in self.features if f not in df.columns]
        if missing:
            raise DataError(f"input is missing feature columns: {', '.join(missing[:10])}")
        x = df[self.features].to_numpy(dtype=np.float32)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x))

    def outputs(self, df: Any) -> np.ndarray:
        """Class probabilities (classification) or predicted values (regression)."""
        import torch

        with torch.no_grad():
            out = self.net(self._x(df))
            if self.meta["task"] == "classification":
                out = torch.softmax(out, dim=1)
            return out.numpy()

    def predict(self, df: Any) -> np.ndarray:
        out = self.outputs(df)
        if self.meta["task"] == "classification":
            return np.asarray(self.meta["classes"])[out.argmax(1)]
        return out[:, 0]


def predictor(package: ModelPackage) -> Predictor:
    return Predictor(package)
