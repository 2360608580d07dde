"""Drift tests by name, imported lazily: the only place a test is registered."""

from __future__ import annotations

import importlib
from functools import cache

from raypipe.monitoring.drift_tests.base import ColumnKind, DriftTest

__all__ = ["DRIFT_TESTS", "NOT_MONITORED", "drift_test_names", "get_drift_test", "method_names"]

#: (test name, "module:Class") pairs, in the order error messages list them.
DRIFT_TESTS: tuple[tuple[str, str], ...] = (
    ("ks", "raypipe.monitoring.drift_tests.ks:KSTest"),
    ("chi2", "raypipe.monitoring.drift_tests.chi2:ChiSquareTest"),
    ("psi", "raypipe.monitoring.drift_tests.psi:PSITest"),
)

#: The method of a feature that is not monitored (not a test).
NOT_MONITORED = "none"


@cache
def _load(name: str, target: str) -> DriftTest:
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, DriftTest)):
        raise TypeError(f"{target} is not a DriftTest")
    if cls.name != name:
        raise TypeError(f"{target} is named {cls.name!r} but registered as {name!r}")
    return cls()


def get_drift_test(name: str) -> DriftTest:
    """The drift test ``name``; an unknown name is a ValueError listing the registered ones."""
    for registered, target in DRIFT_TESTS:
        if registered == name:
            return _load(registered, target)
    raise ValueError(f"unknown drift test {name!r}; expected one of: {', '.join(drift_test_names())}")


def drift_test_names(kind: ColumnKind | None = None) -> list[str]:
    """The registered tests' names (those applying to ``kind`` when given), in registry order."""
    return [name for name, _ in DRIFT_TESTS if kind is None or get_drift_test(name).applies_to(kind)]


def method_names(kind: ColumnKind | None = None) -> list[str]:
    """What a feature's ``method`` may be: the tests' names, then :data:`NOT_MONITORED`."""
    return [*drift_test_names(kind), NOT_MONITORED]
