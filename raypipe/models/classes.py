"""Class labels as keys: the same class named by ``3``, ``3.0``, ``np.int64(3)`` or ``"3"``,
and what a served prediction's class is (shared by request validation and drift)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raypipe.models.preprocess import category_key

_INT_TEXT = re.compile(r"^-?\d+$")


def class_key(value: Any) -> str | None:
    """A class label as a key that is the same for ``3``, ``3.0``, ``np.int64(3)`` and ``"3"``
    (:func:`category_key`, with integer text read as the integer)."""
    if isinstance(value, str):
        return str(int(value)) if _INT_TEXT.match(value) else value
    return category_key(value)


def prediction_value(pred: Any, classes: Sequence[Any] | None = None) -> Any:
    """What a served prediction is: a dict's ``prediction``/``label``/``class``/``value``;
    a list or array of scores -> the class at the argmax (its index without ``classes``);
    a one-element list -> its element; anything else as is."""
    if isinstance(pred, Mapping):
        for k in ("prediction", "label", "class", "value", "y"):
            if k in pred:
                return prediction_value(pred[k], classes)
        return None
    if isinstance(pred, (list, tuple, np.ndarray)):
        arr = np.asarray(pred, dtype=object).ravel()
        if len(arr) == 1:
            return prediction_value(arr[0], classes)
        try:
            i = int(np.argmax(np.asarray(arr, dtype=np.float64)))
        except (TypeError, ValueError):
            return None
        return classes[i] if classes is not None and i < len(classes) else i
    if isinstance(pred, np.generic):
        return pred.item()
    return pred


def match_class(value: Any, classes: Sequence[Any]) -> tuple[bool, Any]:
    """``(True, the class)`` when ``value`` names one of ``classes``, else ``(False, value)``.
    A class is named by any value of the same key (``3``, ``3.0``, ``"3"``; see
    :func:`class_key`); true/false also name classes 1/0 of numeric
    classes, and 1/0 (or "true"/"false") classes true/false."""
    keys = {class_key(c): c for c in classes}
    key = class_key(value)
    if key in keys:
        return True, keys[key]
    bool_classes = all(isinstance(c, bool) for c in classes)
    if isinstance(value, bool) and not bool_classes:
        alias = class_key(int(value))
    elif bool_classes and key is not None:
        alias = {"1": "True", "0": "False", "true": "True", "false": "False"}.get(key.lower())
    else:
        alias = None
    if alias is not None and alias in keys:
        return True, keys[alias]
    return False, value
