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
