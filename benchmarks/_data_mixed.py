"""The mixed-type table of the data throughput benchmark: its generator, its ``data.validate``
rules, and the same rules in pandas.

A CSV table with the kinds of columns real exports have (one row per customer event):

==========  ===========================================================================
``id``      int64, unique but for ~0.01% rows that repeat an id of the previous file
``amount``  float64 (2 decimals), ~3% missing, ~1% negative
``price``, ``score``, ``weight``  float64, ~3% missing each
``segment`` low-cardinality text: 5 allowed levels (two of them rare) and two unknown
            ones (``legacy``, ``TEST``: ~0.08% rows together); ~1% missing
``city``    ~1000 levels (``city_0000``..), Zipf-distributed, ~1% missing
``signup``  ISO date (2015..2024), ~4% missing, ~0.5% malformed (``2023-02-30``,
            ``2021-13-01``, ``2022-04-31``: Arrow's CSV reader reads the column as text)
            and ~0.2% the sentinel ``1900-01-01`` (before ``min``)
``active``  bool (``true``/``false``)
``comment`` free text: 3..8 words of a 2,000-word vocabulary, ~2% missing
``label``   int 0/1, ~0.05% ``-1``
==========  ===========================================================================

:func:`validate_params` are the rules of the raypipe side (``data.validate``,
``on_error: quarantine``); :func:`pandas_rule_masks` checks the same rules on a pandas
DataFrame read with :data:`PANDAS_DTYPES`.  Both put a row in quarantine when it breaks
any rule; a broken ``unique`` flags every row holding the repeated id.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

COLUMNS = ["id", "amount", "price", "score", "weight", "segment", "city", "signup", "active", "comment", "label"]
FLOATS = ["amount", "price", "score", "weight"]
#: Allowed levels of ``segment`` and how often each is drawn (the last two are rare).
SEGMENTS = {"retail": 0.52, "online": 0.30, "wholesale": 0.1262, "partner": 0.045, "gov": 0.008}
#: Levels of ``segment`` that ``allowed`` refuses, and their frequencies.
UNKNOWN_SEGMENTS = {"legacy": 0.0005, "TEST": 0.0003}
CITIES = 1000
DATE_MIN = dt.date(2010, 1, 1)
DATE_MAX = dt.date(2025, 12, 31)
FIRST_DAY = dt.date(2015, 1, 1)
DAYS = (dt.date(2024, 12, 31) - FIRST_DAY).days + 1
MALFORMED_DATES = ["2023-02-30", "2021-13-01", "2022-04-31"]
SENTINEL_DATE = "1900-01-01"
LABELS = [0, 1]

MISSING_FLOAT = 0.03
NEGATIVE_AMOUNT = 0.01
MISSING_SEGMENT = MISSING_CITY = 0.01
MISSING_DATE = 0.04
MALFORMED_DATE = 0.005
SENTINEL = 0.002
MISSING_COMMENT = 0.02
BAD_LABEL = 0.0005
DUPLICATE_ID = 0.0001
#: Bytes of a CSV row, about (the generator corrects its estimate on a sample).
ROW_BYTES_GUESS = 110

#: What pandas reads each column as: the types raypipe's dataset has (text stays text, the two
#: categories are categorical, ``signup`` is text until it is parsed).
PANDAS_DTYPES: dict[str, str] = {
    "id": "int64",
    **dict.fromkeys(FLOATS, "float64"),
    "segment": "category",
    "city": "category",
    "signup": "str",
    "active": "bool",
    "comment": "str",
    "label": "int64",
}


def validate_params() -> dict[str, Any]:
    """``params`` of the raypipe ``data.validate`` stage."""
    return {
        "on_error": "quarantine",
        "columns": {
            "id": {"type": "int", "nullable": False, "unique": True},
            "amount": {"type": "number", "min": 0},
            "price": {"type": "float"},
            "score": {"type": "float"},
            "weight": {"type": "float"},
            "segment": {"type": "category", "allowed": list(SEGMENTS)},
            "city": {"type": "category"},
            "signup": {"type": "date", "min": DATE_MIN.isoformat(), "max": DATE_MAX.isoformat()},
            "active": {"type": "bool"},
            "comment": {"type": "string"},
            "label": {"type": "int", "allowed": LABELS},
        },
    }


def csv_options() -> dict[str, Any]:
    """``params.csv`` of the raypipe ``data.read`` stage: the two categories dictionary-encoded."""
    return {"column_types": {"segment": "category", "city": "category"}}


# ----------------------------------------------------------------------------- generator


def _vocabulary(seed: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng([seed, 777])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < 2000:
        w = "".join(rng.choice(letters, int(rng.integers(3, 10))))
        if w not in ("nan", "null", "none", "true", "false"):
            words.add(w)
    return sorted(words)


def table(rows: int, start: int, seed: int, index: int) -> Any:
    """``rows`` rows of the mixed table (ids from ``start``) as an Arrow table of the CSV's text
    and numbers; the same (seed, index) always gives the same rows.  File ``index`` > 0 repeats
    ids of file ``index - 1`` in ~0.01% of its rows (file 0: ids of its own first rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng([seed, 1000 + index])

    def where(p: float) -> np.ndarray:
        return rng.random(rows) < p

    ids = np.arange(start, start + rows, dtype=np.int64)
    dup = np.flatnonzero(where(DUPLICATE_ID))
    dup = dup[dup >= 1000] if index == 0 else dup
    ids[dup] = dup - 1000 + start if index == 0 else ids[dup] - rows
    cols: dict[str, Any] = {"id": ids}
    amount = np.round(rng.lognormal(3.0, 1.0, rows), 2)
    amount[where(NEGATIVE_AMOUNT)] *= -1
    floats = {
        "amount": amount,
        "price": np.round(rng.gamma(2.0, 15.0, rows), 2),
        "score": np.round(rng.beta(2.0, 5.0, rows), 4),
        "weight": np.round(rng.normal(70.0, 12.0, rows), 1),
    }
    for name, values in floats.items():
        cols[name] = pa.array(values, mask=where(MISSING_FLOAT))
    levels = [*SEGMENTS, *UNKNOWN_SEGMENTS]
    p = np.array([*SEGMENTS.values(), *UNKNOWN_SEGMENTS.values()])
    seg = rng.choice(len(levels), rows, p=p / p.sum()).astype(np.int32)
    cols["segment"] = pa.DictionaryArray.from_arrays(
        pa.array(seg, mask=where(MISSING_SEGMENT)), pa.array(levels)
    ).dictionary_decode()
    zipf = 1.0 / np.arange(1, CITIES + 1) ** 1.1
    city = rng.choice(CITIES, rows, p=zipf / zipf.sum()).astype(np.int32)
    names = pa.array([f"city_{i:04d}" for i in range(CITIES)])
    cols["city"] = pa.DictionaryArray.from_arrays(pa.array(city, mask=where(MISSING_CITY)), names).dictionary_decode()
    days = (FIRST_DAY - dt.date(1970, 1, 1)).days + rng.integers(0, DAYS, rows, dtype=np.int32)
    signup = pa.array(days, pa.date32()).cast(pa.string())
    u = rng.random(rows)
    sentinel, malformed = u < SENTINEL, (u >= SENTINEL) & (u < SENTINEL + MALFORMED_DATE)
    special = np.where(sentinel, SENTINEL_DATE, np.array(MALFORMED_DATES)[rng.integers(0, len(MALFORMED_DATES), rows)])
    signup = pc.if_else(pa.array(sentinel | malformed), pa.array(special), signup)
    cols["signup"] = pc.if_else(pa.array(where(MISSING_DATE)), pa.scalar(None, pa.string()), signup)
    cols["active"] = rng.random(rows) < 0.35
    vocab = pa.array(_vocabulary(seed))
    n_words = rng.integers(3, 9, rows)
    words = [
        pc.if_else(pa.array(n_words > k), vocab.take(pa.array(rng.integers(0, len(vocab), rows))), None)
        for k in range(8)
    ]
    comment = pc.binary_join_element_wise(*words, " ", null_handling="skip")
    cols["comment"] = pc.if_else(pa.array(where(MISSING_COMMENT)), pa.scalar(None, pa.string()), comment)
    label = (rng.random(rows) < 0.3).astype(np.int64)
    label[where(BAD_LABEL)] = -1
    cols["label"] = label
    return pa.table(cols)


def write_csv(t: Any, path: Any) -> None:
    """Plain CSV as most tools write it: a header, no quotes, empty fields for nulls."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with pa.OSFile(str(path), "wb") as f:
        f.write((",".join(t.column_names) + "\n").encode())
        pacsv.write_csv(t, f, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))


def csv_bytes(t: Any) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = pa.BufferOutputStream()
    pacsv.write_csv(t, buf, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue().size


def rows_for(target_bytes: float, seed: int) -> int:
    """Rows of about ``target_bytes`` of CSV (CSV rows are about the same size at any count)."""
    n = 100_000
    return max(1, round(target_bytes * n / csv_bytes(table(n, 0, seed, 10_000))))


# ----------------------------------------------------------------------------- pandas


def pandas_rule_masks(df: Any) -> tuple[Any, dict[str, Any]]:
    """The rules of :func:`validate_params` on a DataFrame read with :data:`PANDAS_DTYPES` (but
    ``unique``, which needs every file): ``signup`` parsed (NaT where missing or malformed) and
    ``{"column.rule": bool mask}``, one per rule as raypipe's report counts them."""
    import numpy as np
    import pandas as pd

    text = df["signup"]
    parsed = pd.to_datetime(text, errors="coerce", format="%Y-%m-%d")
    unparsed = text.notna().to_numpy() & parsed.isna().to_numpy()
    segment = df["segment"]
    masks = {
        "id.nullable": df["id"].isna().to_numpy(),
        "amount.min": (df["amount"] < 0).to_numpy(),
        "signup.type": unparsed,
        "signup.min": (parsed < pd.Timestamp(DATE_MIN)).to_numpy(),
        "signup.max": (parsed > pd.Timestamp(DATE_MAX)).to_numpy(),
        "segment.allowed": segment.notna().to_numpy() & ~segment.isin(list(SEGMENTS)).to_numpy(),
        "label.allowed": ~df["label"].isin(LABELS).to_numpy(),
    }
    return parsed, {k: np.asarray(v, dtype=bool) for k, v in masks.items()}


def duplicate_mask(ids: Any) -> Any:
    """Every row whose id occurs more than once (all occurrences), over all files' ids."""
    import numpy as np
    import pandas as pd

    return np.asarray(pd.Series(ids, copy=False).duplicated(keep=False), dtype=bool)


def rule_counts_of_report(report: dict[str, Any]) -> dict[str, int]:
    """``{"column.rule": rows}`` of a raypipe validation report (row rules only)."""
    return {f"{v['column']}.{v['rule']}": int(v["count"]) for v in report.get("violations", []) if v.get("column")}
