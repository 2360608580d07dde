"""``evaluate`` stage kind: a model's metrics on held-out data, and a gate.

Inputs: ``model`` (a model artifact from ``train`` or ``tune``) and ``data`` (a
held-out dataset with the label column).  The dataset streams through the model in
batches (Ray Data bounded by the stage's grant, as in data stages); metrics are
accumulated by the streaming, mergeable accumulators of :mod:`raypipe.models.metrics`
and equal scikit-learn's: confusion counts over the union of the labels in y_true and
y_pred (accuracy, macro precision / recall / F1, per-class scores), log loss from the
built-in model's probabilities, ROC AUC and average precision (``roc_auc``,
``pr_auc``) for binary models (positive class ``classes[1]``), and numerically stable
sums for regression (MSE, RMSE, MAE, R²).  A ``predict`` function gives predictions
only, so its model has no log loss or AUCs.  An undefined metric is ``None`` and
``notes`` says why.

The gate: ``min: {accuracy: 0.9}`` and ``max: {log_loss: 0.4}`` thresholds, and
``beat: {model: NAME, alias: production, metric: accuracy, margin: 0.01}``: the
version the alias points to in the model registry is resolved on the driver when
the stage is about to run, becomes the stage's ``baseline`` input (so it is in the
cache key and in lineage) and is evaluated on the same data.  With no such version
yet, ``beat`` passes and says so.  A missed gate raises :class:`GateFailed` naming
each metric, its value, the threshold and the miss; it is not retried, and the
stages that depend on this one are skipped.  A gate on an undefined (``None``)
metric fails, naming the metric and why it is undefined.

Outputs: ``metrics`` (a JSON dict: the metrics, rows, ``notes`` when there are any
(why a metric is None, or a caveat), ``recall_per_class``, ``per_class`` [{label,
precision, recall, f1, support}] and ``confusion_matrix`` {labels, matrix} (rows true,
columns predicted) for classification, the baseline's metrics and every gate check with
its outcome), ``confusion_matrix`` (the same dict; None for regression) and
``per_class`` (a DataFrame: label (str), precision, recall, f1, support; None for
regression).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from raypipe.exceptions import GateFailed, ModelNotFoundError, StageError
from raypipe.models import BUILTIN_MODULES, builtin
from raypipe.models.metrics import ClassificationMetrics, RegressionMetrics
from raypipe.stages.base import StageContext, StageKind, StageParams, module_fingerprint
from raypipe.stages.data.common import as_dataset, data_session
from raypipe.stages.python import FUNC_RE, import_check, import_function
from raypipe.store.models import ModelPackage
from raypipe.store.registry import ModelRegistry

CLASSIFICATION = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "log_loss", "roc_auc", "pr_auc")
REGRESSION = ("mse", "rmse", "mae", "r2")
#: Metrics where lower is better (``beat`` flips its comparison for them).
LOWER_IS_BETTER = frozenset({"log_loss", "mse", "rmse", "mae"})


class Beat(StageParams):
    model: Annotated[str, Field(min_length=1)]
    alias: str = "production"
    metric: str = "accuracy"
    margin: Annotated[float, Field(ge=0)] = 0.0


class Gate(StageParams):
    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)
    beat: Beat | None = None


class EvaluateParams(StageParams):
    #: Metrics to compute; default: all of the task's (classification or regression).
    metrics: list[Literal[CLASSIFICATION + REGRESSION]] | None = None  # type: ignore[valid-type]
    gate: Gate = Field(default_factory=Gate)
    batch_size: Annotated[int, Field(ge=1)] = 4096
    #: For models trained by user loops: ``fn(model: ModelPackage, batch: DataFrame) -> predictions``
    #: (default: the model's own ``predict`` from ``train``).
    predict: Annotated[str | None, Field(pattern=FUNC_RE)] = None


class EvaluateStage(StageKind):
    Params = EvaluateParams
    packages = ("ray", "torch", "numpy", "pandas")
    runs_ray_work = True
    params: EvaluateParams

    def outputs(self) -> list[str]:
        return ["metrics", "confusion_matrix", "per_class"]

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        issues: list[tuple[tuple[str | int, ...], str]] = []
        if sorted(input_names) != ["data", "model"]:
            issues.append(((), f"takes inputs `model` and `data`; got {', '.join(sorted(input_names)) or 'none'}"))
        known = set(CLASSIFICATION + REGRESSION)
        for side in ("min", "max"):
            for name in getattr(self.params.gate, side):
                if name not in known:
                    issues.append((("gate", side, name), f"unknown metric; expected one of {', '.join(sorted(known))}"))
        beat = self.params.gate.beat
        if beat is not None and beat.metric not in known:
            issues.append((("gate", "beat", "metric"), f"unknown metric; expected one of {', '.join(sorted(known))}"))
        if self.params.predict is not None and (problem := import_check(self.params.predict)):
            issues.append((("predict",), problem))
        return issues

    def fingerprint(self) -> str:
        return module_fingerprint(__name__, *BUILTIN_MODULES, "raypipe.models.metrics")

    def session(self, ctx: StageContext) -> Any:
        return data_session(ctx)

    def resolve_inputs(self, meta: Any) -> dict[str, Any]:
        beat = self.params.gate.beat
        if beat is None:
            return {}

        try:
            found = ModelRegistry(meta).get(f"{beat.model}@{beat.alias}")
        except ModelNotFoundError:  # no such model or alias yet: the gate says so and passes
            return {}
        return {"baseline": meta.artifact(found.sha256)}

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        model = inputs["model"]
        if not isinstance(model, ModelPackage):
            raise StageError(f"input 'model' must be a model artifact (from train or tune), got {type(model).__name__}")
        ds = as_dataset(inputs["data"], "input 'data'")
        baseline = inputs.get("baseline")
        batches = ds.iter_batches(batch_size=self.params.batch_size, batch_format="pandas")
        sha = ctx.input_refs["baseline"].sha256 if baseline is not None else None
        return self.evaluate(model, batches, baseline, sha)

    def evaluate(
        self, model: Any, batches: Iterable[Any], baseline: Any = None, baseline_sha256: str | None = None
    ) -> dict[str, Any]:
        """The stage's outputs from pandas batches (no Ray: ``run`` passes Ray Data's batches)."""
        import pandas as pd

        scores = [_Scores(model, self.params.predict)]
        if baseline is not None:
            scores.append(_Scores(baseline, self.params.predict))
        for batch in batches:
            for s in scores:
                s.add(batch)
        metrics = scores[0].result(self.params.metrics)
        out: dict[str, Any] = dict(metrics)
        if baseline is not None:
            out["baseline"] = {"model_sha256": baseline_sha256, **scores[1].result(self.params.metrics)}
        checks, missed = self._gate(metrics, out.get("baseline"))
        out["gate"] = checks
        if missed:
            raise GateFailed("gate failed: " + "; ".join(missed))
        per_class = None
        if "per_class" in metrics:
            per_class = pd.DataFrame(
                {
                    "label": [str(c["label"]) for c in metrics["per_class"]],
                    "precision": [float(c["precision"]) for c in metrics["per_class"]],
                    "recall": [float(c["recall"]) for c in metrics["per_class"]],
                    "f1": [float(c["f1"]) for c in metrics["per_class"]],
                    "support": [int(c["support"]) for c in metrics["per_class"]],
                },
                columns=["label", "precision", "recall", "f1", "support"],
            )
        return {"metrics": out, "confusion_matrix": metrics.get("confusion_matrix"), "per_class": per_class}

    def _gate(
        self, metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        g = self.params.gate
        checks: list[dict[str, Any]] = []
        missed: list[str] = []
        notes: Mapping[str, str] = metrics.get("notes") or {}

        def value(name: str) -> float | None:
            if name not in metrics:
                raise StageError(f"gate: metric {name!r} was not computed for this {metrics.get('task')} model")
            v = metrics[name]
            return None if v is None else float(v)

        def undefined(name: str, rule: str, check: dict[str, Any], why: str) -> None:
            checks.append({**check, "metric": name, "rule": rule, "value": None, "passed": False, "note": why})
            missed.append(f"{name} is undefined, so the {rule} check cannot pass: {why}")

        for name, lo in g.min.items():
            v = value(name)
            if v is None:
                undefined(name, "min", {"threshold": lo}, notes.get(name, "no value"))
                continue
            ok = v >= lo
            checks.append({"metric": name, "rule": "min", "threshold": lo, "value": v, "passed": ok})
            if not ok:
                missed.append(f"{name} {v:.4f} < min {lo:g} (missed by {lo - v:.4f})")
        for name, hi in g.max.items():
            v = value(name)
            if v is None:
                undefined(name, "max", {"threshold": hi}, notes.get(name, "no value"))
                continue
            ok = v <= hi
            checks.append({"metric": name, "rule": "max", "threshold": hi, "value": v, "passed": ok})
            if not ok:
                missed.append(f"{name} {v:.4f} > max {hi:g} (missed by {v - hi:.4f})")
        if g.beat is not None:
            b = g.beat
            v = value(b.metric)
            ref_raw = None if baseline is None else baseline.get(b.metric)
            if v is None:
                undefined(b.metric, "beat", {}, notes.get(b.metric, "no value"))
            elif baseline is None:
                checks.append(
                    {
                        "metric": b.metric,
                        "rule": "beat",
                        "passed": True,
                        "value": v,
                        "note": f"no {b.model}@{b.alias} yet",
                    }
                )
            elif ref_raw is None:
                why = (baseline.get("notes") or {}).get(b.metric, "not computed for it")
                checks.append(
                    {"metric": b.metric, "rule": "beat", "value": v, "baseline": None, "passed": False, "note": why}
                )
                missed.append(f"{b.metric} of {b.model}@{b.alias} is undefined, so the beat check cannot pass: {why}")
            else:
                ref = float(ref_raw)
                lower = b.metric in LOWER_IS_BETTER
                need = ref - b.margin if lower else ref + b.margin
                ok = v <= need if lower else v >= need
                checks.append(
                    {
                        "metric": b.metric,
                        "rule": "beat",
                        "baseline": ref,
                        "margin": b.margin,
                        "threshold": need,
                        "value": v,
                        "passed": ok,
                    }
                )
                if not ok:
                    word = "below" if lower else "above"
                    missed.append(
                        f"{b.metric} {v:.4f} does not beat {b.model}@{b.alias} ({ref:.4f}) by margin {b.margin:g}: "
                        f"needs {word} {need:.4f} (missed by {abs(v - need):.4f})"
                    )
        return checks, missed


class _Scores:
    """Streaming metrics of one model over batches (a :mod:`raypipe.models.metrics` accumulator)."""

    def __init__(self, package: Any, predict: str | None) -> None:
        self.meta = package.meta
        self.task = self.meta.get("task")
        self.label = self.meta.get("label")
        fn = predict or self.meta.get("predict")
        self.custom: Any = None
        if self.meta.get("spec"):
            self.model: Any = builtin.predictor(package)
        elif fn:
            self.custom = import_function(fn)
            self.package = package
        else:
            raise StageError(
                "the model was trained by a user loop: set `predict` (evaluate) or `predict` (train) to a "
                "function (model: ModelPackage, batch: DataFrame) -> predictions"
            )
        self.unlabeled = 0
        self.acc: ClassificationMetrics | RegressionMetrics
        if self.task == "regression":
            self.acc = RegressionMetrics()
        else:
            classes = self.meta.get("classes")
            self.acc = ClassificationMetrics(classes if self.custom is None else None)

    def add(self, batch: Any) -> None:
        if self.label is None or self.label not in batch.columns:
            raise StageError(
                f"the evaluation data has no label column {self.label!r}; columns: {', '.join(batch.columns)}"
            )
        column = batch[self.label]
        missing = column.isna()
        if missing.any():  # no label, nothing to score: counted, not guessed
            self.unlabeled += int(missing.sum())
            batch = batch[~missing.to_numpy()]
            column = batch[self.label]
            if not len(batch):
                return
        y = column.to_numpy()
        proba = None
        if self.custom is not None:
            pred = np.asarray(self.custom(self.package, batch))
            if pred.ndim != 1 or len(pred) != len(y):
                raise StageError(
                    f"the `predict` function must return one prediction per row: got shape {pred.shape} "
                    f"for {len(y)} rows"
                )
        elif self.task == "regression":
            pred = np.asarray(self.model.predict(batch))
        else:
            proba = np.asarray(self.model.outputs(batch))
            pred = np.asarray(self.meta["classes"], dtype=object)[proba.argmax(1)]
        if isinstance(self.acc, RegressionMetrics):
            self.acc.update(y, pred)
        else:
            self.acc.update(y, pred, proba)

    def result(self, wanted: list[str] | None) -> dict[str, Any]:
        if self.acc.n == 0:
            raise StageError("the evaluation data has no rows")
        r = self.acc.result()
        out: dict[str, Any] = {"task": self.task, "rows": r["rows"]}
        if self.unlabeled:
            out["rows_unlabeled"] = self.unlabeled
        names = REGRESSION if isinstance(self.acc, RegressionMetrics) else CLASSIFICATION
        notes = dict(r["notes"])
        if self.custom is not None and isinstance(self.acc, ClassificationMetrics):
            for name in ("log_loss", "roc_auc", "pr_auc"):
                notes[name] = "undefined: the `predict` function returns predictions only, no probabilities"
        for name in names:
            if wanted is None or name in wanted:
                v = r[name]
                out[name] = float(v) if v is not None and math.isfinite(v) else None
        if isinstance(self.acc, ClassificationMetrics):
            out["recall_per_class"] = {str(c["label"]): c["recall"] for c in r["per_class"]}
            out["per_class"] = r["per_class"]
            out["confusion_matrix"] = r["confusion_matrix"]
        notes = {k: v for k, v in notes.items() if k in out}
        if self.unlabeled:
            notes["rows_unlabeled"] = f"{self.unlabeled} rows without a label were not scored"
        if notes:  # why a metric is None, or a caveat about its value
            out["notes"] = notes
        return out
