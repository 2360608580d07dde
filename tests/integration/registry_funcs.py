"""Stage functions of the model registry integration tests; Ray workers import them by name."""

from __future__ import annotations

import json
from typing import Any

from raypipe.store.models import ModelPackage


def fit(data: Any, ctx: Any, lr: float = 0.1) -> dict[str, Any]:  # data: a Ray Dataset; ctx: StageContext
    """A "model" that predicts the mean of y: a package whose weights depend on the data."""
    df = data.to_pandas()
    folder = ctx.workdir / "model"
    folder.mkdir()
    mean = float(df["y"].mean())
    (folder / "weights.json").write_text(json.dumps({"mean": mean}))
    meta = {
        "task": "regression",
        "features": ["x"],
        "label": "y",
        "params": {"lr": lr},
        "metrics": {"train_mae": float((df["y"] - mean).abs().mean())},
        "code": "fit-v1",
        "trained_by": {"kind": "python", "function": f"{__name__}:fit", "stage": ctx.stage, "run_id": ctx.run_id},
    }
    return {"model": ModelPackage.create(folder, meta)}


def evaluate(model: ModelPackage) -> dict[str, Any]:
    mean = json.loads(model.file("weights.json").read_text())["mean"]
    return {"metrics": {"mean": mean, "score": 1.0}}


def mlp_package(data: Any, ctx: Any, seed: int = 0, bias_to: int | None = None) -> dict[str, Any]:
    """An untrained built-in MLP package for the ``evaluate`` tests (no Ray Train: fast).
    ``bias_to`` makes it always predict that class."""
    import torch

    from raypipe.models.builtin import WEIGHTS
    from raypipe.models.networks import build_module

    df = data.to_pandas()
    features = [c for c in df.columns if c != "label"]
    spec = {"type": "mlp", "hidden": [8], "dropout": 0.0, "activation": "relu"}
    classes = sorted(int(c) for c in df["label"].unique())
    torch.manual_seed(seed)
    net = build_module(spec, len(features), len(classes))
    if bias_to is not None:
        with torch.no_grad():
            net[-1].weight.zero_()
            net[-1].bias.zero_()
            net[-1].bias[classes.index(bias_to)] = 10.0
    folder = ctx.workdir / "model"
    folder.mkdir()
    torch.save(net.state_dict(), folder / WEIGHTS)
    meta = {
        "task": "classification",
        "features": features,
        "label": "label",
        "classes": classes,
        "spec": spec,
        "preprocessing": None,
        "params": {"seed": seed},
        "metrics": {},
        "code": "mlp-package",
    }
    return {"model": ModelPackage.create(folder, meta)}
