"""The population stability index as a drift test (numeric and categorical features):
drifted when ``PSI > psi_threshold`` (0.2 by default; the usual reading: < 0.1 stable,
0.1-0.2 moderate, > 0.2 significant).  The PSI itself is computed for every tested
feature (:attr:`~raypipe.monitoring.drift_tests.base.FeatureWindow.psi`;
:func:`raypipe.monitoring.statistics.psi`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from raypipe.monitoring.drift_tests.base import ColumnKind, Decision, DriftTest, FeatureWindow, Outcome

if TYPE_CHECKING:
    from raypipe.monitoring.spec import MonitorSpec


class PSITest(DriftTest):
    name: ClassVar[str] = "psi"
    kinds: ClassVar[tuple[ColumnKind, ...]] = ("numeric", "categorical")
    decision: ClassVar[Decision] = "threshold"

    def test(self, reference: Any, window: FeatureWindow) -> Outcome:
        return Outcome(window.psi)

    def threshold(self, spec: MonitorSpec) -> float:
        return spec.psi_threshold
