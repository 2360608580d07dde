"""Live values as the monitor compares them: numbers as floats (NaN for what is not one).
Dates become days (:func:`raypipe.models.preprocess.to_day`), categories keys
(:func:`raypipe.models.preprocess.category_key`), classes keys
(:func:`raypipe.models.classes.class_key`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["to_float"]


def to_float(value: Any) -> float:
    """A live numeric value as a float (NaN for nulls and values that are not numbers)."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
