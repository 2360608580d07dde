"""The open windows of one variant: :class:`WindowBuffer` (sampled rows, a bounded
reservoir) and :class:`PerformanceWindow` (labelled predictions as running sums)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raypipe.models.classes import class_key
from raypipe.models.preprocess import category_key, to_day
from raypipe.monitoring.values import to_float

__all__ = ["PerformanceWindow", "WindowBuffer"]


@dataclass
class PerformanceWindow:
    """Running sums of labelled predictions (constant memory)."""

    n: int = 0
    correct: int = 0
    sum_abs: float = 0.0
    sum_sq: float = 0.0
    opened_at: float | None = None

    def add(self, prediction: Any, label: Any, task: str | None, at: float) -> bool:
        """Add one pair; False when it cannot be scored (a null, or a non-number for regression)."""
        if self.opened_at is None:
            self.opened_at = at
        if task == "regression":
            p, y = to_float(prediction), to_float(label)
            if not (math.isfinite(p) and math.isfinite(y)):
                return False
            self.n += 1
            self.sum_abs += abs(p - y)
            self.sum_sq += (p - y) ** 2
            return True
        kp, ky = class_key(prediction), class_key(label)
        if kp is None or ky is None:
            return False
        self.n += 1
        self.correct += int(kp == ky)
        return True

    def value(self, metric: str) -> float | None:
        if self.n == 0:
            return None
        if metric == "accuracy":
            return self.correct / self.n
        if metric == "mae":
            return self.sum_abs / self.n
        return math.sqrt(self.sum_sq / self.n)


class WindowBuffer:
    """The open window of one variant: at most ``capacity`` rows (a uniform reservoir,
    Vitter's Algorithm R, once more rows arrive), stored column by column in arrays
    allocated once; ``seen`` counts every row offered."""

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        capacity: int,
        seed: int = 0,
        days: Sequence[str] = (),
    ) -> None:
        self.numeric = list(numeric)
        #: Numeric features whose live values are dates or timestamps (compared as days).
        self.days = set(days)
        self.categorical = list(categorical)
        self.capacity = int(capacity)
        self.num = np.full((self.capacity, len(self.numeric)), np.nan, dtype=np.float64)
        self.cat = np.empty((self.capacity, len(self.categorical)), dtype=object)
        self.pred = np.empty(self.capacity, dtype=object)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.opened_at: float | None = None

    @property
    def size(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, row: Mapping[str, Any], prediction: Any, at: float) -> None:
        if self.opened_at is None:
            self.opened_at = at
        t = self.seen
        self.seen += 1
        if t < self.capacity:
            slot = t
        else:
            slot = int(self.rng.integers(0, t + 1))
            if slot >= self.capacity:
                return
        for j, f in enumerate(self.numeric):
            self.num[slot, j] = to_day(row.get(f)) if f in self.days else to_float(row.get(f))
        for j, f in enumerate(self.categorical):
            self.cat[slot, j] = category_key(row.get(f))
        self.pred[slot] = prediction

    def columns(self) -> dict[str, Any]:
        k = self.size
        out: dict[str, Any] = {f: self.num[:k, j].copy() for j, f in enumerate(self.numeric)}
        out.update({f: list(self.cat[:k, j]) for j, f in enumerate(self.categorical)})
        return out

    def predictions(self) -> list[Any]:
        return list(self.pred[: self.size])

    def reset(self) -> None:
        self.num[:] = np.nan
        self.cat[:] = None
        self.pred[:] = None
        self.seen = 0
        self.opened_at = None

    def nbytes(self) -> int:
        return int(self.num.nbytes + self.cat.nbytes + self.pred.nbytes)
