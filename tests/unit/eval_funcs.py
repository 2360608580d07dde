"""Prediction functions for the evaluate unit tests (``predict: module:function``)."""

from __future__ import annotations

from typing import Any


def column_pred(model: Any, batch: Any) -> Any:
    return batch["pred"].to_numpy()


class ColumnModel:
    """A stand-in for the built-in ``Predictor``: probabilities from columns ``p0``, ``p1``...
    (classification) or predictions from ``pred`` (regression)."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def outputs(self, batch: Any) -> Any:
        return batch[[f"p{i}" for i in range(len(self.meta["classes"]))]].to_numpy()

    def predict(self, batch: Any) -> Any:
        return batch["pred"].to_numpy()
