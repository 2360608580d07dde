"""Stage functions of the UI's browser test; Ray workers import them by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raypipe.store.models import ModelPackage


def train(data: Any, ctx: Any, epochs: int = 6) -> dict[str, Any]:
    """A "model" fitted by a few epochs of printed progress: a package and its history."""
    df = data.to_pandas()
    history = []
    loss = 1.0
    for epoch in range(1, epochs + 1):
        loss *= 0.6
        acc = 1.0 - loss / 2
        print(f"epoch {epoch} loss={loss:.4f} val_accuracy={acc:.4f}")
        history.append({"epoch": epoch, "loss": loss, "val_loss": loss * 1.2, "val_accuracy": acc})
    ctx.log.info("trained on %d rows", len(df))
    folder = ctx.workdir / "model"
    folder.mkdir()
    (folder / "weights.json").write_text(json.dumps({"mean": float(df["y"].mean())}))
    meta = {
        "task": "regression",
        "features": ["x"],
        "label": "y",
        "params": {"epochs": epochs},
        "metrics": {"loss": loss},
        "code": "ui-e2e",
    }
    return {"model": ModelPackage.create(folder, meta), "history": history}


def evaluate(model: ModelPackage) -> dict[str, Any]:
    mean = json.loads(model.file("weights.json").read_text())["mean"]
    return {"metrics": {"mean": mean, "accuracy": 0.93}}


def report(metrics: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A markdown report and a PNG chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["accuracy"], [metrics["accuracy"]])
    path = Path(ctx.workdir) / "accuracy.png"
    fig.savefig(path)
    plt.close(fig)
    text = f"# ui e2e report\n\n- **accuracy: {metrics['accuracy']}**\n- mean: {metrics['mean']:.3f}\n"
    return {"report": text, "plot": path}
