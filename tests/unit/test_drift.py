"""Drift statistics (against scipy), detectors, debouncing and the monitor core, without Ray."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import stats

from raypipe.models.preprocess import to_day
from raypipe.monitoring.debounce import Debouncer
from raypipe.monitoring.detector import DriftDetector
from raypipe.monitoring.monitor_core import MonitorCore
from raypipe.monitoring.sampling import keep_request
from raypipe.monitoring.spec import MonitorSpec
from raypipe.monitoring.statistics import (
    OTHER,
    PSI_EPSILON,
    bonferroni,
    chisquare,
    dataset_drifted,
    kolmogorov_sf,
    ks_2samp,
    kstwo_sf,
    psi,
    psi_categorical,
    psi_numeric,
    smirnov_sf,
)
from raypipe.monitoring.windows import PerformanceWindow, WindowBuffer
from raypipe.stages.data.profiling import add_counts, finalize, histogram_counts, histogram_edges, partial_profile

FEATURES = [f"f{i}" for i in range(5)]


def make_profile(df: pd.DataFrame, sample_size: int = 10_000) -> dict:
    """A real data.profile result of ``df`` (the same functions the stage runs)."""
    p = partial_profile(df, sample_size=sample_size, seed=0, max_categories=50)
    edges = histogram_edges(p, 20)
    return finalize(p, add_counts({}, histogram_counts(df, edges)), edges)


@pytest.fixture(scope="module")
def normal_profile() -> dict:
    rng = np.random.default_rng(42)
    return make_profile(pd.DataFrame(rng.normal(size=(20_000, 5)), columns=FEATURES))


def rows_of(x: np.ndarray, names: list[str] = FEATURES) -> list[dict]:
    return [dict(zip(names, r, strict=True)) for r in x.tolist()]


def columns_of(x: np.ndarray) -> dict[str, np.ndarray]:
    return {f: x[:, i] for i, f in enumerate(FEATURES)}


# --------------------------------------------------------------------------- distributions vs scipy


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 50, 100, 140, 141, 300, 476, 1000, 4762])
def test_kstwo_sf_matches_scipy(n: int) -> None:
    xs = np.concatenate([np.linspace(0.2 / n, min(0.999, 6 / math.sqrt(n)), 80), np.linspace(0.01, 0.99, 20)])
    for x in xs:
        assert kstwo_sf(n, float(x)) == pytest.approx(stats.kstwo.sf(x, n), abs=1e-9), (n, x)


def test_kolmogorov_sf_is_the_limit() -> None:
    for z in np.linspace(0.05, 4, 80):
        assert kolmogorov_sf(float(z)) == pytest.approx(stats.kstwobign.sf(z), abs=1e-12)


def test_smirnov_sf_matches_scipy() -> None:
    from scipy.special import smirnov

    for n in (3, 40, 476, 3000):
        for x in np.linspace(0.005, 0.995, 60):
            assert smirnov_sf(n, float(x)) == pytest.approx(smirnov(n, x), rel=1e-9, abs=1e-300)


def test_ks_2samp_matches_scipy_asymp() -> None:
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(60):
        ref = rng.normal(size=int(rng.integers(50, 12_000)))
        win = rng.normal(rng.uniform(0, 0.4), rng.uniform(0.8, 1.3), size=int(rng.integers(20, 3000)))
        cases.append((ref, win))
    # ties: integer-valued features (pixel intensities)
    cases += [(rng.integers(0, 17, 5000).astype(float), rng.integers(0, 17, 500).astype(float)) for _ in range(10)]
    cases.append((np.arange(10.0), np.arange(10.0) + 100))  # D = 1
    cases.append((np.ones(30), np.ones(40)))  # D = 0
    for ref, win in cases:
        ours = ks_2samp(ref, win)
        theirs = stats.ks_2samp(ref, win, method="asymp")
        assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-15)
        assert ours.p_value == pytest.approx(theirs.pvalue, abs=1e-9)


def test_chisquare_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    for k in (2, 3, 10, 51):
        for _ in range(20):
            p = rng.dirichlet(np.ones(k))
            obs = rng.multinomial(int(rng.integers(20, 5000)), rng.dirichlet(np.ones(k) * 5))
            exp = p * obs.sum()
            if np.any(exp <= 0):
                continue
            stat, pv, df = chisquare(obs, exp)
            ref = stats.chisquare(obs, exp)
            assert stat == pytest.approx(ref.statistic, rel=1e-12)
            assert pv == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)
            assert df == k - 1
    with pytest.raises(ValueError, match="sum"):
        chisquare([1, 2], [2, 2])


def test_psi_by_hand() -> None:
    ref = np.arange(100.0)  # deciles: 10 values per bin, edges 9.9, 19.8, ...
    win = np.array([0.0] * 50 + [55.0] * 50)  # half in bin 0, half in bin 5, the rest empty
    hand = 2 * (0.5 - 0.1) * math.log(0.5 / 0.1) + 8 * (PSI_EPSILON - 0.1) * math.log(PSI_EPSILON / 0.1)
    assert psi_numeric(ref, win, bins=10) == pytest.approx(hand, rel=1e-12)
    assert psi_numeric(ref, ref.copy(), bins=10) == 0.0
    # the textbook example shape: shares 0.3/0.7 -> 0.4/0.6
    assert psi([0.3, 0.7], [0.4, 0.6]) == pytest.approx(0.1 * math.log(0.4 / 0.3) - 0.1 * math.log(0.6 / 0.7))
    # categories + one "other" bin; an unseen value lands in "other"
    ref_counts = {"a": 60.0, "b": 30.0, OTHER: 10.0}
    win_counts = {"a": 30.0, "b": 30.0, "new": 40.0}
    hand = (0.3 - 0.6) * math.log(0.3 / 0.6) + 0.0 + (0.4 - 0.1) * math.log(0.4 / 0.1)
    assert psi_categorical(ref_counts, win_counts) == pytest.approx(hand, rel=1e-12)


def test_bonferroni_and_dataset_rule() -> None:
    assert bonferroni(0.05, 5) == pytest.approx(0.01)
    assert dataset_drifted(3, 5, 0.5) and not dataset_drifted(2, 5, 0.5)
    assert dataset_drifted(2, 4, 0.5) and not dataset_drifted(0, 0, 0.5)


# --------------------------------------------------------------------------- the detector


def test_no_drift_false_alarm_rate(normal_profile: dict) -> None:
    det = DriftDetector(normal_profile, MonitorSpec(window_rows=500))
    rng = np.random.default_rng(2024)
    results = [det.evaluate(columns_of(rng.normal(size=(500, 5)))) for _ in range(100)]
    alarms = sum(r.dataset_drifted for r in results)
    assert alarms / 100 <= 0.05
    # the Bonferroni level per feature is 0.01: the per-feature rate stays near it
    assert sum(r.drifted_features for r in results) / 500 <= 0.03
    r = results[0]
    assert r.features["f0"].method == "ks" and r.features["f0"].threshold == pytest.approx(0.01)
    assert r.features["f0"].psi is not None and r.features["f0"].psi < 0.1


def test_half_sigma_shift_on_three_of_five_features(normal_profile: dict) -> None:
    core = MonitorCore("app", normal_profile, {"window_rows": 500, "consecutive": 3}, clock=lambda: 1000.0)
    rng = np.random.default_rng(5)
    for _ in range(5):  # unshifted first
        core.log("v1", rows_of(rng.normal(size=(500, 5))))
    for _ in range(20):
        x = rng.normal(size=(500, 5))
        x[:, :3] += 0.5  # 0.5 sigma: the reference std is 1
        core.log("v1", rows_of(x))
    results = list(core.variants["v1"].results)
    assert len(results) == 25
    shifted = results[5:]
    assert all(r.dataset_drifted for r in shifted)
    assert all(r.features[f].drifted for r in shifted for f in ("f0", "f1", "f2"))
    assert sum(r.features[f].drifted for r in shifted for f in ("f3", "f4")) <= 2
    events = core.events_since(0)
    assert len(events) == 1
    ev = events[0]
    assert ev["kind"] == "data_drift" and ev["trigger"] is True and ev["variant"] == "v1"
    assert ev["windows"] == [r.window_id for r in shifted[:3]]
    assert ev["drifted_features"][:3] == ["f0", "f1", "f2"]
    assert core.debouncer.state()["in_flight"]["event_id"] == ev["event_id"]


def test_categorical_shift_chi_square() -> None:
    rng = np.random.default_rng(11)
    cats = np.array(["a", "b", "c", "d", "rare1", "rare2"])
    p_ref = np.array([0.4, 0.3, 0.2, 0.0985, 0.001, 0.0005])
    p_ref = p_ref / p_ref.sum()
    df = pd.DataFrame({"c": rng.choice(cats, size=20_000, p=p_ref), "x": rng.normal(size=20_000)})
    prof = make_profile(df)
    assert prof["columns"]["c"]["kind"] == "categorical"
    det = DriftDetector(prof, MonitorSpec(features=["c"]))
    same = [det.evaluate({"c": list(rng.choice(cats, size=500, p=p_ref))}) for _ in range(40)]
    assert sum(r.dataset_drifted for r in same) <= 4
    shifted_p = np.array([0.25, 0.3, 0.3, 0.1485, 0.001, 0.0005])
    shifted_p /= shifted_p.sum()
    win = list(rng.choice(cats, size=500, p=shifted_p)) + ["never-seen"] * 5
    r = det.evaluate({"c": win})
    fr = r.features["c"]
    assert fr.method == "chi2" and fr.drifted and r.dataset_drifted
    assert fr.stats["unseen_share"] == pytest.approx(5 / 505)
    # the statistic is scipy's chisquare on the pooled cells (rare1, rare2, unseen expect < 5)
    freq = prof["columns"]["c"]["frequencies"]
    total = sum(freq.values())
    big = [k for k in ("a", "b", "c", "d")]
    obs = [win.count(k) for k in big] + [505 - sum(win.count(k) for k in big)]
    exp = [505 * freq[k] / total for k in big] + [505 * (freq["rare1"] + freq["rare2"]) / total]
    assert sum(exp[:4]) + exp[4] == pytest.approx(505)
    # the pooled cell expects < 5, so it is merged into the smallest big cell ("d")
    obs_m = obs[:3] + [obs[3] + obs[4]]
    exp_m = exp[:3] + [exp[3] + exp[4]]
    ref = stats.chisquare(obs_m, exp_m)
    assert fr.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert fr.p_value == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)


def test_per_feature_overrides(normal_profile: dict) -> None:
    spec = MonitorSpec(
        overrides={
            "f0": {"method": "psi", "threshold": 0.05, "bins": 5},
            "f1": {"method": "none"},
            "f2": {"threshold": 0.5},
        }
    )
    det = DriftDetector(normal_profile, spec)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 5))
    x[:, 0] += 0.6
    r = det.evaluate(columns_of(x))
    f0, f1, f2 = r.features["f0"], r.features["f1"], r.features["f2"]
    assert f0.method == "psi" and f0.p_value is None and f0.threshold == 0.05 and f0.statistic == f0.psi
    assert f0.psi == pytest.approx(psi_numeric(det.refs["f0"].sample, x[:, 0], bins=5))
    assert f0.drifted
    assert f1.method == "none" and f1.drifted is None
    assert r.tested == 4
    # Bonferroni over the 3 p-value features (f2, f3, f4): f2's own level 0.5 / 3
    assert f2.threshold == pytest.approx(0.5 / 3) and r.features["f3"].threshold == pytest.approx(0.05 / 3)
    desc = det.describe()["features"]
    assert desc["f0"] == {**desc["f0"], "method": "psi", "threshold": 0.05, "threshold_kind": "psi >"}


def test_spec_validation(normal_profile: dict) -> None:
    with pytest.raises(ValidationError, match="extra"):
        MonitorSpec(window_rowz=5)
    with pytest.raises(ValidationError, match="window_rows, window_seconds"):
        MonitorSpec(window_rows=None)
    with pytest.raises(ValidationError):
        MonitorSpec(overrides={"f0": {"method": "wasserstein"}})
    with pytest.raises(ValueError, match="not monitored"):
        DriftDetector(normal_profile, MonitorSpec(overrides={"nope": {}}))
    with pytest.raises(ValueError, match="chi2 is for categorical"):
        DriftDetector(normal_profile, MonitorSpec(overrides={"f0": {"method": "chi2"}}))
    with pytest.raises(ValueError, match="level alpha"):
        DriftDetector(normal_profile, MonitorSpec(overrides={"f0": {"threshold": 2}}))
    with pytest.raises(ValueError, match="not in the reference profile"):
        DriftDetector(normal_profile, MonitorSpec(features=["f0", "zz"]))
    with pytest.raises(ValueError, match="columns"):
        DriftDetector({"rows": 3}, MonitorSpec())


def test_features_default_to_the_models(normal_profile: dict) -> None:
    det = DriftDetector(normal_profile, MonitorSpec(), {"features": ["f3", "f1", "missing"]})
    assert det.features == ["f3", "f1"]


# --------------------------------------------------------------------------- predictions and performance


def test_prediction_drift_classification_against_the_label_profile() -> None:
    rng = np.random.default_rng(9)
    y = rng.integers(0, 4, 20_000)
    prof = make_profile(pd.DataFrame({"f0": rng.normal(size=20_000), "label": y}))
    meta = {"task": "classification", "features": ["f0"], "label": "label", "classes": [0, 1, 2, 3]}
    det = DriftDetector(prof, MonitorSpec(), meta)
    assert det.prediction_ref is not None and det.prediction_source.startswith("label column")
    ok = det.evaluate({"f0": rng.normal(size=500)}, list(rng.integers(0, 4, 500)))
    assert ok.prediction is not None and ok.prediction.method == "chi2" and not ok.prediction.drifted
    # scores (argmax -> class), strings and floats are the same classes
    skewed = [[0.1, 0.7, 0.1, 0.1]] * 300 + ["0", 2.0, 3] * 66 + [0, 1]
    r = det.evaluate({"f0": rng.normal(size=500)}, skewed)
    assert r.prediction.n == 500 and r.prediction.drifted and r.prediction_drifted
    assert r.drifted and not r.dataset_drifted  # prediction drift alone counts (trigger_on default)
    det2 = DriftDetector(prof, MonitorSpec(trigger_on=["data"]), meta)
    assert not det2.evaluate({"f0": rng.normal(size=500)}, skewed).drifted


def test_prediction_drift_regression_and_explicit_reference() -> None:
    rng = np.random.default_rng(4)
    prof = make_profile(pd.DataFrame({"f0": rng.normal(size=5000), "y": rng.normal(10, 2, 5000)}))
    meta = {"task": "regression", "features": ["f0"], "label": "y"}
    det = DriftDetector(prof, MonitorSpec(), meta)
    assert det.prediction_ref.kind == "numeric"
    r = det.evaluate({"f0": rng.normal(size=400)}, list(rng.normal(11, 2, 400)))
    assert r.prediction.method == "ks" and r.prediction.drifted
    # reference predictions win over the label
    det = DriftDetector(prof, MonitorSpec(), meta, reference_predictions=list(rng.normal(11, 2, 3000)))
    assert det.prediction_source == "reference predictions"
    assert not det.evaluate({"f0": rng.normal(size=400)}, list(rng.normal(11, 2, 400))).prediction.drifted


def test_performance_drift(normal_profile: dict) -> None:
    meta = {"task": "classification", "features": FEATURES, "classes": ["a", "b"], "metrics": {"val_accuracy": 0.9}}
    det = DriftDetector(normal_profile, MonitorSpec(), meta)
    assert (det.performance_metric, det.performance_reference) == ("accuracy", 0.9)
    det = DriftDetector(normal_profile, MonitorSpec(), meta, reference_metrics={"accuracy": 0.95})
    assert det.performance_reference == 0.95 and det.performance_source.startswith("evaluation")

    def window(correct: int, n: int = 200) -> PerformanceWindow:
        w = PerformanceWindow()
        for i in range(n):
            assert w.add("a", "a" if i < correct else "b", "classification", 0.0)
        return w

    ok = det.evaluate_performance(window(184), window_id=1, variant="v1", closed_at=0.0)  # 0.92: drop 0.03
    assert ok.value == pytest.approx(0.92) and ok.change == pytest.approx(0.03) and ok.drifted is False
    bad = det.evaluate_performance(window(170), window_id=2, variant="v1", closed_at=0.0)  # 0.85: drop 0.10
    assert bad.drifted is True and bad.threshold == 0.05
    # regression: RMSE against the reference, relative increase
    rdet = DriftDetector(
        normal_profile, MonitorSpec(performance={"reference": 1.0}), {"task": "regression", "features": FEATURES}
    )
    w = PerformanceWindow()
    for _ in range(100):
        w.add(1.0, 2.3, "regression", 0.0)
    res = rdet.evaluate_performance(w, window_id=3, variant="v1", closed_at=0.0)
    assert res.metric == "rmse" and res.value == pytest.approx(1.3) and res.change == pytest.approx(0.3) and res.drifted
    assert not w.add(None, 1.0, "regression", 0.0)


def test_performance_drift_through_labels(normal_profile: dict) -> None:
    meta = {"task": "classification", "features": FEATURES, "classes": [0, 1], "metrics": {"val_accuracy": 0.95}}
    spec = {"window_rows": 100, "performance": {"window_labels": 50}, "consecutive": 2}
    core = MonitorCore("app", normal_profile, spec, meta, clock=lambda: 5.0)
    rng = np.random.default_rng(0)
    for w in range(4):
        ids = [f"r{w}-{i}" for i in range(50)]
        core.log("v2", rows_of(rng.normal(size=(50, 5))), [1] * 50, ids)
        acc = 48 if w < 2 else 35
        assert core.labels([(rid, 1 if i < acc else 0) for i, rid in enumerate(ids)]) == 50
    perf = list(core.variants["v2"].perf_results)
    assert [p.drifted for p in perf] == [False, False, True, True]
    events = [e for e in core.events_since(0) if e["kind"] == "performance_drift"]
    assert len(events) == 1 and events[0]["performance"]["value"] == pytest.approx(0.7)
    assert core.label("r0-1", 1) is False  # already used
    assert core.counters["labels_unknown"] == 1
    # a request of several rows: one id for all, logged but never matched to a label
    assert core.log("v2", rows_of(rng.normal(size=(3, 5))), [1, 1, 0], ["multi"] * 3) == 3
    assert "multi" not in core.pending and core.label("multi", 1) is False


def test_labels_are_matched_to_the_models_classes(normal_profile: dict) -> None:
    """``/feedback``'s ``label`` (never its ``outcome``) scores the logged prediction: a label
    naming a class ("1", 1.0, true for class 1) is that class; one naming no class is a
    wrong prediction, counted in ``labels_outside_classes``; per variant, ``labels``."""
    meta = {"task": "classification", "features": FEATURES, "classes": [0, 1], "metrics": {"val_accuracy": 0.9}}
    core = MonitorCore("app", normal_profile, {"performance": {"window_labels": 10}}, meta, clock=lambda: 1.0)
    rng = np.random.default_rng(3)
    ids = [f"q{i}" for i in range(10)]
    core.log("v1", rows_of(rng.normal(size=(10, 5))), [1, 1, 1, 0, 0, 1, 1, 1, 1, 1], ids)
    labels = ["1", 1.0, True, False, "0", np.int64(1), 1, 1, 1]
    assert [core.label(rid, y) for rid, y in zip(ids, labels, strict=False)] == [True] * 9
    assert core.status()["variants"]["v1"]["performance"]["labels"] == 9
    assert core.counters["labels_outside_classes"] == 0
    assert core.label("q9", "yes") is True  # no class of the model: scored, as a wrong prediction
    assert core.counters["labels_outside_classes"] == 1 and core.counters["labels_matched"] == 10
    (perf,) = core.variants["v1"].perf_results
    assert perf.value == pytest.approx(0.9)
    st = core.status()["variants"]["v1"]["performance"]
    assert st["labels"] == 10 and st["labels_in_window"] == 0 and st["windows"] == 1


# --------------------------------------------------------------------------- debouncing


def test_debouncer_rules() -> None:
    d = Debouncer(consecutive=3, reset_windows=2, in_flight_timeout_s=100)
    seq = [True, True, False, True, True, True, True, True]
    fired = [d.observe("v1/data", x, i, now=0.0) for i, x in enumerate(seq)]
    got = [(i, f.trigger) for i, f in enumerate(fired) if f is not None]
    assert got == [(5, True)]  # the streak restarted after the clean window at 2
    assert fired[5].windows == (3, 4, 5)
    d.claim(1, "v1/data", now=0.0)
    assert d.observe("v1/data", None, 8, now=0.0) is None  # not judged: no change
    # one clean window does not end the episode; two do
    for i, x in enumerate([False, True, True, True], start=9):
        assert d.observe("v1/data", x, i, now=1.0) is None
    for i, x in enumerate([False, False, True, True, True], start=13):
        f = d.observe("v1/data", x, i, now=2.0)
    assert f is not None and f.trigger is False and "in flight" in f.note  # not triggered twice
    assert d.state()["suppressed"] == 1
    # another variant drifting while in flight: an event, no trigger
    for i in range(3):
        g = d.observe("v2/data", True, 100 + i, now=3.0)
    assert g is not None and not g.trigger
    d.end_retraining(ok=True, now=4.0)
    assert d.state()["in_flight"] is None and d.state()["episodes"] == {}
    for i in range(3):
        h = d.observe("v2/data", True, 200 + i, now=5.0)
    assert h is not None and h.trigger
    # a claim nobody ends lapses
    d.claim(9, "v2/data", now=5.0)
    assert d.state(now=50.0)["in_flight"] is not None
    assert d.state(now=106.0)["in_flight"] is None
    d.begin_retraining(10, now=200.0, note="run x")
    assert d.state()["in_flight"]["started"] is True


# --------------------------------------------------------------------------- buffers, sampling, the core


def test_window_buffer_reservoir_is_bounded_and_uniform() -> None:
    b = WindowBuffer(["x"], ["c"], capacity=100, seed=1)
    for i in range(10_000):
        b.add({"x": float(i), "c": i % 3}, i, at=0.0)
    assert b.size == 100 and b.seen == 10_000
    assert b.num.shape == (100, 1) and b.nbytes() < 10_000
    xs = b.columns()["x"]
    assert 3000 < float(np.mean(xs)) < 7000  # a uniform sample of 0..9999, not the first 100
    assert set(b.columns()["c"]) <= {"0", "1", "2"}
    b.reset()
    assert b.size == 0 and b.opened_at is None


def test_keep_request_is_deterministic() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    kept = [keep_request(r, 0.1, "app") for r in ids]
    assert 0.08 < sum(kept) / len(ids) < 0.12
    assert kept == [keep_request(r, 0.1, "app") for r in ids]
    assert all(keep_request(r, 1.0) for r in ids[:10]) and not any(keep_request(r, 0.0) for r in ids[:10])


def test_core_time_windows_sampling_and_memory(normal_profile: dict) -> None:
    now = [0.0]
    spec = {
        "window_rows": None,
        "window_seconds": 60,
        "min_window_rows": 50,
        "reservoir_size": 200,
        "sample_rate": 0.5,
        "history_windows": 3,
        "max_pending_labels": 100,
        "max_variants": 2,
    }
    core = MonitorCore("app", normal_profile, spec, {"features": FEATURES, "classes": [0, 1]}, clock=lambda: now[0])
    rng = np.random.default_rng(8)
    for step in range(40):
        now[0] = step * 10.0
        ids = [f"s{step}-{i}" for i in range(300)]
        kept = core.log("v1", rows_of(rng.normal(size=(300, 5))), [0] * 300, ids)
        assert kept == sum(keep_request(r, 0.5, "app") for r in ids)
        mem = core.memory()
        assert mem["buffer_rows"] <= 200 and mem["pending_labels"] <= 100 and mem["windows_kept"] <= 3
    v = core.variants["v1"]
    assert v.windows >= 6  # one per 60 s of the 400 s
    assert all(r.rows > r.rows_used == 200 for r in v.results)  # a 200-row reservoir of each window
    # not sampled vs unknown request ids
    dropped = next(r for r in (f"s0-{i}" for i in range(300)) if not keep_request(r, 0.5, "app"))
    assert core.label(dropped, 0) is False and core.counters["labels_not_sampled"] == 1
    # a third variant evicts the least recently logged one
    core.log("v2", rows_of(rng.normal(size=(3, 5))))
    core.log("v3", rows_of(rng.normal(size=(3, 5))))
    assert list(core.variants) == ["v2", "v3"] and core.counters["variants_evicted"] == 1
    with pytest.raises(ValueError, match="predictions"):
        core.log("v1", rows_of(rng.normal(size=(3, 5))), [1])
    st = core.status()
    json.dumps(st, allow_nan=False)
    assert st["memory"]["variants"] == 2 and st["spec"]["window_seconds"] == 60


def test_rows_the_router_sampled_are_not_sampled_again(normal_profile: dict) -> None:
    """The serving router samples once (a keyed hash of the ids it issues) and says so: the
    monitor keeps every such row, so a 0.2 sample rate gives 0.2 of the traffic, not 0.04."""
    from raypipe.serving.auth import RequestIds

    core = MonitorCore("app", normal_profile, {"window_rows": 100_000, "sample_rate": 0.2}, clock=lambda: 1.0)
    ids = RequestIds("app", b"k" * 32)
    rng = np.random.default_rng(3)
    traffic = [ids.issue() for _ in range(10_000)]
    sent = [r for r in traffic if ids.sample(r, 0.2)]  # what the router sends
    kept = core.log("v1", rows_of(rng.normal(size=(len(sent), 5))), [0] * len(sent), sent, sampled=True)
    assert kept == len(sent) and 0.18 < kept / len(traffic) < 0.22
    # a label of a request the router did not sample: counted as such, not as unknown
    dropped = next(r for r in traffic if not ids.sample(r, 0.2))
    assert core.label(dropped, 0, sampled=False) is False and core.counters["labels_not_sampled"] == 1
    assert core.label(ids.issue(), 0, sampled=True) is False and core.counters["labels_unknown"] == 1
    assert core.label(sent[0], 0, sampled=True) is True and core.counters["labels_matched"] == 1


def test_status_shape(normal_profile: dict) -> None:
    core = MonitorCore("app", normal_profile, {"window_rows": 200}, clock=lambda: 1.0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 5))
    x[:, 0] += 1.0
    core.log("v1", rows_of(x))
    core.log("v1", rows_of(rng.normal(size=(150, 5))))
    assert core.flush() and core.flush() == []  # the 150-row window closes (>= min_window_rows)
    st = core.status()
    json.dumps(st, allow_nan=False)
    v = st["variants"]["v1"]
    assert v["windows"] == 4 and v["recent_windows"] == 4
    f0 = v["features"]["f0"]
    assert f0["method"] == "ks" and f0["drift_count"] == 3 and f0["drifted"] is False
    assert set(f0) >= {"statistic", "p_value", "threshold", "psi", "n", "stats"}
    assert st["reference"]["features"]["f0"]["threshold_kind"] == "p <"
    assert v["last_window"]["rows"] == 150
    assert [w["window_id"] for w in core.windows("v1", since_id=2)] == [3, 4]
    # each recent window's per-feature statistic and threshold (the UI's drift chart over time)
    brief = [w["features"]["f0"] for w in v["windows_brief"]]
    assert [w["drifted"] for w in brief] == [True, True, True, False]
    assert brief[-1]["statistic"] == f0["statistic"] and brief[-1]["threshold"] == f0["threshold"]


def test_dates_drift_by_ks_on_days_and_unseen_categories_are_evidence() -> None:
    """A date feature is tested with KS on its days since 1970 (the encoding models use);
    live values arrive as the server parsed them (date objects) or as ISO strings.  A
    window made mostly of category levels the reference never saw drifts by chi-square."""
    import datetime as dt

    rng = np.random.default_rng(21)
    n = 20_000
    base = dt.date(2023, 1, 1)
    ref_days = rng.integers(0, 365, n)
    df = pd.DataFrame(
        {
            "applied": pd.Series([base + dt.timedelta(days=int(d)) for d in ref_days], dtype=object),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    prof = make_profile(df)
    assert prof["columns"]["applied"]["kind"] == "datetime"
    core = MonitorCore("app", prof, {"window_rows": 400, "consecutive": 1}, clock=lambda: 1000.0)
    assert core._detector("v1").refs["applied"].encoding == "days"

    def rows(days: np.ndarray, regions: np.ndarray, iso: bool) -> list[dict]:
        out = []
        for d, r in zip(days.tolist(), regions.tolist(), strict=True):
            when = base + dt.timedelta(days=int(d))
            out.append({"applied": when.isoformat() if iso else when, "region": r})
        return out

    same = rows(rng.integers(0, 365, 400), rng.choice(["north", "south", "east", "west"], 400), iso=True)
    core.log("v1", same)
    later = rows(rng.integers(200, 565, 400), rng.choice(["north", "south", "east", "west"], 400), iso=False)
    core.log("v1", later)
    first, second = core.variants["v1"].results
    assert first.features["applied"].method == "ks" and not first.features["applied"].drifted
    assert first.features["applied"].n == 400 and first.features["applied"].nulls == 0
    assert second.features["applied"].drifted and not second.features["region"].drifted
    x_ref = np.asarray(prof["columns"]["applied"]["sample"], dtype=float)  # days of the reference sample
    assert x_ref.min() >= (base - dt.date(1970, 1, 1)).days
    assert second.features["applied"].statistic == pytest.approx(
        stats.ks_2samp(x_ref, np.array([to_day(r["applied"]) for r in later])).statistic, rel=1e-12
    )
    unseen = rows(rng.integers(0, 365, 400), rng.choice(["north", "mars", "venus"], 400, p=[0.2, 0.4, 0.4]), iso=True)
    core.log("v1", unseen)
    third = core.variants["v1"].results[-1]
    fr = third.features["region"]
    assert fr.method == "chi2" and fr.drifted and fr.stats["unseen_share"] > 0.7
