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
from raypipe.models.builtin_spec import describe_data
from raypipe.models.preprocess import category_keys
from raypipe.stages.base import StageContext, StageParams
from raypipe.stages.data import profiling
from raypipe.stages.data.common import DataStage, gather, input_schema, only_input
from raypipe.store.datasets import arrow_schema_of


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


# ----------------------------------------------------------------------------- training data
#: Values kept per numeric column when learning a model's preprocessing (medians are exact
#: below this many distinct values, else from a uniform sample of this size).
FIT_SAMPLE = 10_000


def _fit_partial(df: Any, label: str, categorical: list[str], max_levels: int, classes: bool) -> Any:
    df = df.copy(deep=False)
    for c in categorical:
        df[c] = category_keys(df[c])
    partial = profiling.partial_profile(
        df.drop(columns=[label]), sample_size=FIT_SAMPLE, seed=0, max_categories=max_levels
    )
    labels: list[Any] = []
    if classes:
        labels = [v.item() if hasattr(v, "item") else v for v in df[label].dropna().unique().tolist()]
    return partial, labels


def describe_training_data(params: Any, ds: Any, ctx: StageContext | None) -> dict[str, Any]:
    """What a built-in model trained on ``ds`` expects (features, preprocessing, classes):
    one pass of Ray Data tasks inside the stage's grant (``ctx``; None outside a stage)
    profiles every column of the training split, then
    :func:`raypipe.models.builtin_spec.describe_data` decides.  The columns left out of an
    automatic feature list are logged with the reason."""

    schema = arrow_schema_of(ds)
    types = {f.name: str(f.type) for f in schema}
    if params.label not in types:
        raise DataError(f"label column {params.label!r} is not in the training data; columns: {', '.join(types)}")
    parts = gather(
        ds,
        _fit_partial,
        ctx,
        label=params.label,
        categorical=[c for c in params.preprocessing.categorical if c in types],
        max_levels=params.preprocessing.max_levels,
        classes=params.task == "classification",
    )
    if not parts or not sum(p.rows for p, _ in parts):
        raise DataError("the training data has no rows")
    partial = functools.reduce(profiling.merge, [p for p, _ in parts])
    labels = sorted({v for _, ls in parts for v in ls}, key=lambda v: (str(type(v)), v))
    data = describe_data(params, profiling.finalize(partial, None, None), labels, types)
    if ctx is not None:
        for column, why in data["excluded"].items():
            ctx.log.info("column %r is not a feature: %s", column, why)
            ctx.detail("feature selection", f"column {column!r} is not a feature: {why}")
    return data
