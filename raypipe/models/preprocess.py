"""Preprocessing of mixed tables for the built-in models (pure: numpy, pandas, pyarrow).

One code path turns raw column values into model inputs everywhere: the training loop
(Ray Train workers and Tune trials), ``evaluate``, serving and the drift monitor.  It
is *learned* from the profile of the training split (``data.profile``'s statistics,
:mod:`raypipe.stages.data.profiling`) and stored in the model package as JSON, so a
served model needs nothing but its package.

Feature kinds and their encodings (``dense`` columns are float32, ``embedded`` columns
are int64 indices into a learned embedding table):

- ``numeric`` (ints, floats, decimals): the value, missing values imputed with the
  training median, then standardized with the training mean and standard deviation;
  plus a 0/1 *missing* column when the training split had missing values.
- ``category`` (text, dictionary and bool columns; numeric columns listed in
  ``categorical``): the training split's levels, most frequent first.  A feature with at
  most ``onehot_max`` levels is one-hot encoded (one column per level, plus *other*);
  above that it gets an embedding of the ``max_levels`` most frequent levels plus
  *other*.  A value never seen in training goes to *other* (and is counted); a missing
  value to its own *missing* level when training had missing values, else to *other*.
- ``datetime`` (date and timestamp columns): days since 1970-01-01 (UTC; fractional for
  timestamps; naive timestamps are taken as UTC), imputed and standardized as a numeric,
  plus the month and the day of the week as points on a circle (sin, cos), plus a
  *missing* column when training had missing values.

:func:`to_days` and :func:`category_keys` are the encodings the profile and the drift
monitor use too, so a live value is compared with the reference in the same terms.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from raypipe.config import StrictModel
from raypipe.exceptions import DataError

__all__ = [
    "DATETIME_WIDTH",
    "MISSING",
    "OTHER",
    "Feature",
    "PreprocessingSpec",
    "Preprocessor",
    "category_key",
    "category_keys",
    "feature_kind",
    "to_day",
    "to_days",
    "to_floats",
]

#: Labels of the extra category levels (in ``levels_out``, e.g. for ``GET /metadata``).
OTHER = "__other__"
MISSING = "__missing__"
#: Dense columns of a datetime feature before its missing column: days, month sin/cos, weekday sin/cos.
DATETIME_WIDTH = 5
_DAY_US = 86_400_000_000
_UNIT_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": _DAY_US, "ns": _DAY_US * 1000}
_ID_NAME = re.compile(
    r"(^|[_\W])(id|ids|uuid|guid|key|hash|ref|reference|number|nr|no|code)$|^id_|[a-z](Id|ID|Ref|No)$"
)


class PreprocessingSpec(StrictModel):
    """How the built-in models encode features (``params.preprocessing``)."""

    #: A category with at most this many levels is one-hot encoded; more get an embedding.
    onehot_max: Annotated[int, Field(ge=1)] = 16
    #: An embedding keeps this many of the most frequent levels; the rest share "other".
    max_levels: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    #: A level seen fewer times in training shares "other".
    min_count: Annotated[int, Field(ge=1)] = 1
    #: Embedding width; default ``min(32, round(1.6 * levels ** 0.56))`` (fastai's rule).
    embedding_dim: Annotated[int | None, Field(ge=1)] = None
    #: Numeric columns to encode as categories (e.g. a zip code).
    categorical: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------------------- encodings
def _arrow(values: Any) -> Any:
    """``values`` as a pyarrow Array (chunked arrays are combined); None if it cannot be."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    try:
        import pandas as pd

        if isinstance(values, pd.Series):
            return pa.Array.from_pandas(values)
        return pa.array(values if isinstance(values, np.ndarray) else list(values), from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None


def to_floats(values: Any) -> np.ndarray:
    """float64 values (NaN for nulls and for values that are not numbers; bools are 0/1)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = _arrow(values)
    if arr is not None:
        t = arr.type
        if pa.types.is_dictionary(t):
            arr, t = arr.dictionary_decode(), t.value_type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
            out = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            return np.asarray(out, dtype=np.float64)
        if pa.types.is_null(t):
            return np.full(len(arr), np.nan)
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values if not isinstance(values, np.ndarray) else values.tolist()):
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            out[i] = float(v)
        elif isinstance(v, (bool, np.bool_)):
            out[i] = float(v)
    return out


def to_days(values: Any) -> np.ndarray:
    """Days since 1970-01-01 UTC as float64 (fractional for timestamps; NaN for nulls and
    for values that are not dates).  Takes Arrow date/timestamp arrays, pandas datetime
    Series, numpy datetime64 arrays, or sequences of ``date``/``datetime`` objects and ISO
    8601 strings (a naive time is taken as UTC)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        ns = values.astype("datetime64[ns]")
        out = ns.view(np.int64).astype(np.float64) / (_DAY_US * 1000)
        out[np.isnat(ns)] = np.nan
        return out
    arr = _arrow(values)
    if arr is not None:
        t = arr.type
        if pa.types.is_dictionary(t):
            arr, t = arr.dictionary_decode(), t.value_type
        if pa.types.is_date32(t):
            return np.asarray(pc.cast(arr, pa.int32()).to_numpy(zero_copy_only=False), dtype=np.float64)
        if pa.types.is_date64(t):
            ms = np.asarray(pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            return ms / 86_400_000
        if pa.types.is_timestamp(t):
            raw = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)  # UTC for zoned timestamps
            return np.asarray(raw, dtype=np.float64) / _UNIT_PER_DAY[t.unit]
        if pa.types.is_null(t):
            return np.full(len(arr), np.nan)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return _parse_days(arr.to_pylist())
    return _parse_days(list(values))


def _parse_days(values: Sequence[Any]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        d = _one_day(v)
        if d is not None:
            out[i] = d
    return out


def to_day(v: Any) -> float:
    """One value as days since 1970-01-01 UTC (NaN for nulls and non-dates): :func:`to_days`
    of a single value."""
    d = _one_day(v)
    return math.nan if d is None else d


def _one_day(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = parse_iso(v)
        if v is None:
            return None
    if isinstance(v, np.datetime64):
        if np.isnat(v):
            return None
        return float(v.astype("datetime64[us]").astype(np.int64)) / _DAY_US
    if isinstance(v, _dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        delta = v - _dt.datetime(1970, 1, 1)
        return (delta.days * _DAY_US + delta.seconds * 1_000_000 + delta.microseconds) / _DAY_US
    if isinstance(v, _dt.date):
        return float((v - _dt.date(1970, 1, 1)).days)
    try:
        import pandas as pd

        if v is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return None


#: The ISO 8601 grammar of dates and timestamps, one for every parser of them: written for
#: Python's ``re`` (:func:`parse_iso`) and for Arrow's RE2 (the vectorized parsing of text
#: columns, :mod:`raypipe.stages.data.textparse`).  A date is ``YYYY-MM-DD``; a timestamp a
#: date, then ``T``, ``t`` or a space and ``HH:MM[:SS[(.|,)fraction of 1 to 9 digits]]``,
#: then optionally ``Z``, ``z``, ``±HH``, ``±HHMM`` or ``±HH:MM``.  Field ranges (month
#: lengths, hours 0-23, no 24:00, offsets under 24 hours) are checked after the match.
ISO_DATE_PATTERN = r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
ISO_TIMESTAMP_PATTERN = (
    ISO_DATE_PATTERN + r"(?:[Tt ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]{1,9}))?)?"
    r"(?P<z>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_ISO = re.compile(ISO_TIMESTAMP_PATTERN)


def parse_iso(text: str) -> _dt.date | _dt.datetime | None:
    """An ISO 8601 date or timestamp (:data:`ISO_TIMESTAMP_PATTERN`; surrounding whitespace
    ignored): a ``date`` for a date alone, else a ``datetime``, timezone-aware when an
    offset is given (naive otherwise; digits past microseconds dropped); None if ``text``
    is not one (2023-02-29, 24:00, an offset of 24 hours or more)."""
    m = _ISO.fullmatch(text.strip())
    if m is None:
        return None
    g = m.groupdict()
    try:
        if g["h"] is None:
            return _dt.date(int(g["y"]), int(g["mo"]), int(g["d"]))
        z = (g["z"] or "").replace(":", "")
        tz: _dt.tzinfo | None = _dt.timezone.utc if z in ("Z", "z") else None
        if len(z) > 1:
            if int(z[3:5] or 0) > 59:
                return None
            offset = _dt.timedelta(hours=int(z[1:3]), minutes=int(z[3:5] or 0))
            tz = _dt.timezone(-offset if z[0] == "-" else offset)
        return _dt.datetime(
            int(g["y"]),
            int(g["mo"]),
            int(g["d"]),
            int(g["h"]),
            int(g["mi"]),
            int(g["s"] or 0),
            int((g["f"] or "").ljust(9, "0")) // 1000,
            tzinfo=tz,
        )
    except ValueError:  # out-of-range fields (2023-02-29, 24:00, year 0), an offset of 24 hours or more
        return None


def category_key(value: Any) -> str | None:
    """A value as a category level: strings as they are, bools ``"True"``/``"False"``,
    integral numbers as integers (``3``, ``3.0`` -> ``"3"``), other floats ``repr``, dates
    ISO; None for nulls (None, NaN, NaT)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return None
        return str(int(f)) if f.is_integer() and abs(f) < 2**63 else repr(f)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    try:
        import pandas as pd

        if value is pd.NaT or value is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def category_keys(values: Any) -> np.ndarray:
    """:func:`category_key` of every value, as an object array (vectorized for text)."""
    import pyarrow as pa

    arr = _arrow(values)
    if arr is not None:
        t = arr.type
        if pa.types.is_dictionary(t):
            arr, t = arr.dictionary_decode(), t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
        if pa.types.is_boolean(t):
            out = np.full(len(arr), None, dtype=object)
            v = arr.to_numpy(zero_copy_only=False)
            valid = ~np.asarray(arr.is_null(), dtype=bool)
            out[valid] = np.where(np.asarray(v[valid], dtype=bool), "True", "False")
            return out
        if pa.types.is_integer(t):
            out = np.full(len(arr), None, dtype=object)
            valid = ~np.asarray(arr.is_null(), dtype=bool)
            out[valid] = arr.drop_null().to_numpy().astype(str).astype(object)
            return out
        values = arr.to_pylist()
    elif isinstance(values, np.ndarray):
        values = values.tolist()
    return np.asarray([category_key(v) for v in values] + [None], dtype=object)[:-1]


def feature_kind(arrow_type: str, categorical: bool = False) -> Literal["numeric", "category", "datetime"] | None:
    """The kind of feature a column of ``arrow_type`` (its text) makes; None: not usable."""
    t = arrow_type.lower()
    if t.startswith("dictionary<"):
        return "category"
    if t.startswith(("date32", "date64", "timestamp")):
        return "datetime"
    if t in ("bool", "boolean", "string", "large_string", "utf8", "large_utf8", "string_view"):
        return "category"
    if t.startswith(("int", "uint", "float", "double", "halffloat", "decimal")):
        return "category" if categorical else "numeric"
    return None


def looks_like_id(name: str) -> bool:
    """Whether a column's name says it identifies rows (``loan_id``, ``customerId``, ``order_no``, ``ref``)."""
    return bool(_ID_NAME.search(name.lower()) or _ID_NAME.search(name))


# ----------------------------------------------------------------------------- features
@dataclass
class Feature:
    """One input column and how it is encoded (stored in the model package as JSON)."""

    name: str
    kind: Literal["numeric", "category", "datetime"]
    dtype: str
    #: numeric / datetime (days): standardization and the imputed value (training median).
    mean: float = 0.0
    std: float = 1.0
    median: float = 0.0
    #: The training split had missing values: a missing column (or a missing level).
    missing: bool = False
    #: category: levels, most frequent first; ``onehot`` or ``embedding``; embedding width.
    levels: list[str] = field(default_factory=list)
    encoding: Literal["onehot", "embedding"] | None = None
    dim: int = 0

    @property
    def width(self) -> int:
        """Dense float columns this feature takes."""
        if self.kind == "numeric":
            return 1 + int(self.missing)
        if self.kind == "datetime":
            return DATETIME_WIDTH + int(self.missing)
        return self.cardinality if self.encoding == "onehot" else 0

    @property
    def cardinality(self) -> int:
        """Category indices: the levels, other, and missing when training had missing values."""
        return len(self.levels) + 1 + int(self.missing)

    def levels_out(self) -> list[str]:
        return [*self.levels, OTHER, *([MISSING] if self.missing else [])]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind != "category":
            for k in ("levels", "encoding", "dim"):
                d.pop(k)
        return d


def embedding_dim(levels: int, given: int | None) -> int:
    return given if given is not None else max(2, min(32, round(1.6 * levels**0.56)))


def fit_feature(
    name: str, dtype: str, column: Mapping[str, Any], kind: str, spec: PreprocessingSpec, standardize: bool = True
) -> Feature:
    """A feature (``dtype``: its Arrow type) learned from its column of a training profile
    (``data.profile``'s shape)."""
    missing = int(column.get("nulls") or 0) > 0
    if kind == "category":
        freqs = {str(k): int(v) for k, v in (column.get("frequencies") or {}).items()}
        ranked = sorted(freqs.items(), key=lambda kv: (-kv[1], kv[0]))
        levels = [k for k, c in ranked if c >= spec.min_count and k not in (OTHER, MISSING)]
        distinct = column.get("distinct")
        many = distinct is None or len(levels) > spec.onehot_max
        if many:
            levels = levels[: spec.max_levels]
        f = Feature(name, "category", dtype, missing=missing, levels=levels)
        f.encoding = "embedding" if many else "onehot"
        f.dim = embedding_dim(f.cardinality, spec.embedding_dim) if many else 0
        return f
    mean, std = column.get("mean"), column.get("std")
    median = (column.get("quantiles") or {}).get("0.5")
    if mean is None:  # no finite value in training: a constant 0
        mean, std, median = 0.0, 1.0, 0.0
    std = float(std) if std is not None and math.isfinite(float(std)) and float(std) > 0 else 1.0
    f = Feature(name, "numeric" if kind == "numeric" else "datetime", dtype, float(mean), std, missing=missing)
    f.median = float(median) if median is not None else float(mean)
    if not standardize:
        f.mean, f.std = 0.0, 1.0
    return f


# ----------------------------------------------------------------------------- the transform
@dataclass
class Encoded:
    """A batch as model inputs: dense float32 ``[n, width]``, embedded int64 ``[n, k]``, and
    what the encoding had to make up (unseen levels and missing values, per feature)."""

    dense: np.ndarray
    embedded: np.ndarray
    unseen: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    #: Per row: values of categories never seen in training, and missing values imputed.
    unseen_rows: np.ndarray | None = None
    missing_rows: np.ndarray | None = None


class Preprocessor:
    """The features of a model and their encodings; :meth:`encode` turns columns into inputs."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = list(features)
        self.names = [f.name for f in self.features]
        self.embedded = [f for f in self.features if f.kind == "category" and f.encoding == "embedding"]
        self.width = sum(f.width for f in self.features)
        self.plain = all(f.kind == "numeric" and not f.missing for f in self.features)
        self._index = {f.name: _level_index(f) for f in self.features if f.kind == "category"}
        self._mean = np.asarray([f.mean for f in self.features], dtype=np.float32)
        self._std = np.asarray([f.std for f in self.features], dtype=np.float32)

    # -- (de)serialization
    def to_meta(self) -> dict[str, Any]:
        return {"version": 2, "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Preprocessor:
        """From a model package's metadata; packages of earlier raypipe versions (numeric
        features, ``{"standardize": {"mean", "std"}}`` or none) load as plain numerics."""
        pre = meta.get("preprocessing") or {}
        if pre.get("version") == 2:
            return cls([Feature(**f) for f in pre["features"]])
        names = list(meta.get("features") or [])
        std = (pre.get("standardize") or {}).get("std") or [1.0] * len(names)
        mean = (pre.get("standardize") or {}).get("mean") or [0.0] * len(names)
        schema = meta.get("input_schema") or {}
        return cls(
            [
                Feature(n, "numeric", str(schema.get(n, "double")), float(m), float(s), float(m))
                for n, m, s in zip(names, mean, std, strict=True)
            ]
        )

    # -- describing
    def embeddings(self) -> list[tuple[int, int]]:
        """(table size, width) of each embedded feature, in order."""
        return [(f.cardinality, f.dim) for f in self.embedded]

    def optional(self, name: str) -> bool:
        """Whether a request may leave ``name`` out (or null): training had missing values."""
        return any(f.missing for f in self.features if f.name == name)

    def describe(self) -> list[dict[str, Any]]:
        """Each feature for people (``GET /metadata``, ``model show``)."""
        out = []
        for f in self.features:
            d: dict[str, Any] = {"name": f.name, "kind": f.kind, "dtype": f.dtype, "optional": f.missing}
            if f.kind == "category":
                d.update(encoding=f.encoding, categories=list(f.levels))
            out.append(d)
        return out

    # -- encoding
    def encode(self, columns: Mapping[str, Any], n: int | None = None) -> Encoded:
        """Model inputs for ``columns`` (feature name -> values: an Arrow array, a pandas
        Series, a numpy array or a list).  A missing column is an error naming it."""
        absent = [f for f in self.names if f not in columns]
        if absent:
            raise DataError(f"input is missing feature columns: {', '.join(absent[:10])}")
        rows = n if n is not None else (len(columns[self.names[0]]) if self.names else 0)
        dense = np.empty((rows, self.width), dtype=np.float32)
        embedded = np.empty((rows, len(self.embedded)), dtype=np.int64)
        out = Encoded(dense, embedded, unseen_rows=np.zeros(rows, np.int64), missing_rows=np.zeros(rows, np.int64))
        col, k = 0, 0
        for f in self.features:
            values = columns[f.name]
            if f.kind == "category":
                idx = self._levels(f, values, out)
                if f.encoding == "embedding":
                    embedded[:, k] = idx
                    k += 1
                else:
                    block = dense[:, col : col + f.width]
                    block.fill(0.0)
                    block[np.arange(rows), idx] = 1.0
                    col += f.width
                continue
            x = to_floats(values) if f.kind == "numeric" else to_days(values)
            miss = np.isnan(x)
            if miss.any():
                out.missing[f.name] = int(miss.sum())
                out.missing_rows += miss
                x = np.where(miss, f.median, x)
            dense[:, col] = (x - f.mean) / f.std
            if f.kind == "datetime":
                month, weekday = _month_weekday(x)
                dense[:, col + 1] = np.sin(2 * np.pi * month / 12)
                dense[:, col + 2] = np.cos(2 * np.pi * month / 12)
                dense[:, col + 3] = np.sin(2 * np.pi * weekday / 7)
                dense[:, col + 4] = np.cos(2 * np.pi * weekday / 7)
            if f.missing:
                dense[:, col + f.width - 1] = miss
            col += f.width
        return out

    def encode_rows(self, rows: Sequence[Sequence[Any]]) -> Encoded:
        """:meth:`encode` of rows whose values are in feature order (serving)."""
        if self.plain:  # numbers only: one array, no per-column work
            x = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(self.features))
            return Encoded((x - self._mean) / self._std, np.empty((len(rows), 0), dtype=np.int64))
        cols = {name: [r[i] for r in rows] for i, name in enumerate(self.names)}
        return self.encode(cols, len(rows))

    def _levels(self, f: Feature, values: Any, out: Encoded) -> np.ndarray:
        keys = category_keys(values)
        index = self._index[f.name]
        null = np.asarray([k is None for k in keys], dtype=bool) if len(keys) else np.zeros(0, bool)
        idx = index.get_indexer(np.where(null, "", keys).astype(object))
        other = len(f.levels)
        unseen = (idx < 0) & ~null
        if unseen.any():
            out.unseen[f.name] = int(unseen.sum())
            out.unseen_rows += unseen
        idx = np.where(idx < 0, other, idx)
        if null.any():
            out.missing[f.name] = int(null.sum())
            out.missing_rows += null
            idx = np.where(null, other + 1 if f.missing else other, idx)
        return idx.astype(np.int64)


def _level_index(f: Feature) -> Any:
    import pandas as pd

    return pd.Index(list(f.levels), dtype=object)


def _month_weekday(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Month (0-11) and day of the week (0 = Monday) of days since 1970-01-01."""
    whole = np.floor(days).astype("int64")
    d = whole.astype("datetime64[D]")
    month = (d.astype("datetime64[M]").astype(np.int64) % 12).astype(np.float64)
    weekday = ((whole + 3) % 7).astype(np.float64)  # 1970-01-01 was a Thursday
    return month, weekday


def describe_inputs(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A model's inputs for people and clients (``GET /metadata``): name, Arrow type, kind,
    whether it may be left out, and a category's known levels.  Models of user loops
    (no built-in preprocessing) list their features and types only."""
    schema = meta.get("input_schema") or {}
    if meta.get("spec"):
        out = Preprocessor.from_meta(meta).describe()
        for d in out:
            d["dtype"] = str(schema.get(d["name"], d["dtype"]))
        return out
    return [{"name": f, "dtype": schema.get(f), "optional": False} for f in meta.get("features") or []]
