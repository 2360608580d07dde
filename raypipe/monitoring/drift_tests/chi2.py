"""Pearson's chi-square goodness of fit for categorical features: the window's counts
against the profile's ``frequencies`` (+ ``other``), rare cells pooled
(:func:`raypipe.monitoring.statistics.pool_cells`), ``df = cells - 1``."""

from __future__ import annotations

from typing import ClassVar

from raypipe.monitoring.drift_tests.base import ColumnKind, Decision, DriftTest, FeatureWindow, Outcome
from raypipe.monitoring.reference import FeatureReference
from raypipe.monitoring.statistics import chisquare, pool_cells


class ChiSquareTest(DriftTest):
    name: ClassVar[str] = "chi2"
    kinds: ClassVar[tuple[ColumnKind, ...]] = ("categorical",)
    decision: ClassVar[Decision] = "p_value"

    def test(self, reference: FeatureReference, window: FeatureWindow) -> Outcome:
        assert reference.counts is not None and window.counts is not None
        labels, obs, exp = pool_cells(reference.counts, window.counts, window.n)
        if len(labels) < 2:
            return Outcome(0.0, 1.0, note="one chi-square cell after pooling rare categories: nothing to test")
        stat, p, df = chisquare(obs, exp)
        return Outcome(stat, p, stats={"df": df})
