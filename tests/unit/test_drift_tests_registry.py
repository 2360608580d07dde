"""A drift test is one class plus one registry row: the spec accepts its name and the
detector runs it (no other edit), without Ray."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import stats

from raypipe.monitoring.detector import DriftDetector
from raypipe.monitoring.drift_tests import registry
from raypipe.monitoring.drift_tests.base import ColumnKind, Decision, DriftTest, FeatureWindow, Outcome
from raypipe.monitoring.monitor_core import MonitorCore
from raypipe.monitoring.reference import FeatureReference
from raypipe.monitoring.spec import MonitorSpec
from raypipe.stages.data.profiling import add_counts, finalize, histogram_counts, histogram_edges, partial_profile

FEATURES = [f"f{i}" for i in range(4)]


class MeanShiftTest(DriftTest):
    """A threshold test: the absolute difference of the means."""

    name: ClassVar[str] = "mean_shift"
    kinds: ClassVar[tuple[ColumnKind, ...]] = ("numeric",)
    decision: ClassVar[Decision] = "threshold"
    default_threshold: ClassVar[float | None] = 0.25

    def reference(self, ref: FeatureReference) -> float:
        assert ref.sample is not None
        return float(np.mean(ref.sample))

    def test(self, reference: Any, window: FeatureWindow) -> Outcome:
        assert window.values is not None
        mean = float(np.mean(window.values))
        return Outcome(abs(mean - reference), stats={"reference_mean": reference})


class WelchTest(DriftTest):
    """A p-value test: Welch's t-test of the means."""

    name: ClassVar[str] = "welch"
    kinds: ClassVar[tuple[ColumnKind, ...]] = ("numeric",)

    def test(self, reference: FeatureReference, window: FeatureWindow) -> Outcome:
        res = stats.ttest_ind(reference.sample, window.values, equal_var=False)
        return Outcome(float(abs(res.statistic)), float(res.pvalue))


class NotATest:
    name = "not_a_test"


@pytest.fixture(scope="module")
def profile() -> dict:
    rng = np.random.default_rng(42)
    df = pd.DataFrame(rng.normal(size=(20_000, 4)), columns=FEATURES)
    df["c"] = rng.choice(["a", "b", "c"], size=20_000)
    p = partial_profile(df, sample_size=10_000, seed=0, max_categories=50)
    edges = histogram_edges(p, 20)
    return finalize(p, add_counts({}, histogram_counts(df, edges)), edges)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registry line each new test needs."""
    monkeypatch.setattr(
        registry,
        "DRIFT_TESTS",
        (
            *registry.DRIFT_TESTS,
            ("mean_shift", f"{__name__}:MeanShiftTest"),
            ("welch", f"{__name__}:WelchTest"),
        ),
    )


def columns(rng: np.random.Generator, shift: float = 0.0, n: int = 500) -> dict[str, Any]:
    x = rng.normal(size=(n, 4))
    x[:, 0] += shift
    out: dict[str, Any] = {f: x[:, i] for i, f in enumerate(FEATURES)}
    out["c"] = list(rng.choice(["a", "b", "c"], size=n))
    return out


def test_unregistered_names_are_rejected_with_the_allowed_ones() -> None:
    with pytest.raises(ValidationError, match=r"overrides\.f0\.method\n.*unknown drift test 'mean_shift'; "):
        MonitorSpec(overrides={"f0": {"method": "mean_shift"}})
    with pytest.raises(ValidationError, match=r"numeric_method\n.*expected one of: ks, psi \["):
        MonitorSpec(numeric_method="mean_shift")
    assert registry.drift_test_names() == ["ks", "chi2", "psi"]
    assert registry.method_names("categorical") == ["chi2", "psi", "none"]


def test_a_registered_test_is_accepted_by_the_spec(registered: None) -> None:
    assert registry.drift_test_names("numeric") == ["ks", "psi", "mean_shift", "welch"]
    assert MonitorSpec(numeric_method="mean_shift").numeric_method == "mean_shift"
    assert MonitorSpec(overrides={"f0": {"method": "welch"}}).overrides["f0"].method == "welch"
    # it applies to numeric features only: the categorical default lists what applies
    with pytest.raises(ValidationError, match="'mean_shift' is not a drift test for categorical features"):
        MonitorSpec(categorical_method="mean_shift")
    with pytest.raises(ValidationError, match=r"expected one of: ks, chi2, psi, mean_shift, welch, none"):
        MonitorSpec(overrides={"f0": {"method": "nope"}})


def test_the_detector_runs_a_registered_threshold_test(registered: None, profile: dict) -> None:
    det = DriftDetector(profile, MonitorSpec(numeric_method="mean_shift"))
    assert det.methods == {"f0": "mean_shift", "f1": "mean_shift", "f2": "mean_shift", "f3": "mean_shift", "c": "chi2"}
    # what reference() prepared is handed back to test()
    assert det.prepared["f0"] == pytest.approx(float(np.mean(det.refs["f0"].sample)))
    desc = det.describe()["features"]["f0"]
    assert desc["method"] == "mean_shift" and desc["threshold"] == 0.25 and desc["threshold_kind"] == "mean_shift >"
    rng = np.random.default_rng(1)
    cols = columns(rng, shift=0.6)
    r = det.evaluate(cols)
    f0, f1 = r.features["f0"], r.features["f1"]
    assert f0.method == "mean_shift" and f0.p_value is None and f0.threshold == 0.25
    assert f0.statistic == pytest.approx(abs(float(np.mean(cols["f0"])) - det.prepared["f0"]))
    assert f0.drifted and f0.stats["reference_mean"] == det.prepared["f0"] and f0.psi is not None
    assert not f1.drifted
    # the only p-value test left is chi2 on "c": no Bonferroni division
    assert r.features["c"].threshold == pytest.approx(0.05)
    # a per-feature threshold still wins
    det = DriftDetector(profile, MonitorSpec(numeric_method="mean_shift", overrides={"f0": {"threshold": 0.9}}))
    assert not det.evaluate(cols).features["f0"].drifted


def test_a_registered_p_value_test_is_corrected_with_the_others(registered: None, profile: dict) -> None:
    det = DriftDetector(profile, MonitorSpec(overrides={"f0": {"method": "welch"}}))
    cols = columns(np.random.default_rng(2), shift=0.5)
    r = det.evaluate(cols)
    f0 = r.features["f0"]
    assert f0.method == "welch" and f0.threshold == pytest.approx(0.05 / 5)  # f0..f3 and c
    assert f0.p_value == pytest.approx(stats.ttest_ind(det.refs["f0"].sample, cols["f0"], equal_var=False).pvalue)
    assert f0.drifted and r.features["f1"].method == "ks"
    with pytest.raises(ValueError, match="welch takes a level alpha"):
        DriftDetector(profile, MonitorSpec(overrides={"f0": {"method": "welch", "threshold": 2}}))
    with pytest.raises(ValueError, match=r"overrides\.c\.method: welch is for numeric features; c is categorical"):
        DriftDetector(profile, MonitorSpec(overrides={"c": {"method": "welch"}}))


def test_the_monitor_core_reports_a_registered_test(registered: None, profile: dict) -> None:
    spec = {"window_rows": 200, "consecutive": 1, "overrides": {"f0": {"method": "mean_shift"}}}
    core = MonitorCore("app", profile, spec, clock=lambda: 1.0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    x[:, 0] += 1.0
    core.log("v1", [dict(zip(FEATURES, row, strict=True)) for row in x.tolist()])
    st = core.status()
    f0 = st["variants"]["v1"]["features"]["f0"]
    assert f0["method"] == "mean_shift" and f0["drifted"] is True
    assert st["reference"]["features"]["f0"]["threshold_kind"] == "mean_shift >"


def test_bad_registrations_are_type_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        registry,
        "DRIFT_TESTS",
        (("not_a_test", f"{__name__}:NotATest"), ("renamed", f"{__name__}:MeanShiftTest")),
    )
    with pytest.raises(TypeError, match="is not a DriftTest"):
        registry.get_drift_test("not_a_test")
    with pytest.raises(TypeError, match="named 'mean_shift' but registered as 'renamed'"):
        registry.get_drift_test("renamed")
