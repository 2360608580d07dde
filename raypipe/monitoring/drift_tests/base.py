"""The interface of a drift test, and what it is given and gives back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from raypipe.monitoring.reference import ColumnKind, FeatureReference

if TYPE_CHECKING:
    from raypipe.monitoring.spec import MonitorSpec

__all__ = ["ColumnKind", "Decision", "DriftTest", "FeatureWindow", "Outcome"]

#: ``p_value``: drifted when p < the level (the spec's alpha, Bonferroni-corrected over the
#: window's p-value tests); ``threshold``: drifted when the statistic > the threshold.
Decision = Literal["p_value", "threshold"]


@dataclass(frozen=True)
class FeatureWindow:
    """One feature's values in a window, as the detector hands them to a test (nulls
    removed; the window has at least the spec's ``min_feature_rows`` values)."""

    kind: ColumnKind
    #: How many values (numeric: finite ones; categorical: non-null keys).
    n: int
    #: PSI against the reference (over the feature's bins; computed for every tested feature).
    psi: float
    #: numeric: the finite values.
    values: np.ndarray | None = None
    #: categorical: key -> count (keys as :func:`raypipe.models.preprocess.category_key` gives).
    counts: Mapping[str, int] | None = None


@dataclass
class Outcome:
    """A test's result on one window."""

    statistic: float
    p_value: float | None = None
    #: Extra numbers for the feature result's ``stats`` (e.g. chi-square's ``df``).
    stats: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


class DriftTest(ABC):
    """A drift test.  Subclasses set the class variables and implement :meth:`test`.  One
    instance serves every feature and detector: keep per-reference state in what
    :meth:`reference` returns, not on the instance."""

    #: The name specs use; the same as its row in the registry.
    name: ClassVar[str]
    #: The column kinds it applies to (``datetime`` columns are ``numeric``: days).
    kinds: ClassVar[tuple[ColumnKind, ...]]
    decision: ClassVar[Decision] = "p_value"
    #: A ``threshold`` test's threshold unless the spec sets one (:meth:`threshold`).
    default_threshold: ClassVar[float | None] = None

    def applies_to(self, kind: str) -> bool:
        return kind in self.kinds

    def reference(self, ref: FeatureReference) -> Any:
        """What the test keeps of a feature's reference, prepared once per reference and
        given back to :meth:`test` (default: the reference itself)."""
        return ref

    @abstractmethod
    def test(self, reference: Any, window: FeatureWindow) -> Outcome:
        """The test of one window against what :meth:`reference` prepared."""

    def threshold(self, spec: MonitorSpec) -> float:
        """The level (p-value tests: the spec's ``alpha``) or threshold of a feature whose
        override sets none."""
        if self.decision == "p_value":
            return spec.alpha
        if self.default_threshold is None:
            raise TypeError(f"drift test {self.name!r} decides by threshold but has no default_threshold")
        return self.default_threshold

    def drifted(self, statistic: float, p_value: float | None, threshold: float) -> bool:
        """The verdict on a window's outcome at ``threshold`` (p-value tests: the corrected level)."""
        if self.decision == "p_value":
            return bool(p_value is not None and p_value < threshold)
        return bool(statistic > threshold)

    def threshold_kind(self) -> str:
        """How the threshold reads in a description: ``p <`` or ``<name> >``."""
        return "p <" if self.decision == "p_value" else f"{self.name} >"
