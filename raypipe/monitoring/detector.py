"""The drift detector: windows of live traffic against the training data's profile
(pure: numpy and math; no Ray, no scipy).

A window is the sampled rows one variant served, with the predictions it made; the
reference is per feature a :class:`~raypipe.monitoring.reference.FeatureReference`.

**Feature drift**: each feature is tested by its drift test (the spec's
``numeric_method`` / ``categorical_method``, or its override's ``method``; see
:mod:`raypipe.monitoring.drift_tests`), and its PSI is reported whatever the test.  A
p-value test drifts when ``p < alpha_f / m`` (Bonferroni over the ``m`` features tested
with a p-value in the window; ``alpha_f`` defaults to 0.05); a threshold test (PSI) when
its statistic exceeds the feature's threshold.  **Dataset drift**: at least
``drift_share`` (0.5) of the tested features drifted (Evidently's rule).  Every method and
threshold can be set per feature.

**Prediction drift**: the window's predictions against a reference distribution: class
labels as a categorical (chi-square) for classification, values as a numeric (KS) for
regression; at ``prediction.alpha`` (no correction: one test).  The reference is, in
order: predictions given explicitly (e.g. the model's predictions on its test set), else
the label column of the profile (``model_meta["label"]``): the profile keeps no joint
rows (each column's sample is sorted on its own), so the model cannot be run on the
reference; the label distribution is the proxy (a biased model shows a constant offset
from it, so give reference predictions when one is at hand).

**Performance drift** (labels arriving through ``/feedback``): windows of
``performance.window_labels`` labelled predictions; classification: accuracy, drifted
when ``reference - accuracy > max_drop`` (absolute, default 0.05); regression: RMSE or
MAE, drifted when ``value > reference * (1 + max_increase)`` (default 0.2).  The
reference is ``performance.reference``, else the evaluation metrics given to the
monitor, else the model package's last metrics (``val_accuracy`` before ``accuracy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from raypipe._json import json_safe
from raypipe.models.classes import class_key, prediction_value
from raypipe.models.preprocess import category_key
from raypipe.monitoring.drift_tests.base import ColumnKind, DriftTest, FeatureWindow
from raypipe.monitoring.drift_tests.registry import NOT_MONITORED, get_drift_test
from raypipe.monitoring.reference import PROFILE_KINDS, FeatureReference, feature_reference, prediction_reference
from raypipe.monitoring.results import FeatureResult, PerformanceResult, WindowResult
from raypipe.monitoring.spec import FeatureOverride, MonitorSpec
from raypipe.monitoring.statistics import (
    bin_shares,
    bonferroni,
    dataset_drifted,
    psi,
    psi_categorical,
    psi_numeric,
)
from raypipe.monitoring.values import to_float
from raypipe.monitoring.windows import PerformanceWindow

__all__ = ["PREDICTION_TESTS", "DriftDetector"]

#: The drift test of predictions, by the kind of their reference (p-value tests).
PREDICTION_TESTS: dict[ColumnKind, str] = {"categorical": "chi2", "numeric": "ks"}


class DriftDetector:
    """Compares windows with a reference profile under a :class:`MonitorSpec`."""

    def __init__(
        self,
        profile: Mapping[str, Any],
        spec: MonitorSpec | None = None,
        model_meta: Mapping[str, Any] | None = None,
        *,
        reference_predictions: Sequence[Any] | None = None,
        reference_metrics: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec or MonitorSpec()
        self.meta = dict(model_meta or {})
        cols = profile.get("columns") if isinstance(profile, Mapping) else None
        if not isinstance(cols, Mapping):
            raise ValueError("the reference profile has no 'columns' (expected a data.profile output)")
        self.profile_rows = profile.get("rows")
        wanted = self.spec.features
        if wanted is None:
            model_features = self.meta.get("features")
            label = self.meta.get("label")
            if model_features:
                wanted = [f for f in model_features if f in cols]
            else:
                wanted = [c for c in cols if c != label and cols[c].get("kind") in PROFILE_KINDS]
        missing = [f for f in wanted if f not in cols]
        if missing:
            raise ValueError(f"features not in the reference profile: {', '.join(missing)}")
        unknown = [f for f in self.spec.overrides if f not in wanted]
        if unknown:
            raise ValueError(f"overrides name features that are not monitored: {', '.join(unknown)}")
        self.refs: dict[str, FeatureReference] = {}
        #: Per feature: its method (a drift test's name, or ``none``), its test and what the
        #: test prepared from the reference (monitored features only).
        self.methods: dict[str, str] = {}
        self.tests: dict[str, DriftTest] = {}
        self.prepared: dict[str, Any] = {}
        for f in wanted:
            self._add_feature(f, cols[f])
        self.features = list(self.refs)
        self.task = self._task()
        self.classes = self.meta.get("classes")
        self.prediction_ref, self.prediction_source = self._prediction_reference(cols, reference_predictions)
        self.prediction_test: DriftTest | None = None
        self.prediction_prepared: Any = None
        if self.prediction_ref is not None:
            self.prediction_test = get_drift_test(PREDICTION_TESTS[self.prediction_ref.kind])
            self.prediction_prepared = self.prediction_test.reference(self.prediction_ref)
        self.performance_metric, self.performance_reference, self.performance_source = self._performance_reference(
            reference_metrics
        )

    # ------------------------------------------------------------------ setup
    def _add_feature(self, f: str, col: Mapping[str, Any]) -> None:
        o = self.spec.overrides.get(f, FeatureOverride())
        ref = feature_reference(f, col, o.bins or self.spec.psi_bins)  # a ValueError for other kinds
        method = o.method or (self.spec.numeric_method if ref.kind == "numeric" else self.spec.categorical_method)
        if method != NOT_MONITORED:
            test = get_drift_test(method)
            if not test.applies_to(ref.kind):
                raise ValueError(
                    f"overrides.{f}.method: {method} is for {' and '.join(test.kinds)} features; "
                    f"{f} is {col.get('kind')}"
                )
            if test.decision == "p_value" and o.threshold is not None and o.threshold >= 1:
                raise ValueError(
                    f"overrides.{f}.threshold: {method} takes a level alpha in (0, 1), got {o.threshold:g}"
                )
            self.tests[f] = test
            self.prepared[f] = test.reference(ref) if ref.problem is None else None
        self.refs[f] = ref
        self.methods[f] = method

    def _task(self) -> str | None:
        task = self.meta.get("task")
        if task in ("classification", "regression"):
            return task
        if self.meta.get("classes"):
            return "classification"
        return None

    def _prediction_reference(
        self, cols: Mapping[str, Any], given: Sequence[Any] | None
    ) -> tuple[FeatureReference | None, str | None]:
        if not self.spec.prediction.enabled or self.task is None:
            return None, None
        label = self.meta.get("label")
        return prediction_reference(cols, self.task, self.meta.get("classes"), label, given, self.spec.psi_bins)

    def _performance_reference(self, given: Mapping[str, Any] | None) -> tuple[str | None, float | None, str | None]:
        p = self.spec.performance
        if not p.enabled or self.task is None:
            return None, None, None
        metric = p.metric
        if metric == "auto":
            metric = "accuracy" if self.task == "classification" else "rmse"
        if p.reference is not None:
            return metric, float(p.reference), "spec"
        if given:
            for key in (metric, f"test_{metric}"):
                v = given.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    return metric, float(v), f"evaluation metrics ({key})"
        meta_metrics = self.meta.get("metrics") or {}
        for key in (f"test_{metric}", f"val_{metric}", metric):
            v = meta_metrics.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                return metric, float(v), f"model metrics ({key})"
        return metric, None, None

    # ------------------------------------------------------------------ describe

    # ------------------------------------------------------------------ describe
    def describe(self) -> dict[str, Any]:
        """Per feature: kind, method, thresholds and the reference's summary."""
        s = self.spec
        feats = {}
        for f, ref in self.refs.items():
            o = s.overrides.get(f, FeatureOverride())
            test = self.tests.get(f)
            thr = o.threshold if o.threshold is not None else (test.threshold(s) if test is not None else s.alpha)
            feats[f] = {
                "kind": ref.kind,
                "method": self.methods[f],
                "threshold": thr,
                "threshold_kind": test.threshold_kind() if test is not None else None,
                "reference": json_safe(ref.summary),
                "problem": ref.problem,
            }
        return {
            "profile_rows": self.profile_rows,
            "task": self.task,
            "features": feats,
            "prediction": {
                "kind": self.prediction_ref.kind if self.prediction_ref else None,
                "reference": self.prediction_source,
                "alpha": s.prediction.alpha,
            },
            "performance": {
                "metric": self.performance_metric,
                "reference": self.performance_reference,
                "source": self.performance_source,
                "max_drop": s.performance.max_drop,
                "max_increase": s.performance.max_increase,
                "window_labels": s.performance.window_labels,
            },
        }

    # ------------------------------------------------------------------ evaluate
    def _testable(self, ref: FeatureReference, res: FeatureResult) -> bool:
        if ref.problem:
            res.note = ref.problem
            return False
        if res.n < self.spec.min_feature_rows:
            res.note = f"insufficient data: {res.n} values (needs {self.spec.min_feature_rows})"
            return False
        return True

    def _numeric_window(
        self, ref: FeatureReference, values: np.ndarray, method: str, bins: int
    ) -> tuple[FeatureResult, FeatureWindow | None]:
        x = np.asarray(values, dtype=np.float64)
        nulls = int(np.sum(np.isnan(x)))
        x = x[np.isfinite(x)]
        res = FeatureResult(ref.name, "numeric", method, None, None, None, None, n=len(x), nulls=nulls)
        if len(x):
            res.stats = {"mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)) if len(x) > 1 else None}
        if not self._testable(ref, res):
            return res, None
        assert ref.sample is not None
        if ref.psi_edges is not None and ref.psi_shares is not None and bins == self.spec.psi_bins:
            res.psi = psi(ref.psi_shares, bin_shares(x, ref.psi_edges))
        else:
            res.psi = psi_numeric(ref.sample, x, bins)
        return res, FeatureWindow("numeric", len(x), res.psi, values=x)

    def _categorical_window(
        self,
        ref: FeatureReference,
        values: Sequence[Any] | np.ndarray,
        method: str,
        keyer: Callable[[Any], str | None],
    ) -> tuple[FeatureResult, FeatureWindow | None]:
        counts: dict[str, int] = {}
        nulls = 0
        for v in values:
            k = keyer(v)
            if k is None:
                nulls += 1
            else:
                counts[k] = counts.get(k, 0) + 1
        n = sum(counts.values())
        res = FeatureResult(ref.name, "categorical", method, None, None, None, None, n=n, nulls=nulls)
        if n:
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
            res.stats = {"top": {k: c / n for k, c in top}, "distinct": len(counts)}
            if ref.counts is not None:
                unseen = sum(c for k, c in counts.items() if k not in ref.counts)
                res.stats["unseen_share"] = unseen / n
        if not self._testable(ref, res):
            return res, None
        assert ref.counts is not None
        res.psi = psi_categorical(ref.counts, {k: float(c) for k, c in counts.items()})
        return res, FeatureWindow("categorical", n, res.psi, counts=counts)

    def _test(
        self,
        test: DriftTest,
        prepared: Any,
        ref: FeatureReference,
        values: Sequence[Any] | np.ndarray,
        *,
        bins: int,
        keyer: Callable[[Any], str | None],
    ) -> FeatureResult:
        """One feature's result: its window's statistics and PSI, and the test's outcome
        (undecided: the threshold and verdict are set by the caller)."""
        if ref.kind == "numeric":
            res, window = self._numeric_window(ref, np.asarray(values, dtype=np.float64), test.name, bins)
        else:
            res, window = self._categorical_window(ref, values, test.name, keyer)
        if window is not None:
            out = test.test(prepared, window)
            res.statistic, res.p_value = out.statistic, out.p_value
            res.stats.update(out.stats)
            if out.note is not None:
                res.note = out.note
        return res

    def evaluate(
        self,
        columns: Mapping[str, Sequence[Any] | np.ndarray],
        predictions: Sequence[Any] | None = None,
        *,
        window_id: int = 0,
        variant: str = "",
        opened_at: float = 0.0,
        closed_at: float = 0.0,
        rows: int | None = None,
    ) -> WindowResult:
        """Test one window: ``columns`` maps each feature to its values (numeric: floats with
        NaN for nulls; categorical: keys as :func:`category_key` gives, None for nulls)."""
        s = self.spec
        results: dict[str, FeatureResult] = {}
        n_rows = 0
        for f in self.features:
            ref = self.refs[f]
            values = columns.get(f, [])
            n_rows = max(n_rows, len(values))
            test = self.tests.get(f)
            if test is None:
                results[f] = FeatureResult(
                    f, ref.kind, NOT_MONITORED, None, None, None, None, n=len(values), note="not monitored"
                )
                continue
            bins = s.overrides.get(f, FeatureOverride()).bins or s.psi_bins
            results[f] = self._test(test, self.prepared[f], ref, values, bins=bins, keyer=category_key)
        # decide: Bonferroni over the features tested with a p-value
        p_tested = [f for f, r in results.items() if r.p_value is not None and self.tests[f].decision == "p_value"]
        m = len(p_tested) if s.correction == "bonferroni" else 1
        for f, r in results.items():
            if r.statistic is None:
                continue
            o = s.overrides.get(f, FeatureOverride())
            test = self.tests[f]
            level = o.threshold if o.threshold is not None else test.threshold(s)
            r.threshold = bonferroni(level, m) if test.decision == "p_value" else level
            r.drifted = test.drifted(r.statistic, r.p_value, r.threshold)
        tested = [r for r in results.values() if r.drifted is not None]
        n_drifted = sum(1 for r in tested if r.drifted)
        share = n_drifted / len(tested) if tested else None
        ds = dataset_drifted(n_drifted, len(tested), s.drift_share)
        pred = self.evaluate_predictions(predictions) if predictions is not None else None
        drifted = ("data" in s.trigger_on and ds) or (
            "prediction" in s.trigger_on and pred is not None and bool(pred.drifted)
        )
        return WindowResult(
            window_id=window_id,
            variant=variant,
            opened_at=opened_at,
            closed_at=closed_at,
            rows=rows if rows is not None else n_rows,
            rows_used=n_rows,
            features=results,
            tested=len(tested),
            drifted_features=n_drifted,
            drift_share=share,
            dataset_drifted=ds,
            prediction=pred,
            drifted=bool(drifted),
            correction=s.correction,
            alpha=s.alpha,
        )

    def evaluate_predictions(self, predictions: Sequence[Any]) -> FeatureResult | None:
        """The prediction-drift test of one window's predictions (None: no reference)."""
        ref, test = self.prediction_ref, self.prediction_test
        if ref is None or test is None:
            return None
        values = [prediction_value(p, self.classes) for p in predictions]
        if ref.kind == "numeric":
            values = [to_float(v) for v in values]
        res = self._test(test, self.prediction_prepared, ref, values, bins=self.spec.psi_bins, keyer=class_key)
        if res.p_value is not None:
            res.threshold = self.spec.prediction.alpha
            res.drifted = bool(res.p_value < res.threshold)
        return res

    def evaluate_performance(
        self, window: PerformanceWindow, *, window_id: int, variant: str, closed_at: float
    ) -> PerformanceResult:
        """The performance result of a window of labelled predictions."""
        p = self.spec.performance
        metric = self.performance_metric or "accuracy"
        value = window.value(metric)
        ref = self.performance_reference
        res = PerformanceResult(
            window_id=window_id,
            variant=variant,
            metric=metric,
            value=value,
            reference=ref,
            change=None,
            threshold=p.max_drop if metric == "accuracy" else p.max_increase,
            n=window.n,
            drifted=None,
            closed_at=closed_at,
        )
        if value is None:
            res.note = "no labelled predictions"
        elif ref is None:
            res.note = "no reference metric (set performance.reference)"
        elif metric == "accuracy":
            res.change = ref - value
            res.drifted = bool(res.change > p.max_drop)
        elif ref > 0:
            res.change = value / ref - 1.0
            res.drifted = bool(res.change > p.max_increase)
        else:
            res.change = math.inf if value > 0 else 0.0
            res.drifted = bool(value > 0)
        return res
