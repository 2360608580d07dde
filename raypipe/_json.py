"""JSON-safe values: numpy, pandas, NaN/inf, dates, paths and bytes as plain JSON values.

Imports nothing heavy: numpy and pandas are only imported (already loaded) when a value
of theirs is being converted.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["json_safe", "json_scalars"]


def json_safe(v: Any, *, inf_text: bool = False) -> Any:
    """``v`` as plain JSON values (``json.dumps(..., allow_nan=False)`` takes the result).

    Mappings become dicts with str keys; lists, tuples, sets and numpy arrays become
    lists; numpy and Decimal numbers plain ints and floats; nulls (None, NaN, NaT,
    pd.NA) None; ±inf None, or ``"inf"``/``"-inf"`` with ``inf_text``; datetimes,
    dates and times ISO text; durations text (pandas' form); bytes decoded text
    (UTF-8, undecodable bytes escaped); anything else (paths included) ``str(v)``.
    Usable as ``json.dumps(..., default=json_safe)``."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, (float, decimal.Decimal)):
        return _number(float(v), inf_text)
    if isinstance(v, Mapping):
        return {str(k): json_safe(x, inf_text=inf_text) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [json_safe(x, inf_text=inf_text) for x in v]
    module = type(v).__module__.partition(".")[0]
    if module == "numpy":
        return _numpy(v, inf_text)
    if module == "pandas":
        import pandas as pd

        if v is pd.NaT or v is pd.NA:
            return None
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, _dt.timedelta):
        return _duration(v)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "backslashreplace")
    if module == "pandas" and _is_null(v):
        return None
    return str(v)


def json_scalars(values: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON scalars of ``values`` (metrics, params): numpy and torch scalars unwrapped,
    NaN and ±inf as None; values that are not None, bool, int, float or str (and keys in
    ``skip``) are left out."""
    left_out = set(skip)
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in left_out:
            continue
        if not isinstance(v, (bool, int, float, str)) and hasattr(v, "item"):  # numpy, torch scalars
            try:
                v = v.item()
            except (TypeError, ValueError):  # not one value
                continue
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        if v is None or isinstance(v, (bool, int, float, str)):
            out[str(k)] = v
    return out


def _number(f: float, inf_text: bool) -> float | str | None:
    if math.isnan(f):
        return None
    if math.isfinite(f):
        return f
    return ("inf" if f > 0 else "-inf") if inf_text else None


def _numpy(v: Any, inf_text: bool) -> Any:
    import numpy as np

    if isinstance(v, np.ndarray):
        return [json_safe(x, inf_text=inf_text) for x in v]
    if isinstance(v, np.datetime64):
        import pandas as pd

        return None if np.isnat(v) else pd.Timestamp(v).isoformat()
    if isinstance(v, np.timedelta64):  # before np.integer: it is one
        return _duration(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return _number(float(v), inf_text)
    if isinstance(v, np.generic):
        return json_safe(v.item(), inf_text=inf_text)
    return str(v)


def _duration(v: Any) -> str | None:
    import pandas as pd

    td = pd.Timedelta(v)
    return None if td is pd.NaT else str(td)


def _is_null(v: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
