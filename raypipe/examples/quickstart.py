"""Quickstart pipeline: handwritten digits (bundled with scikit-learn) -> PyTorch MLP.

ingest (``data.read`` of the CSV inside scikit-learn) -> label (``data.transform``)
-> validate -> split -> preprocess -> train -> evaluate -> report, with
``data.profile`` of the training split beside ``train``.  The other functions are
``python`` stages: inputs and ``params.args`` arrive as keyword arguments; the
returned dict holds the outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raypipe.stages.base import StageContext

FEATURE_PREFIX = "px"


def name_columns(batch: pd.DataFrame) -> pd.DataFrame:
    """``data.transform``: the digits CSV has no header (columns f0..f64); name the 64
    pixels ``px0..px63`` (float32) and the last column ``label``."""
    out = batch.iloc[:, :64].astype("float32")
    out.columns = [f"{FEATURE_PREFIX}{i}" for i in range(64)]
    out["label"] = batch.iloc[:, 64].astype("int64")
    return out


def _frame(data: Any) -> pd.DataFrame:
    """A small dataset input as a DataFrame (datasets from data stages arrive as Ray Datasets)."""
    return data if isinstance(data, pd.DataFrame) else data.to_pandas()


def _features(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(FEATURE_PREFIX)]


def preprocess(train: Any, test: Any) -> dict[str, Any]:
    """Standardize with statistics of the training split only."""
    train, test = _frame(train), _frame(test)
    cols = _features(train)
    mean = train[cols].mean()
    std = train[cols].std(ddof=0).replace(0.0, 1.0)
    scaled = {}
    for name, df in (("train", train), ("test", test)):
        out = df.copy()
        out[cols] = ((df[cols] - mean) / std).astype("float32")
        scaled[name] = out
    scaler = {"mean": mean.round(6).tolist(), "std": std.round(6).tolist(), "columns": cols}
    return {"train": scaled["train"], "test": scaled["test"], "scaler": scaler}


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> Any:
    import torch.nn as nn

    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


def train(
    train: pd.DataFrame,
    ctx: StageContext,
    epochs: int = 20,
    hidden: int = 128,
    lr: float = 1e-3,
    batch_size: int = 64,
    dropout: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Train an MLP with PyTorch on CPU (or CUDA when present); returns weights and history."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, int(ctx.resources.cpu)))
    device = "cuda" if torch.cuda.is_available() and ctx.resources.gpu > 0 else "cpu"
    cols = _features(train)
    x = torch.tensor(train[cols].to_numpy(), dtype=torch.float32)
    y = torch.tensor(train["label"].to_numpy(), dtype=torch.int64)
    model = _mlp(len(cols), hidden, 10, dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        sched.step()
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / total, 6), "accuracy": round(correct / total, 6)})
        ctx.log.info("epoch %d loss %.4f acc %.4f", epoch + 1, loss_sum / total, correct / total)
    spec = {"arch": "mlp", "n_in": len(cols), "hidden": hidden, "n_out": 10, "dropout": dropout, "features": cols}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"model": {"spec": spec, "state_dict": state}, "history": history}


def evaluate(model: dict[str, Any], test: pd.DataFrame, min_accuracy: float = 0.0) -> dict[str, Any]:
    """Accuracy and per-class recall on the held-out split; fail below ``min_accuracy``."""
    import torch

    spec = model["spec"]
    net = _mlp(spec["n_in"], spec["hidden"], spec["n_out"], spec["dropout"])
    net.load_state_dict(model["state_dict"])
    net.eval()
    x = torch.tensor(test[spec["features"]].to_numpy(), dtype=torch.float32)
    y = test["label"].to_numpy()
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    acc = float((pred == y).mean())
    recall = {str(c): round(float((pred[y == c] == c).mean()), 4) for c in np.unique(y)}
    if acc < min_accuracy:
        raise ValueError(
            f"accuracy {acc:.4f} is below the gate min_accuracy={min_accuracy} by {min_accuracy - acc:.4f}"
        )
    return {"metrics": {"accuracy": round(acc, 6), "test_rows": int(len(y)), "recall_per_class": recall}}


def report(metrics: dict[str, Any], history: list[dict[str, Any]], profile: dict[str, Any]) -> dict[str, Any]:
    """A short markdown report of the run's results."""
    lines = [
        "# quickstart report",
        "",
        f"- training rows: {profile['rows']}",
        f"- test rows: {metrics['test_rows']}",
        f"- final training loss: {history[-1]['loss']:.4f} after {len(history)} epochs",
        f"- **test accuracy: {metrics['accuracy']:.4f}**",
        "",
        "| class | recall |",
        "| --- | --- |",
        *[f"| {c} | {r:.3f} |" for c, r in metrics["recall_per_class"].items()],
    ]
    text = "\n".join(lines) + "\n"
    return {"report": text, "summary": {"accuracy": metrics["accuracy"], "epochs": len(history)}}
