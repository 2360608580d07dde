"""What windows are compared with: per feature, a :class:`FeatureReference` prepared once
from the training data's ``data.profile`` JSON (see
:func:`raypipe.stages.data.profiling.finalize`); for predictions, one from reference
predictions or from the profile's label column."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from raypipe.models.classes import class_key, prediction_value
from raypipe.monitoring.statistics import OTHER, bin_shares, quantile_edges
from raypipe.monitoring.values import to_float

__all__ = [
    "PROFILE_KINDS",
    "ColumnKind",
    "FeatureReference",
    "categorical_reference",
    "classes_from_column",
    "feature_reference",
    "numeric_reference",
    "prediction_reference",
    "trimmed_profile",
]

ColumnKind = Literal["numeric", "categorical"]

#: The column kinds of a profile that can be monitored, and how they are tested
#: (a datetime column as numbers: days since 1970-01-01).
PROFILE_KINDS: dict[str, ColumnKind] = {"numeric": "numeric", "datetime": "numeric", "categorical": "categorical"}


@dataclass
class FeatureReference:
    """What a window of one feature is compared with, prepared once from the profile."""

    name: str
    kind: ColumnKind
    #: numeric: the sorted reference sample, its PSI edges and shares.
    sample: np.ndarray | None = None
    #: categorical: key -> reference count (OTHER: the rest).
    counts: dict[str, float] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    psi_edges: np.ndarray | None = None
    psi_shares: np.ndarray | None = None
    #: Why the feature cannot be tested (None: it can).
    problem: str | None = None
    #: How live values become numbers: ``days`` for dates and timestamps (days since
    #: 1970-01-01, :func:`raypipe.models.preprocess.to_days`), None for numbers.
    encoding: str | None = None


def numeric_reference(name: str, col: Mapping[str, Any], bins: int) -> FeatureReference:
    sample = np.asarray([v for v in (col.get("sample") or []) if v is not None], dtype=np.float64)
    sample = np.sort(sample[np.isfinite(sample)])
    ref = FeatureReference(name, "numeric", sample=sample)
    ref.summary = {k: col.get(k) for k in ("count", "mean", "std", "min", "max", "null_fraction")}
    ref.summary["sample"] = len(sample)
    if len(sample) == 0:
        ref.problem = "the profile has no sample of this column"
        return ref
    ref.psi_edges = quantile_edges(sample, bins)
    ref.psi_shares = bin_shares(sample, ref.psi_edges)
    return ref


def categorical_reference(name: str, col: Mapping[str, Any]) -> FeatureReference:
    freqs = {str(k): float(v) for k, v in (col.get("frequencies") or {}).items()}
    other = float(col.get("other") or 0)
    counts = dict(freqs)
    if other > 0:
        counts[OTHER] = other
    ref = FeatureReference(name, "categorical", counts=counts)
    total = sum(counts.values())
    top = sorted(freqs.items(), key=lambda kv: -kv[1])[:5]
    ref.summary = {
        "count": col.get("count"),
        "distinct": col.get("distinct"),
        "null_fraction": col.get("null_fraction"),
        "top": {k: v / total for k, v in top} if total else {},
    }
    if total <= 0:
        ref.problem = "the profile has no values of this column"
    return ref


def feature_reference(name: str, col: Mapping[str, Any], bins: int) -> FeatureReference:
    """The reference of profile column ``col`` (``bins``: its PSI quantile bins)."""
    kind = col.get("kind")
    if PROFILE_KINDS.get(str(kind)) == "numeric":
        ref = numeric_reference(name, col, bins)
        if kind == "datetime":
            ref.encoding = "days"
        return ref
    if kind == "categorical":
        return categorical_reference(name, col)
    raise ValueError(f"feature {name!r} is of kind {kind!r} in the profile; only numeric, datetime and categorical")


def classes_from_column(col: Mapping[str, Any]) -> dict[str, float]:
    """Class counts of a label column of a profile (categorical frequencies, or the values of a
    numeric column's sample, a systematic sample when it has few distinct values)."""
    if col.get("kind") == "categorical":
        out: dict[str, float] = {}
        for k, v in (col.get("frequencies") or {}).items():
            key = class_key(k)
            if key is not None:
                out[key] = out.get(key, 0.0) + float(v)
        if col.get("other"):
            out[OTHER] = float(col["other"])
        return out
    out = {}
    for v in col.get("sample") or []:
        key = class_key(v)
        if key is not None:
            out[key] = out.get(key, 0.0) + 1.0
    return out


def prediction_reference(
    cols: Mapping[str, Any],
    task: str,
    classes: Sequence[Any] | None,
    label: str | None,
    given: Sequence[Any] | None,
    bins: int,
) -> tuple[FeatureReference | None, str | None]:
    """The reference of prediction drift and where it comes from: ``given`` predictions (e.g.
    the model's on its test set), else the profile's ``label`` column (class labels as a
    categorical for classification, values as a numeric for regression); (None, None) when
    neither is at hand."""
    if given is not None and len(given):
        values = [prediction_value(p, classes) for p in given]
        source = "reference predictions"
        if task == "classification":
            counts: dict[str, float] = {}
            for v in values:
                k = class_key(v)
                if k is not None:
                    counts[k] = counts.get(k, 0.0) + 1.0
            return FeatureReference("prediction", "categorical", counts=counts), source
        sample = np.sort(np.asarray([to_float(v) for v in values], dtype=np.float64))
        sample = sample[np.isfinite(sample)]
        return FeatureReference("prediction", "numeric", sample=sample), source
    if not label or label not in cols:
        return None, None
    col = cols[label]
    source = f"label column {label!r} of the profile"
    if task == "classification":
        counts = classes_from_column(col)
        return (FeatureReference("prediction", "categorical", counts=counts) if counts else None), source
    if col.get("kind") != "numeric":
        return None, None
    ref = numeric_reference("prediction", col, bins)
    return (ref if ref.problem is None else None), source


def trimmed_profile(
    profile: Mapping[str, Any], features: Sequence[str], model_meta: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The profile with only the monitored features' columns and the model's label (what the
    monitor keeps in Ray's KV)."""
    keep = set(features) | ({str(model_meta["label"])} if model_meta and model_meta.get("label") else set())
    return {**profile, "columns": {k: v for k, v in profile["columns"].items() if k in keep}}
