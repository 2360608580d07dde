"""``data.profile``: per-column statistics of a dataset, stored as a JSON artifact.

Numbers: count, nulls, mean, std, min, max, quantiles, an equal-width histogram and
a uniform sample (what a KS test needs); categories: frequencies and distinct counts.
Two passes in Ray Data tasks: mergeable partial statistics, then histogram counts.
The result is the reference that drift monitoring compares live traffic with; its
shape is documented in :func:`raypipe.stages.data.profiling.finalize`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from raypipe.exceptions import DataError
from raypipe.stages.base import StageContext, StageParams
from raypipe.stages.data import profiling
from raypipe.stages.data.common import DataStage, gather, input_schema, only_input


class ProfileParams(StageParams):
    #: Values kept per numeric column for quantiles and drift tests.
    sample_size: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    bins: Annotated[int, Field(ge=1, le=1000)] = 20
    max_categories: Annotated[int, Field(ge=1, le=10_000)] = 50
    seed: int = 0
    #: Profile only these columns (default: all).
    columns: list[str] | None = None


def _partial(df: Any, columns: list[str] | None, **kw: Any) -> profiling.Partial:
    return profiling.partial_profile(df if columns is None else df[columns], **kw)


def _hist(df: Any, edges: dict[str, Any]) -> dict[str, Any]:
    return profiling.histogram_counts(df, edges)


class ProfileStage(DataStage):
    Params = ProfileParams
    params: ProfileParams

    def outputs(self) -> list[str]:
        return ["profile"]

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        name, ds = only_input(inputs)
        p = self.params
        if p.columns is not None:
            have = input_schema(ctx, name, ds).names
            missing = [c for c in p.columns if c not in have]
            if missing:
                raise DataError(
                    f"params.columns: input {name!r} has no column {missing[0]!r}; it has: {', '.join(have)}"
                )
        parts = gather(
            ds,
            _partial,
            ctx,
            columns=p.columns,
            sample_size=p.sample_size,
            seed=p.seed,
            max_categories=p.max_categories,
        )
        if not parts:
            raise DataError(f"empty dataset: input {name!r} has no rows to profile")
        partial = functools.reduce(profiling.merge, parts)
        edges = profiling.histogram_edges(partial, p.bins)
        counts = functools.reduce(profiling.add_counts, gather(ds, _hist, ctx, edges=edges)) if edges else {}
        return {"profile": profiling.finalize(partial, counts, edges)}
