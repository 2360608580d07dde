"""What a built-in model is: its YAML spec (:class:`BuiltinTraining`) and what it expects of the data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from raypipe.config import StrictModel
from raypipe.exceptions import DataError
from raypipe.models.preprocess import (
    PreprocessingSpec,
    Preprocessor,
    feature_kind,
    fit_feature,
    looks_like_id,
)


class MLPSpec(StrictModel):
    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 128])
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    activation: Literal["relu", "gelu", "tanh"] = "relu"


class CNNSpec(StrictModel):
    """A small CNN over features laid out as an image (``input_shape: [C, H, W]``, row-major)."""

    type: Literal["cnn"] = "cnn"
    input_shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=3, max_length=3)]
    channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [16, 32])
    kernel: Annotated[int, Field(ge=1)] = 3
    hidden: Annotated[int, Field(ge=1)] = 64
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    activation: Literal["relu", "gelu", "tanh"] = "relu"


ModelSpec = Annotated[MLPSpec | CNNSpec, Field(discriminator="type")]


class OptimizerSpec(StrictModel):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd only


class ScheduleSpec(StrictModel):
    """Learning-rate schedule, stepped once per epoch (``warmup_epochs`` ramp linearly first)."""

    name: Literal["constant", "cosine", "step", "exponential"] = "constant"
    step_size: Annotated[int, Field(ge=1)] = 10  # step
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1  # step, exponential
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    min_lr: Annotated[float, Field(ge=0)] = 0.0  # cosine


class BuiltinTraining(StrictModel):
    """What the built-in loop trains: ``params.model`` and the training settings of ``train``/``tune``."""

    model: ModelSpec
    label: str = "label"
    #: Input columns, in order; default: every column but the label and columns that look
    #: like ids or free text (numeric, bool, text, dictionary, date and timestamp columns).
    features: list[str] | None = None
    task: Literal["classification", "regression"] = "classification"
    #: Standardize numeric and date features with the training split's mean and standard deviation.
    standardize: bool = True
    #: How categories, dates and missing values are encoded (:mod:`raypipe.models.preprocess`).
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    seed: int = 0
    #: Also checkpoint every N optimizer steps inside an epoch (default: once per epoch).
    checkpoint_every_steps: Annotated[int | None, Field(ge=1)] = None

    @model_validator(mode="after")
    def _cnn_size(self) -> BuiltinTraining:
        if isinstance(self.model, CNNSpec) and self.features is not None:
            c, h, w = self.model.input_shape
            if c * h * w != len(self.features):
                raise ValueError(
                    f"model.input_shape {self.model.input_shape} needs {c * h * w} features, got {len(self.features)}"
                )
        return self


def _not_a_feature(name: str, arrow_type: str, col: Mapping[str, Any] | None, forced: bool) -> str | None:
    """Why a column is left out when ``features`` is not given (None: it is a feature)."""
    kind = feature_kind(arrow_type, forced)
    if kind is None:
        return f"type {arrow_type} is not a feature type"
    if col is None or not col.get("count"):
        return "no values in the training data"
    count, distinct = int(col["count"]), col.get("distinct")
    if kind == "category" and not forced and col.get("kind") == "categorical" and arrow_type not in ("bool",):
        if distinct is None:
            return "too many distinct values (an id or free text?); name it in `features` to embed it"
        if count >= 20 and distinct > 0.5 * count:
            return f"{distinct:,} distinct values in {count:,} rows (an id or free text?)"
    if kind == "numeric" and arrow_type.startswith(("int", "uint")):
        if looks_like_id(name) and (distinct is None or distinct >= 0.9 * count):
            return "looks like an id (its name, and nearly every value distinct)"
        big = max(abs(float(col.get("min") or 0)), abs(float(col.get("max") or 0)))
        if big > 2**53:
            return "integers beyond 2**53 (an id or a hash?); a float cannot tell them apart"
    return None


def describe_data(
    params: BuiltinTraining,
    profile: Mapping[str, Any],
    label_values: Sequence[Any],
    types: Mapping[str, str],
) -> dict[str, Any]:
    """What the model expects, from the training split's profile (``data.profile``'s
    shape, of every column), the label's distinct values and the columns' Arrow types:
    the features, their preprocessing, the input schema and the classes.  Columns left
    out of an automatic feature list are in ``excluded``, with the reason."""
    names = list(types)
    if params.label not in types:
        raise DataError(f"label column {params.label!r} is not in the training data; columns: {', '.join(names)}")
    spec = params.preprocessing
    unknown = [c for c in spec.categorical if c not in types]
    if unknown:
        raise DataError(f"preprocessing.categorical: not in the training data: {', '.join(unknown)}")
    cols = profile.get("columns") or {}
    forced = set(spec.categorical)
    excluded: dict[str, str] = {}
    if params.features is None:
        features = []
        for n in names:
            if n == params.label:
                continue
            why = _not_a_feature(n, types[n], cols.get(n), n in forced)
            if why is None:
                features.append(n)
            else:
                excluded[n] = why
    else:
        missing = [f for f in params.features if f not in types]
        if missing:
            raise DataError(f"feature columns not in the training data: {', '.join(missing)}")
        if params.label in params.features:
            raise DataError(f"feature columns include the label {params.label!r}")
        features = list(params.features)
        bad = [f for f in features if feature_kind(types[f], f in forced) is None]
        if bad:
            raise DataError(
                "feature columns must be numeric, bool, text, dictionary, date or timestamp: "
                + ", ".join(f"{f} ({types[f]})" for f in bad)
            )
    if not features:
        raise DataError(
            "no usable feature columns in the training data"
            + (": " + "; ".join(f"{k}: {v}" for k, v in excluded.items()) if excluded else "")
        )
    fitted = []
    for f in features:
        kind = feature_kind(types[f], f in forced)
        col = cols.get(f) or {}
        fitted.append(fit_feature(f, types[f], col, kind or "numeric", spec, params.standardize))
    pre = Preprocessor(fitted)
    if isinstance(params.model, CNNSpec):
        c, h, w = params.model.input_shape
        if pre.embedded or pre.width != c * h * w:
            raise DataError(
                f"model.input_shape {params.model.input_shape} needs {c * h * w} numeric inputs, the features "
                f"encode to {pre.width}"
                + (" plus embeddings" if pre.embedded else "")
                + " (a CNN takes numeric features without missing values)"
            )
    out: dict[str, Any] = {
        "features": features,
        "label": params.label,
        "task": params.task,
        "input_schema": {f: types[f] for f in features},
        "spec": params.model.model_dump(),
        "preprocessing": pre.to_meta(),
        "classes": None,
        "excluded": excluded,
    }
    if params.task == "classification":
        classes = sorted({plain_label(v) for v in label_values if v is not None}, key=_label_order)
        if len(classes) < 2:
            raise DataError(
                f"label {params.label!r} has {len(classes)} distinct value(s); classification needs 2 or more"
            )
        out["classes"] = classes
    else:
        t = types[params.label]
        if feature_kind(t) != "numeric":
            raise DataError(f"regression needs a numeric label; {params.label!r} is {t}")
    return out


def plain_label(v: Any) -> Any:
    """A label as a plain Python value: numpy scalars unwrapped, integral floats as ints."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _label_order(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))
