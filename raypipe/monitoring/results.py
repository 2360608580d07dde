"""What testing a window gives: per feature (:class:`FeatureResult`), per window
(:class:`WindowResult`) and per window of labelled predictions (:class:`PerformanceResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from raypipe._json import json_safe

__all__ = ["FeatureResult", "PerformanceResult", "WindowResult"]


@dataclass
class FeatureResult:
    feature: str
    kind: str
    method: str
    #: The test's statistic (KS D, chi-square statistic, PSI...); None when not tested.
    statistic: float | None
    p_value: float | None
    #: What decides: the corrected level (p < threshold) or the test's threshold (statistic > threshold).
    threshold: float | None
    drifted: bool | None
    #: PSI, reported for every tested feature.
    psi: float | None = None
    n: int = 0
    nulls: int = 0
    #: Window statistics (numeric: mean, std; categorical: top shares).
    stats: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass
class PerformanceResult:
    window_id: int
    variant: str
    metric: str
    value: float | None
    reference: float | None
    #: accuracy: reference - value (a drop); errors: value / reference - 1 (an increase).
    change: float | None
    threshold: float
    n: int
    drifted: bool | None
    closed_at: float
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass
class WindowResult:
    window_id: int
    variant: str
    opened_at: float
    closed_at: float
    #: Sampled rows the window saw, and rows tested (at most the reservoir).
    rows: int
    rows_used: int
    features: dict[str, FeatureResult]
    tested: int
    drifted_features: int
    drift_share: float | None
    dataset_drifted: bool
    prediction: FeatureResult | None = None
    #: Counted as drifted for events (``trigger_on``: data and/or prediction).
    drifted: bool = False
    correction: str = "bonferroni"
    alpha: float = 0.05

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.prediction is not None and self.prediction.drifted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_id": self.window_id,
            "variant": self.variant,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "rows": self.rows,
            "rows_used": self.rows_used,
            "tested": self.tested,
            "drifted_features": self.drifted_features,
            "drift_share": json_safe(self.drift_share),
            "dataset_drifted": self.dataset_drifted,
            "prediction_drifted": self.prediction_drifted,
            "drifted": self.drifted,
            "correction": self.correction,
            "alpha": self.alpha,
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "prediction": self.prediction.to_dict() if self.prediction else None,
        }
