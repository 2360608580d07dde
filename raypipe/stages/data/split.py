"""``data.split``: a deterministic split into named parts (``train``, ``validation``, ``test``...).

Each row goes to a part by a hash of its ``key`` column (or, without a key, of the
whole row) mixed with ``seed``: the same row always lands in the same part, in every
run and on every machine, and appending rows never moves the rows already there.
Rows with the same key stay together (no leakage of one user across parts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from raypipe.exceptions import DataError
from raypipe.stages.base import StageContext, StageParams
from raypipe.stages.data.common import DataStage, only_input, store_dataset, task_args
from raypipe.store.dataset_hash import column_words, mix64, row_hashes

_PART_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class SplitParams(StageParams):
    #: Part name -> fraction of rows, in (0, 1], summing to 1.
    fractions: dict[str, Annotated[float, Field(gt=0, le=1)]]
    key: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if not self.fractions:
            raise ValueError("fractions: give at least one part, e.g. {train: 0.8, test: 0.2}")
        bad = [n for n in self.fractions if not _PART_RE.match(n)]
        if bad:
            raise ValueError(f"fractions: {bad[0]!r} is not a valid output name (letters, digits, _ and -)")
        total = sum(self.fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fractions: sum to {total:g}; expected 1")
        return self


def assign_parts(table: Any, fractions: list[float], key: str | None, seed: int) -> np.ndarray:
    """The part index of every row of an Arrow table (see the module doc)."""

    if key is not None:
        if key not in table.column_names:
            raise DataError(f"split key {key!r} is not a column; columns: {', '.join(table.column_names)}")
        h = mix64(column_words(table.column(key)))
    else:
        h = row_hashes(table)
    with np.errstate(over="ignore"):
        u = (mix64(h ^ mix64(np.array([seed], np.uint64))) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    edges = np.cumsum(fractions)[:-1]
    return np.searchsorted(edges, u, side="right")


def _keep_part(batch: Any, index: int, fractions: list[float], key: str | None, seed: int) -> Any:
    return batch.filter(assign_parts(batch, fractions, key, seed) == index)


class SplitStage(DataStage):
    Params = SplitParams
    params: SplitParams

    def outputs(self) -> list[str]:
        return list(self.params.fractions)

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        name, ds = only_input(inputs)
        fractions = list(self.params.fractions.values())
        out = {}
        for i, part in enumerate(self.params.fractions):
            kept = ds.map_batches(
                _keep_part,
                fn_kwargs={"index": i, "fractions": fractions, "key": self.params.key, "seed": self.params.seed},
                batch_format="pyarrow",
                batch_size=None,
                **task_args(ctx),
            )
            out[part] = store_dataset(ctx, kept, f"split part {part!r} of input {name!r}")
        return out
