"""What the column kinds of a profile share: the profile's settings and the helpers merging their fields."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np


class Settings(Protocol):
    """The settings of a profile (a :class:`~raypipe.stages.data.profiling.Partial` has them)."""

    sample_size: int
    seed: int
    max_categories: int


def promote(a: str, b: str, numeric: bool) -> str:
    """The dtype of two merged columns' values."""
    if a == b:
        return a
    if numeric:
        try:
            return np.result_type(np.dtype(a), np.dtype(b)).name
        except TypeError:
            return "float64"
    return "object"


def extreme(a: Any, b: Any, pick: Any) -> Any:
    """``pick`` (min or max) of two extremes, either of which may be None (None if they do not compare)."""
    if a is None:
        return b
    if b is None:
        return a
    try:
        return pick(a, b)
    except TypeError:  # e.g. tz-aware vs naive timestamps
        return None


def plain_float(v: Any) -> float | None:
    """A plain finite float, or None."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None
