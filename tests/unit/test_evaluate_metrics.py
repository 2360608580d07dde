"""The evaluate kind's streaming metrics against scikit-learn, and its gate messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from raypipe.exceptions import StageError
from raypipe.stages.evaluate import EvaluateParams, EvaluateStage, _Scores
from raypipe.store.models import ModelPackage


def _scores(tmp_path, task: str) -> _Scores:
    pkg = ModelPackage.create(tmp_path / "m", {"task": task, "label": "y", "spec": None})
    return _Scores(pkg, "tests.unit.eval_funcs:column_pred")


def test_classification_metrics_match_sklearn_over_batches(tmp_path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 1000)
    pred = np.where(rng.random(1000) < 0.7, y, rng.integers(0, 4, 1000))
    s = _scores(tmp_path, "classification")
    for i in range(0, 1000, 137):  # uneven batches
        s.add(pd.DataFrame({"y": y[i : i + 137], "pred": pred[i : i + 137]}))
    got = s.result(None)
    assert got["rows"] == 1000
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert got["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"), abs=1e-6)
    assert got["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"), abs=1e-6)


def test_regression_metrics_match_sklearn(tmp_path) -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=500)
    pred = y + rng.normal(scale=0.3, size=500)
    s = _scores(tmp_path, "regression")
    s.add(pd.DataFrame({"y": y[:200], "pred": pred[:200]}))
    s.add(pd.DataFrame({"y": y[200:], "pred": pred[200:]}))
    got = s.result(["mse", "r2", "mae"])
    assert set(got) == {"task", "rows", "mse", "r2", "mae"}
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, pred), abs=1e-6)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), abs=1e-6)
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred), abs=1e-5)


def test_gate_messages_name_metric_value_threshold_and_miss() -> None:
    stage = EvaluateStage(EvaluateParams(gate={"min": {"accuracy": 0.9}, "max": {"mse": 0.1}}))
    checks, missed = stage._gate({"accuracy": 0.85, "mse": 0.25}, None)
    assert missed == ["accuracy 0.8500 < min 0.9 (missed by 0.0500)", "mse 0.2500 > max 0.1 (missed by 0.1500)"]
    assert [c["passed"] for c in checks] == [False, False]
    lower = EvaluateStage(EvaluateParams(gate={"beat": {"model": "m", "metric": "log_loss", "margin": 0.05}}))
    _, missed = lower._gate({"log_loss": 0.30}, {"log_loss": 0.32})
    assert missed and "needs below 0.2700" in missed[0]
    _, ok = lower._gate({"log_loss": 0.20}, {"log_loss": 0.32})
    assert ok == []
    with pytest.raises(StageError, match="'r2' was not computed"):
        EvaluateStage(EvaluateParams(gate={"min": {"r2": 0.5}}))._gate({"accuracy": 1.0, "task": "classification"}, None)


def test_planning_checks_inputs_and_metric_names() -> None:
    stage = EvaluateStage(EvaluateParams(gate={"min": {"acc": 0.9}}))
    issues = stage.check(["model"])
    assert any("takes inputs `model` and `data`" in m for _, m in issues)
    assert any(loc == ("gate", "min", "acc") for loc, _ in issues)
