"""Quickstart pipeline: handwritten digits (bundled with scikit-learn) -> PyTorch MLP.

ingest (``data.read`` of the CSV inside scikit-learn) -> label (``data.transform``,
:func:`name_columns`) -> validate -> split -> train (a built-in MLP on Ray Train)
-> evaluate (a gate) -> register -> report (:func:`report`, a ``python`` stage:
inputs arrive as keyword arguments; the returned dict holds the outputs), with
``data.profile`` of the training split beside ``train``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FEATURE_PREFIX = "px"


def name_columns(batch: pd.DataFrame) -> pd.DataFrame:
    """``data.transform``: the digits CSV has no header (columns f0..f64); name the 64
    pixels ``px0..px63`` (float32) and the last column ``label``."""
    out = batch.iloc[:, :64].astype("float32")
    out.columns = [f"{FEATURE_PREFIX}{i}" for i in range(64)]
    out["label"] = batch.iloc[:, 64].astype("int64")
    return out


def report(metrics: dict[str, Any], history: list[dict[str, Any]], profile: dict[str, Any]) -> dict[str, Any]:
    """A short markdown report of the run's results."""
    lines = [
        "# quickstart report",
        "",
        f"- training rows: {profile['rows']}",
        f"- test rows: {metrics['rows']}",
        f"- final training loss: {history[-1]['loss']:.4f} after {len(history)} epochs",
        f"- **test accuracy: {metrics['accuracy']:.4f}**",
        "",
        "| class | recall |",
        "| --- | --- |",
        *[f"| {c} | {r:.3f} |" for c, r in metrics["recall_per_class"].items()],
    ]
    text = "\n".join(lines) + "\n"
    return {"report": text, "summary": {"accuracy": metrics["accuracy"], "epochs": len(history)}}
