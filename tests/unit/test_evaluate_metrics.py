"""The evaluate kind's streaming metrics against scikit-learn, and its gate messages."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.utils.multiclass import unique_labels

from raypipe.exceptions import DataError, GateFailed, StageError
from raypipe.models.metrics import ClassificationMetrics, RegressionMetrics
from raypipe.stages.evaluate import EvaluateParams, EvaluateStage, _Scores
from raypipe.store.models import ModelPackage
from tests.unit import eval_funcs


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
        EvaluateStage(EvaluateParams(gate={"min": {"r2": 0.5}}))._gate(
            {"accuracy": 1.0, "task": "classification"}, None
        )


def test_planning_checks_inputs_and_metric_names() -> None:
    stage = EvaluateStage(EvaluateParams(gate={"min": {"acc": 0.9}}))
    issues = stage.check(["model"])
    assert any("takes inputs `model` and `data`" in m for _, m in issues)
    assert any(loc == ("gate", "min", "acc") for loc, _ in issues)


# ------------------------------------------------------------------ exact agreement with sklearn
# Every reported metric equals scikit-learn's to 1e-9: classification and regression accumulators are
# fed random uneven batches, and also built from split accumulators merged in a random order.

TOL = 1e-9


def _close(got: float | None, want: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=TOL, abs_tol=TOL)


def _feed_and_merge(make, update, cuts: list[int], order: list[int], n: int):
    """(one accumulator fed every batch in turn, one merged from per-batch accumulators)."""
    bounds = [0, *sorted(cuts), n]
    pieces = list(itertools.pairwise(bounds))
    streamed = make()
    parts = []
    for lo, hi in pieces:
        update(streamed, lo, hi)
        part = make()
        update(part, lo, hi)
        parts.append(part)
    while len(parts) > 1:  # merge pairs picked by `order`, so the merge tree varies
        i = order[len(parts) % len(order)] % len(parts) if order else 0
        other = parts.pop(i)
        j = (i + 1) % len(parts) if i < len(parts) else 0
        parts[j].merge(other)
    return streamed, parts[0]


@st.composite
def _classification_case(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["int", "str", "bool"]))
    if kind == "bool":
        classes: list[Any] = [False, True]
        extras: list[Any] = []
    else:
        pool = st.integers(-5, 60) if kind == "int" else st.text(alphabet="abXY_é", min_size=1, max_size=3)
        labels = draw(st.lists(pool, min_size=3, max_size=7, unique=True))
        k = draw(st.integers(2, min(5, len(labels) - 1)))
        classes, extras = sorted(labels[:k]), labels[k:]
    n = draw(st.integers(1, 80))
    present = draw(st.lists(st.sampled_from(classes), min_size=1, max_size=len(classes), unique=True))
    if draw(st.booleans()):  # heavy imbalance: one class and a handful of others
        minority = draw(st.lists(st.sampled_from(present), max_size=min(3, n)))
        y = [present[0]] * (n - len(minority)) + minority
        y = draw(st.permutations(y))
    else:
        y = draw(st.lists(st.sampled_from(present), min_size=n, max_size=n))
    k = len(classes)
    if draw(st.booleans()):  # a coarse grid: many tied scores, zeros clipped to eps
        raw = np.array(draw(st.lists(st.integers(0, 4), min_size=n * k, max_size=n * k)), dtype=float)
    else:
        raw = np.array(draw(st.lists(st.floats(0, 1), min_size=n * k, max_size=n * k)))
    raw = raw.reshape(n, k)
    if draw(st.booleans()):
        sums = raw.sum(axis=1, keepdims=True)
        proba = np.where(sums > 0, raw / np.where(sums > 0, sums, 1), 1 / k)
    else:  # rows that do not sum to 1 (used as given, like sklearn)
        proba = raw / max(raw.max(), 1)
    proba = proba.astype(draw(st.sampled_from([np.float64, np.float32])))
    if draw(st.booleans()):
        pred = [classes[i] for i in proba.argmax(axis=1)]
    else:  # arbitrary predictions, maybe of labels absent from y_true or from the model
        pred = draw(st.lists(st.sampled_from(classes + extras), min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    order = draw(st.lists(st.integers(0, 10), max_size=6))
    numpy_scalars = kind == "int" and draw(st.booleans())
    return {
        "classes": classes,
        "y": y,
        "pred": pred,
        "proba": proba,
        "cuts": cuts,
        "order": order,
        "numpy_scalars": numpy_scalars,
    }


def _as_array(values: list[Any], numpy_scalars: bool) -> np.ndarray:
    if numpy_scalars:  # an object column of numpy scalars: normalised to Python values
        return np.array([np.int64(v) for v in values], dtype=object)
    return np.array(values, dtype=object) if values and isinstance(values[0], str) else np.array(values)


def _sklearn_classification(case: dict[str, Any]) -> dict[str, Any]:
    """What scikit-learn says, computed once per case (None: undefined, the note must say so)."""
    y, pred, proba, classes = np.array(case["y"]), np.array(case["pred"]), case["proba"], case["classes"]
    labels = unique_labels(y, pred)
    macro = skm.precision_recall_fscore_support(y, pred, average="macro")  # labels: the union, as default
    p, rec, f, support = skm.precision_recall_fscore_support(y, pred, labels=labels)
    eps = np.finfo(proba.dtype).eps
    want: dict[str, Any] = {
        "rows": len(y),
        "labels": labels.tolist(),
        "matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "accuracy": skm.accuracy_score(y, pred),
        "precision_macro": macro[0],
        "recall_macro": macro[1],
        "f1_macro": macro[2],
        "per_class": list(zip(p, rec, f, support.tolist(), strict=True)),
        # sklearn's clipping (in the input dtype), logs in float64 like the accumulator ...
        "log_loss": skm.log_loss(y, np.clip(proba, eps, 1 - eps).astype(np.float64), labels=classes),
        # ... and sklearn on the raw input (float32 arithmetic when float32)
        "log_loss_raw": skm.log_loss(y, proba, labels=classes),
        "roc_auc": None,
        "pr_auc": None,
    }
    if len(classes) == 2:
        positive = y == classes[1]
        if positive.any() and not positive.all():
            want["roc_auc"] = skm.roc_auc_score(positive, proba[:, 1])
        want["pr_auc"] = skm.average_precision_score(positive, proba[:, 1])
    return want


def _check_classification(r: dict[str, Any], want: dict[str, Any]) -> None:
    json.dumps(r)
    assert r["rows"] == want["rows"]
    assert r["confusion_matrix"] == {"labels": want["labels"], "matrix": want["matrix"]}
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss"):
        assert _close(r[name], want[name]), name
    assert math.isclose(r["log_loss"], want["log_loss_raw"], rel_tol=1e-5, abs_tol=1e-6)
    assert [c["label"] for c in r["per_class"]] == want["labels"]
    for c, (p, rec, f, support) in zip(r["per_class"], want["per_class"], strict=True):
        assert _close(c["precision"], p) and _close(c["recall"], rec) and _close(c["f1"], f)
        assert c["support"] == support
    for name in ("roc_auc", "pr_auc"):
        if want[name] is None:
            assert r[name] is None and r["notes"][name].startswith("undefined:"), name
        else:
            assert _close(r[name], want[name]), name


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_classification_case())
def test_classification_accumulator_equals_sklearn(case: dict[str, Any]) -> None:
    y = _as_array(case["y"], case["numpy_scalars"])
    pred = _as_array(case["pred"], case["numpy_scalars"])
    proba = case["proba"]

    def update(acc: ClassificationMetrics, lo: int, hi: int) -> None:
        acc.update(y[lo:hi], pred[lo:hi], proba[lo:hi])

    streamed, merged = _feed_and_merge(
        lambda: ClassificationMetrics(case["classes"]), update, case["cuts"], case["order"], len(y)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division and one-class warnings
        want = _sklearn_classification(case)
    for acc in (streamed, merged):
        _check_classification(acc.result(), want)


@st.composite
def _regression_case(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 80))
    offset = draw(st.sampled_from([0.0, 1e8, -1e8, 12345.678, 3e10]))
    # deviations on a 1/64 grid: no case is ill-conditioned beyond what float64 can score
    if draw(st.integers(0, 4)) == 0:
        ks = [draw(st.integers(-6400, 6400))] * n  # constant y
    else:
        ks = draw(st.lists(st.integers(-6400, 6400), min_size=n, max_size=n))
    y = offset + np.array(ks, dtype=float) / 64
    mode = draw(st.sampled_from(["noise", "perfect", "constant", "ints"]))
    if mode == "noise":
        pred = y + np.array(draw(st.lists(st.integers(-640, 640), min_size=n, max_size=n))) / 64
    elif mode == "perfect":
        pred = y.copy()
    elif mode == "constant":
        pred = np.full(n, offset + draw(st.integers(-100, 100)))
    else:  # integer labels and predictions
        y = np.array(ks, dtype=np.int64)
        pred = y + np.array(draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), dtype=np.int64)
    if draw(st.booleans()):
        pred = pred.astype(np.float32).astype(np.float64) if pred.dtype.kind == "f" else pred
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    order = draw(st.lists(st.integers(0, 10), max_size=6))
    return {"y": y, "pred": pred, "cuts": cuts, "order": order}


@settings(derandomize=True, max_examples=150, deadline=None)
@given(case=_regression_case())
def test_regression_accumulator_equals_sklearn(case: dict[str, Any]) -> None:
    y, pred = case["y"], case["pred"]

    def update(acc: RegressionMetrics, lo: int, hi: int) -> None:
        acc.update(y[lo:hi], pred[lo:hi])

    streamed, merged = _feed_and_merge(RegressionMetrics, update, case["cuts"], case["order"], len(y))
    for acc in (streamed, merged):
        r = acc.result()
        assert r["rows"] == len(y)
        assert _close(r["mse"], skm.mean_squared_error(y, pred))
        assert _close(r["rmse"], skm.root_mean_squared_error(y, pred))
        assert _close(r["mae"], skm.mean_absolute_error(y, pred))
        if len(y) < 2:
            assert r["r2"] is None and "fewer than 2 rows" in r["notes"]["r2"]
        elif np.ptp(y) == 0:  # force_finite: 1.0 when perfect, else 0.0
            assert r["r2"] == (1.0 if np.array_equal(y, pred) else 0.0)
            if float(np.sum((y - np.average(y)) ** 2)) == 0.0:
                # sklearn agrees when its own mean of the constant is exact; with an offset off
                # the grid (12345.678) its rounded mean leaves a tiny variance and a huge R²
                assert r["r2"] == skm.r2_score(y, pred)
        else:
            assert _close(r["r2"], skm.r2_score(y, pred))


# ------------------------------------------------------------------------------ the issue's cases
def test_macro_averages_over_the_union_of_true_and_predicted_labels(tmp_path) -> None:
    # recalls 1.0, 0.8 and 0.5 on the true classes; class 3 is only ever predicted
    y = [0, 0, 1, 1, 1, 1, 1, 2, 2]
    pred = [0, 0, 1, 1, 1, 1, 3, 2, 3]
    s = _scores(tmp_path, "classification")
    s.add(pd.DataFrame({"y": y[:4], "pred": pred[:4]}))
    s.add(pd.DataFrame({"y": y[4:], "pred": pred[4:]}))
    got = s.result(None)
    assert got["recall_macro"] == pytest.approx(0.575, abs=1e-12)  # was 0.767 (mean over y_true's 3 classes)
    for name, fn in (("recall_macro", skm.recall_score), ("precision_macro", skm.precision_score)):
        assert _close(got[name], fn(y, pred, average="macro", zero_division=0.0))
    assert _close(got["f1_macro"], skm.f1_score(y, pred, average="macro"))
    assert got["recall_per_class"] == {"0": 1.0, "1": 0.8, "2": 0.5, "3": 0.0}
    assert got["confusion_matrix"]["labels"] == [0, 1, 2, 3]
    assert got["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_r2_with_a_1e8_offset_loses_nothing(tmp_path) -> None:
    rng = np.random.default_rng(7)
    y = 1e8 + rng.normal(size=4000)
    pred = y + rng.normal(scale=0.5, size=4000)
    s = _scores(tmp_path, "regression")
    for i in range(0, 4000, 999):
        s.add(pd.DataFrame({"y": y[i : i + 999], "pred": pred[i : i + 999]}))
    got = s.result(None)
    want = skm.r2_score(y, pred)
    assert want == pytest.approx(0.75, abs=0.02)  # E[y²] - E[y]² gave 0.875 on such data
    assert _close(got["r2"], want)
    assert _close(got["mse"], skm.mean_squared_error(y, pred))


def test_r2_of_a_constant_label_is_finite(tmp_path) -> None:
    s = _scores(tmp_path, "regression")
    s.add(pd.DataFrame({"y": [3.0, 3.0, 3.0], "pred": [3.0, 3.0, 3.0]}))
    assert s.result(["r2"])["r2"] == 1.0 == skm.r2_score([3.0] * 3, [3.0] * 3)
    s.add(pd.DataFrame({"y": [3.0], "pred": [2.5]}))
    got = s.result(["r2"])
    assert got["r2"] == 0.0 == skm.r2_score([3.0] * 4, [3.0, 3.0, 3.0, 2.5])
    assert "force_finite" in got["notes"]["r2"]


# ------------------------------------------------------- the stage with a built-in model's probabilities
def _builtin(tmp_path, monkeypatch, classes: list[Any], task: str = "classification") -> ModelPackage:
    monkeypatch.setattr("raypipe.models.builtin.predictor", lambda package: eval_funcs.ColumnModel(package.meta))
    meta = {"task": task, "label": "y", "spec": {"fake": True}, "classes": classes if task != "regression" else None}
    return ModelPackage.create(tmp_path / f"m{len(list(tmp_path.iterdir()))}", meta)


def _binary_frames(rng: np.random.Generator, n: int = 300) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    y = np.where(rng.random(n) < 0.3, "yes", "no")
    p1 = np.round(np.clip(rng.normal(np.where(y == "yes", 0.65, 0.35), 0.2), 0, 1), 1).astype(np.float32)
    df = pd.DataFrame({"y": y, "p0": 1 - p1, "p1": p1})
    return [df.iloc[i : i + 77] for i in range(0, n, 77)], df


def test_binary_model_reports_auc_per_class_and_confusion_outputs(tmp_path, monkeypatch) -> None:
    model = _builtin(tmp_path, monkeypatch, ["no", "yes"])
    batches, df = _binary_frames(np.random.default_rng(3))
    stage = EvaluateStage(EvaluateParams(gate={"min": {"roc_auc": 0.6, "pr_auc": 0.4}}))
    out = stage.evaluate(model, batches)
    assert set(out) == set(stage.outputs()) == {"metrics", "confusion_matrix", "per_class"}
    m = out["metrics"]
    y, p1 = df["y"].to_numpy(), df["p1"].to_numpy()
    pred = np.where(df[["p0", "p1"]].to_numpy().argmax(1) == 1, "yes", "no")
    assert _close(m["roc_auc"], skm.roc_auc_score(y == "yes", p1))
    assert _close(m["pr_auc"], skm.average_precision_score(y == "yes", p1))
    assert _close(m["accuracy"], skm.accuracy_score(y, pred))
    assert math.isclose(m["log_loss"], skm.log_loss(y, df[["p0", "p1"]].to_numpy(), labels=["no", "yes"]), rel_tol=1e-5)
    assert [c["passed"] for c in m["gate"]] == [True, True]
    assert out["confusion_matrix"] == m["confusion_matrix"]
    assert out["confusion_matrix"]["labels"] == ["no", "yes"]
    assert out["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, pred, labels=["no", "yes"]).tolist()
    table = out["per_class"]
    assert list(table.columns) == ["label", "precision", "recall", "f1", "support"]
    assert table["label"].tolist() == ["no", "yes"]
    assert table["support"].tolist() == [int((y == "no").sum()), int((y == "yes").sum())]
    assert table["recall"].tolist() == [c["recall"] for c in m["per_class"]]
    json.dumps(m)
    assert EvaluateParams(metrics=["roc_auc", "pr_auc"]).metrics == ["roc_auc", "pr_auc"]
    narrow = EvaluateStage(EvaluateParams(metrics=["roc_auc"])).evaluate(model, batches)["metrics"]
    assert "roc_auc" in narrow and "accuracy" not in narrow and "pr_auc" not in narrow


def test_one_class_auc_is_none_and_its_gate_fails_clearly(tmp_path, monkeypatch) -> None:
    model = _builtin(tmp_path, monkeypatch, [0, 1])
    df = pd.DataFrame({"y": [1, 1, 1], "p0": [0.2, 0.6, 0.5], "p1": [0.8, 0.4, 0.5]})
    stage = EvaluateStage(EvaluateParams(gate={"min": {"roc_auc": 0.8}}))
    with pytest.raises(GateFailed, match=r"roc_auc is undefined.*only one class \(1\)"):
        stage.evaluate(model, [df])
    m = EvaluateStage(EvaluateParams()).evaluate(model, [df])["metrics"]
    assert m["roc_auc"] is None and m["pr_auc"] == 1.0 == skm.average_precision_score([1, 1, 1], [0.8, 0.4, 0.5])
    assert _close(m["log_loss"], skm.log_loss([1, 1, 1], df[["p0", "p1"]].to_numpy(), labels=[0, 1]))


def test_multiclass_has_no_auc_and_gating_on_it_names_why(tmp_path, monkeypatch) -> None:
    model = _builtin(tmp_path, monkeypatch, ["a", "b", "c"])
    df = pd.DataFrame({"y": ["a", "b", "c", "a"], "p0": [0.7, 0.1, 0.2, 0.3], "p1": [0.2, 0.8, 0.2, 0.3]})
    df["p2"] = 1 - df["p0"] - df["p1"]
    m = EvaluateStage(EvaluateParams()).evaluate(model, [df])["metrics"]
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert "needs a binary model" in m["notes"]["roc_auc"]
    for gate in ({"min": {"roc_auc": 0.8}}, {"max": {"pr_auc": 0.9}}, {"beat": {"model": "m", "metric": "roc_auc"}}):
        with pytest.raises(GateFailed, match=r"(roc|pr)_auc is undefined.*needs a binary model \(2 classes\)"):
            EvaluateStage(EvaluateParams(gate=gate)).evaluate(model, [df])


def test_a_true_label_outside_the_models_classes(tmp_path, monkeypatch) -> None:
    model = _builtin(tmp_path, monkeypatch, [0, 1])
    df = pd.DataFrame({"y": [0, 1, 7, 1], "p0": [0.9, 0.2, 0.5, 0.4], "p1": [0.1, 0.8, 0.5, 0.6]})
    m = EvaluateStage(EvaluateParams()).evaluate(model, [df])["metrics"]
    assert m["log_loss"] is None and m["roc_auc"] is None and m["pr_auc"] is None
    assert "outside the model's classes [0, 1]: 7 (1 row(s))" in m["notes"]["log_loss"]
    y, pred = [0, 1, 7, 1], [0, 1, 0, 1]
    assert m["confusion_matrix"]["labels"] == [0, 1, 7]
    assert _close(m["recall_macro"], skm.recall_score(y, pred, average="macro"))
    with pytest.raises(ValueError, match="not belonging to the passed labels"):
        skm.log_loss(y, df[["p0", "p1"]].to_numpy(), labels=[0, 1])  # sklearn refuses these rows too


def test_user_predict_functions_give_no_probability_metrics(tmp_path) -> None:
    s = _scores(tmp_path, "classification")
    s.add(pd.DataFrame({"y": ["x", "y"], "pred": ["x", "x"]}))
    got = s.result(None)
    assert got["log_loss"] is None and got["roc_auc"] is None
    assert "predictions only" in got["notes"]["roc_auc"]


def test_regression_outputs_and_baseline_without_the_metric(tmp_path, monkeypatch) -> None:
    model = _builtin(tmp_path, monkeypatch, [], task="regression")
    df = pd.DataFrame({"y": [1.0, 2.0, 4.0], "pred": [1.5, 2.0, 3.0]})
    out = EvaluateStage(EvaluateParams()).evaluate(model, [df])
    assert out["confusion_matrix"] is None and out["per_class"] is None
    assert _close(out["metrics"]["r2"], skm.r2_score(df["y"], df["pred"]))
    stage = EvaluateStage(EvaluateParams(gate={"beat": {"model": "m", "metric": "roc_auc"}}))
    _, missed = stage._gate({"roc_auc": 0.9}, {"roc_auc": None, "notes": {"roc_auc": "undefined: no rows"}})
    assert missed == ["roc_auc of m@production is undefined, so the beat check cannot pass: undefined: no rows"]


def test_merge_rejects_different_classes_and_missing_labels() -> None:
    with pytest.raises(ValueError, match="different classes"):
        ClassificationMetrics([0, 1]).merge(ClassificationMetrics([0, 2]))
    with pytest.raises(DataError, match="missing values"):
        ClassificationMetrics().update(np.array([1.0, np.nan]), np.array([1.0, 1.0]))
    with pytest.raises(DataError, match="missing values"):
        ClassificationMetrics().update(np.array(["a", None], dtype=object), np.array(["a", "a"]))


def test_rows_without_a_label_are_counted_not_scored(tmp_path, monkeypatch) -> None:
    model = _builtin(tmp_path, monkeypatch, ["no", "yes"])
    _, df = _binary_frames(np.random.default_rng(4), 200)
    holes = df.copy()
    holes.loc[::10, "y"] = None
    out = EvaluateStage(EvaluateParams()).evaluate(model, [holes.iloc[:90], holes.iloc[90:]])["metrics"]
    kept = holes.dropna(subset=["y"])
    assert out["rows"] == len(kept) and out["rows_unlabeled"] == 20
    assert "rows_unlabeled" in out["notes"]
    assert _close(out["roc_auc"], skm.roc_auc_score(kept["y"] == "yes", kept["p1"]))
