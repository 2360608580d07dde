"""How an app's live traffic is sampled, windowed and tested: :class:`MonitorSpec` and its
nested models (unknown keys are errors).  Test names are those of the drift-test registry
(:data:`raypipe.monitoring.drift_tests.registry.DRIFT_TESTS`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from raypipe.config import StrictModel
from raypipe.monitoring.drift_tests.registry import NOT_MONITORED, drift_test_names, get_drift_test, method_names
from raypipe.monitoring.reference import ColumnKind

__all__ = ["FeatureOverride", "MonitorSpec", "PerformanceSpec", "PredictionSpec", "Signal"]


Alpha = Annotated[float, Field(gt=0, lt=1)]
Signal = Literal["data", "prediction", "performance"]
SIGNALS: tuple[Signal, ...] = ("data", "prediction", "performance")


def _test_for(kind: ColumnKind, name: str) -> str:
    """``name`` when it is a registered drift test for ``kind`` columns (ValueError otherwise)."""
    allowed = drift_test_names(kind)
    if name not in allowed:
        known = name in drift_test_names()
        what = f"{name!r} is not a drift test for {kind} features" if known else f"unknown drift test {name!r}"
        raise ValueError(f"{what}; expected one of: {', '.join(allowed)}")
    return name


class FeatureOverride(StrictModel):
    """Per-feature settings; unset fields take the spec's defaults."""

    #: A registered drift test for the feature's kind (built in: ``ks`` / ``psi`` numeric,
    #: ``chi2`` / ``psi`` categorical), or ``none`` (not monitored).
    method: str | None = None
    #: p-value tests (ks, chi2): the level alpha before the Bonferroni division; psi: the PSI threshold.
    threshold: Annotated[float, Field(gt=0)] | None = None
    #: PSI quantile bins (numeric).
    bins: Annotated[int, Field(ge=2, le=100)] | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, v: str | None) -> str | None:
        if v is None or v == NOT_MONITORED:
            return v
        try:
            get_drift_test(v)
        except ValueError:
            raise ValueError(f"unknown drift test {v!r}; expected one of: {', '.join(method_names())}") from None
        return v


class PredictionSpec(StrictModel):
    enabled: bool = True
    #: Level of the prediction test (chi-square for classes, KS for values).
    alpha: Alpha = 0.05


class PerformanceSpec(StrictModel):
    enabled: bool = True
    #: auto: accuracy for classification, rmse for regression.
    metric: Literal["auto", "accuracy", "rmse", "mae"] = "auto"
    #: The expected value (default: the evaluation metrics, else the model's last metrics).
    reference: float | None = None
    #: accuracy: drift when ``reference - accuracy > max_drop`` (absolute).
    max_drop: Annotated[float, Field(gt=0, le=1)] = 0.05
    #: rmse / mae: drift when ``value > reference * (1 + max_increase)``.
    max_increase: Annotated[float, Field(gt=0)] = 0.2
    #: Labelled predictions per performance window.
    window_labels: Annotated[int, Field(ge=10)] = 200


class MonitorSpec(StrictModel):
    """How an app's live traffic is sampled, windowed and tested."""

    #: A window closes after this many sampled rows ...
    window_rows: Annotated[int, Field(ge=10)] | None = 500
    #: ... or after this many seconds, if it has ``min_window_rows`` by then.
    window_seconds: Annotated[float, Field(gt=0)] | None = None
    min_window_rows: Annotated[int, Field(ge=10)] = 100
    #: Fraction of served rows logged (by request id when given, else at random).
    sample_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    #: Rows kept per open window (a uniform reservoir when a window sees more).
    reservoir_size: Annotated[int, Field(ge=10, le=1_000_000)] = 5000
    #: Features monitored (default: the model's features found in the profile).
    features: list[str] | None = None
    overrides: dict[str, FeatureOverride] = Field(default_factory=dict)
    #: The drift test of numeric (and datetime) features: a registered one (built in: ``ks``, ``psi``).
    numeric_method: str = "ks"
    #: The drift test of categorical features: a registered one (built in: ``chi2``, ``psi``).
    categorical_method: str = "chi2"
    #: Family-wise level of the p-value tests (per feature before Bonferroni).
    alpha: Alpha = 0.05
    correction: Literal["bonferroni", "none"] = "bonferroni"
    psi_threshold: Annotated[float, Field(gt=0)] = 0.2
    psi_bins: Annotated[int, Field(ge=2, le=100)] = 10
    #: A window's dataset drifted when at least this share of its tested features drifted.
    drift_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    #: A feature needs this many non-null values in a window to be tested (at most ``min_window_rows``).
    min_feature_rows: Annotated[int, Field(ge=5)] = 30
    prediction: PredictionSpec = Field(default_factory=PredictionSpec)
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec)
    #: Drifted windows in a row that make one event, and clean ones that end the episode.
    consecutive: Annotated[int, Field(ge=1)] = 3
    reset_windows: Annotated[int, Field(ge=1)] = 3
    #: What makes a window count as drifted for events.
    trigger_on: list[Signal] = Field(default_factory=lambda: list(SIGNALS))
    #: A retraining claimed by an event and never finished stops blocking after this.
    in_flight_timeout_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    #: Memory bounds: results kept per variant, events kept, request ids awaiting labels, variants.
    history_windows: Annotated[int, Field(ge=1, le=100_000)] = 100
    max_events: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    max_pending_labels: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000
    max_variants: Annotated[int, Field(ge=1, le=1000)] = 16
    seed: int = 0

    @field_validator("numeric_method")
    @classmethod
    def _numeric_method(cls, v: str) -> str:
        return _test_for("numeric", v)

    @field_validator("categorical_method")
    @classmethod
    def _categorical_method(cls, v: str) -> str:
        return _test_for("categorical", v)

    @model_validator(mode="after")
    def _check(self) -> MonitorSpec:
        if self.window_rows is None and self.window_seconds is None:
            raise ValueError("give window_rows, window_seconds or both")
        if self.window_rows is not None and self.min_window_rows > self.window_rows:
            raise ValueError(f"min_window_rows ({self.min_window_rows}) > window_rows ({self.window_rows})")
        if self.min_window_rows < self.min_feature_rows:
            raise ValueError(
                f"min_window_rows ({self.min_window_rows}) < min_feature_rows ({self.min_feature_rows}): a window "
                f"closed with fewer than {self.min_feature_rows} rows has too few values to test any feature "
                "(no statistic, no drift); raise min_window_rows (and window_rows) or lower min_feature_rows (>= 5)"
            )
        if self.reservoir_size < self.min_window_rows:
            raise ValueError(f"reservoir_size ({self.reservoir_size}) < min_window_rows ({self.min_window_rows})")
        return self
