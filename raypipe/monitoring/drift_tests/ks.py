"""Two-sample Kolmogorov-Smirnov for numeric features, against the profile's ``sample``.

The sample (a uniform sample of the finite values, up to ``sample_size``, default 10,000),
not the quantiles (7 points) or the histogram (20 equal-width bins), because the test
needs the reference CDF at every live value; a two-sample test also accounts for the
reference itself being a sample (as Evidently and alibi-detect do).  The statistic and
its p-value: :func:`raypipe.monitoring.statistics.ks_2samp`.
"""

from __future__ import annotations

from typing import ClassVar

from raypipe.monitoring.drift_tests.base import ColumnKind, Decision, DriftTest, FeatureWindow, Outcome
from raypipe.monitoring.reference import FeatureReference
from raypipe.monitoring.statistics import ks_2samp


class KSTest(DriftTest):
    name: ClassVar[str] = "ks"
    kinds: ClassVar[tuple[ColumnKind, ...]] = ("numeric",)
    decision: ClassVar[Decision] = "p_value"

    def test(self, reference: FeatureReference, window: FeatureWindow) -> Outcome:
        assert reference.sample is not None and window.values is not None
        ks = ks_2samp(reference.sample, window.values)
        return Outcome(ks.statistic, ks.p_value)
