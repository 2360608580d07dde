"""The numeric feature pipeline of the data throughput benchmark, and the schema of its input.

Ray workers import it by name (``benchmarks._data_features:features``); it lives in its own
small module so that editing the benchmark script does not change it.  ``features`` takes a
batch in any of Ray Data's batch formats (a pandas DataFrame, a dict of numpy arrays, a
pyarrow Table) and returns one of the same kind, with the same columns in the same order:

- ``f00``..``f03`` standardized in place with fixed constants: ``(x - MEAN) / STD``;
- ``f04_log1p``, ``f05_log1p``: ``log1p(|x|)`` of ``f04``, ``f05``;
- ``f06_x_f07``: the product of ``f06`` and ``f07``;
- ``f08_clip``: ``f08`` clipped to ``[-CLIP, CLIP]``;
- ``flag``: ``f09 > FLAG_AT or bucket < FLAG_BUCKETS`` (bool).

Every other input column (``id``, ``f04``..``f11``, ``bucket``, ``cat``) passes through unchanged.
The three implementations do the same float64 arithmetic (pyarrow's ``log1p`` may differ from
numpy's in the last bit).
"""

from __future__ import annotations

from typing import Any

#: Input columns: ``id`` (int64, unique), 12 float64 features, ``bucket`` (int64, 0..99), ``cat`` (8 strings).
FLOATS = [f"f{i:02d}" for i in range(12)]
COLUMNS = ["id", *FLOATS, "bucket", "cat"]
CATEGORIES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
#: The generator draws ``f00``..``f03`` from normal(MEAN, STD): the constants the features standardize with.
MEAN = {"f00": 10.0, "f01": -3.0, "f02": 250.0, "f03": 0.5}
STD = {"f00": 2.0, "f01": 0.5, "f02": 40.0, "f03": 0.1}
CLIP = 2.5
FLAG_AT = 0.5
FLAG_BUCKETS = 10
NEW_COLUMNS = ["f04_log1p", "f05_log1p", "f06_x_f07", "f08_clip", "flag"]


def features(batch: Any) -> Any:
    """The feature pipeline on one batch; dispatches on the batch's type."""
    if isinstance(batch, dict):
        return features_numpy(batch)
    mod = type(batch).__module__
    if mod.startswith("pandas"):
        return features_pandas(batch)
    if mod.startswith("pyarrow"):
        return features_pyarrow(batch)
    raise TypeError(f"features: unsupported batch type {mod}.{type(batch).__name__}")


def features_pandas(df: Any) -> Any:
    standardized = {c: (df[c] - MEAN[c]) / STD[c] for c in MEAN}
    return df.assign(
        **standardized,
        f04_log1p=df["f04"].abs().pipe(_log1p),
        f05_log1p=df["f05"].abs().pipe(_log1p),
        f06_x_f07=df["f06"] * df["f07"],
        f08_clip=df["f08"].clip(-CLIP, CLIP),
        flag=(df["f09"] > FLAG_AT) | (df["bucket"] < FLAG_BUCKETS),
    )


def _log1p(s: Any) -> Any:
    import numpy as np

    return np.log1p(s)


def features_numpy(batch: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    out = dict(batch)
    for c in MEAN:
        out[c] = (batch[c] - MEAN[c]) / STD[c]
    out["f04_log1p"] = np.log1p(np.abs(batch["f04"]))
    out["f05_log1p"] = np.log1p(np.abs(batch["f05"]))
    out["f06_x_f07"] = batch["f06"] * batch["f07"]
    out["f08_clip"] = np.clip(batch["f08"], -CLIP, CLIP)
    out["flag"] = (batch["f09"] > FLAG_AT) | (batch["bucket"] < FLAG_BUCKETS)
    return out


def features_pyarrow(table: Any) -> Any:
    import pyarrow.compute as pc

    for c in MEAN:
        i = table.schema.get_field_index(c)
        table = table.set_column(i, c, pc.divide(pc.subtract(table[c], MEAN[c]), STD[c]))
    new = {
        "f04_log1p": pc.log1p(pc.abs(table["f04"])),
        "f05_log1p": pc.log1p(pc.abs(table["f05"])),
        "f06_x_f07": pc.multiply(table["f06"], table["f07"]),
        "f08_clip": pc.min_element_wise(pc.max_element_wise(table["f08"], -CLIP), CLIP),
        "flag": pc.or_(pc.greater(table["f09"], FLAG_AT), pc.less(table["bucket"], FLAG_BUCKETS)),
    }
    for name, col in new.items():
        table = table.append_column(name, col)
    return table
