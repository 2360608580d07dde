"""``evaluate`` stage kind: a model's metrics on held-out data, and a gate.

Inputs: ``model`` (a model artifact from ``train`` or ``tune``) and ``data`` (a
held-out dataset with the label column).  The dataset streams through the model in
batches (Ray Data bounded by the stage's grant, as in data stages); metrics are
accumulated exactly (a confusion matrix for classification, sums for regression).

The gate: ``min: {accuracy: 0.9}`` and ``max: {log_loss: 0.4}`` thresholds, and
``beat: {model: NAME, alias: production, metric: accuracy, margin: 0.01}``: the
version the alias points to in the model registry is resolved on the driver when
the stage is about to run, becomes the stage's ``baseline`` input (so it is in the
cache key and in lineage) and is evaluated on the same data.  With no such version
yet, ``beat`` passes and says so.  A missed gate raises :class:`GateFailed` naming
each metric, its value, the threshold and the miss; it is not retried, and the
stages that depend on this one are skipped.

Output: ``metrics`` (a JSON dict: the metrics, rows, per-class recall, the
baseline's metrics and every gate check with its outcome).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from raypipe.exceptions import GateFailed, StageError
from raypipe.stages.base import StageContext, StageKind, StageParams, module_fingerprint
from raypipe.stages.python import FUNC_RE, import_check, import_function

CLASSIFICATION = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "log_loss")
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
        return ["metrics"]

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
        return module_fingerprint(__name__) + module_fingerprint("raypipe.models.builtin")

    def session(self, ctx: StageContext) -> Any:
        from raypipe.stages.data.common import data_session

        return data_session(ctx)

    def resolve_inputs(self, meta: Any) -> dict[str, Any]:
        beat = self.params.gate.beat
        if beat is None:
            return {}
        from raypipe.exceptions import ModelNotFoundError
        from raypipe.store.registry import ModelRegistry

        try:
            found = ModelRegistry(meta).get(f"{beat.model}@{beat.alias}")
        except ModelNotFoundError:  # no such model or alias yet: the gate says so and passes
            return {}
        return {"baseline": meta.artifact(found.sha256)}

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from raypipe.stages.data.common import as_dataset
        from raypipe.store.models import ModelPackage

        model = inputs["model"]
        if not isinstance(model, ModelPackage):
            raise StageError(f"input 'model' must be a model artifact (from train or tune), got {type(model).__name__}")
        ds = as_dataset(inputs["data"], "input 'data'")
        scores = [_Scores(model, self.params.predict)]
        baseline = inputs.get("baseline")
        if baseline is not None:
            scores.append(_Scores(baseline, self.params.predict))
        for batch in ds.iter_batches(batch_size=self.params.batch_size, batch_format="pandas"):
            for s in scores:
                s.add(batch)
        metrics = scores[0].result(self.params.metrics)
        out: dict[str, Any] = dict(metrics)
        if baseline is not None:
            out["baseline"] = {
                "model_sha256": ctx.input_refs["baseline"].sha256,
                **scores[1].result(self.params.metrics),
            }
        checks, missed = self._gate(metrics, out.get("baseline"))
        out["gate"] = checks
        if missed:
            raise GateFailed("gate failed: " + "; ".join(missed))
        return {"metrics": out}

    def _gate(
        self, metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        g = self.params.gate
        checks: list[dict[str, Any]] = []
        missed: list[str] = []

        def value(name: str) -> float:
            if name not in metrics:
                raise StageError(f"gate: metric {name!r} was not computed for this {metrics.get('task')} model")
            return float(metrics[name])

        for name, lo in g.min.items():
            v = value(name)
            ok = v >= lo
            checks.append({"metric": name, "rule": "min", "threshold": lo, "value": v, "passed": ok})
            if not ok:
                missed.append(f"{name} {v:.4f} < min {lo:g} (missed by {lo - v:.4f})")
        for name, hi in g.max.items():
            v = value(name)
            ok = v <= hi
            checks.append({"metric": name, "rule": "max", "threshold": hi, "value": v, "passed": ok})
            if not ok:
                missed.append(f"{name} {v:.4f} > max {hi:g} (missed by {v - hi:.4f})")
        if g.beat is not None:
            b = g.beat
            v = value(b.metric)
            if baseline is None:
                checks.append(
                    {
                        "metric": b.metric,
                        "rule": "beat",
                        "passed": True,
                        "value": v,
                        "note": f"no {b.model}@{b.alias} yet",
                    }
                )
            else:
                ref = float(baseline[b.metric])
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
    """Streaming metrics of one model over batches."""

    def __init__(self, package: Any, predict: str | None) -> None:
        from raypipe.models.builtin import predictor

        self.meta = package.meta
        self.task = self.meta.get("task")
        self.label = self.meta.get("label")
        fn = predict or self.meta.get("predict")
        if self.meta.get("spec"):
            self.model: Any = predictor(package)
            self.custom = None
        elif fn:
            self.custom = import_function(fn)
            self.package = package
        else:
            raise StageError(
                "the model was trained by a user loop: set `predict` (evaluate) or `predict` (train) to a "
                "function (model: ModelPackage, batch: DataFrame) -> predictions"
            )
        self.n = 0
        self.sums = np.zeros(4)  # regression: squared error, abs error, sum y, sum y^2
        self.confusion: dict[tuple[Any, Any], int] = {}
        self.log_loss = 0.0

    def add(self, batch: Any) -> None:
        if self.label is None or self.label not in batch.columns:
            raise StageError(
                f"the evaluation data has no label column {self.label!r}; columns: {', '.join(batch.columns)}"
            )
        y = batch[self.label].to_numpy()
        if self.custom is not None:
            pred, proba = np.asarray(self.custom(self.package, batch)), None
        elif self.task == "classification":
            proba = self.model.outputs(batch)
            pred = np.asarray(self.meta["classes"])[proba.argmax(1)]
        else:
            pred, proba = self.model.predict(batch), None
        self.n += len(y)
        if self.task == "regression":
            err = pred.astype(float) - y.astype(float)
            self.sums += [
                float((err**2).sum()),
                float(np.abs(err).sum()),
                float(y.sum()),
                float((y.astype(float) ** 2).sum()),
            ]
            return
        for t, p in zip(y.tolist(), pred.tolist(), strict=True):
            self.confusion[(t, p)] = self.confusion.get((t, p), 0) + 1
        if proba is not None:
            index = {c: i for i, c in enumerate(self.meta["classes"])}
            cols = np.array([index.get(t, -1) for t in y.tolist()])
            p = np.where(cols >= 0, proba[np.arange(len(y)), np.maximum(cols, 0)], 0.0)
            self.log_loss += float(-np.log(np.clip(p, 1e-15, 1.0)).sum())

    def result(self, wanted: list[str] | None) -> dict[str, Any]:
        if self.n == 0:
            raise StageError("the evaluation data has no rows")
        out: dict[str, Any] = {"task": self.task, "rows": self.n}
        if self.task == "regression":
            mse = self.sums[0] / self.n
            var = self.sums[3] / self.n - (self.sums[2] / self.n) ** 2
            values = {
                "mse": mse,
                "rmse": math.sqrt(mse),
                "mae": self.sums[1] / self.n,
                "r2": 1 - mse / var if var > 0 else float("nan"),
            }
        else:
            labels = sorted({t for t, _ in self.confusion} | {p for _, p in self.confusion})
            tp = {c: self.confusion.get((c, c), 0) for c in labels}
            true_n = {c: sum(v for (t, _), v in self.confusion.items() if t == c) for c in labels}
            pred_n = {c: sum(v for (_, p), v in self.confusion.items() if p == c) for c in labels}
            prec = {c: tp[c] / pred_n[c] if pred_n[c] else 0.0 for c in labels}
            rec = {c: tp[c] / true_n[c] if true_n[c] else 0.0 for c in labels}
            f1 = {c: 2 * prec[c] * rec[c] / (prec[c] + rec[c]) if prec[c] + rec[c] else 0.0 for c in labels}
            present = [c for c in labels if true_n[c]]
            values = {
                "accuracy": sum(tp.values()) / self.n,
                "f1_macro": float(np.mean([f1[c] for c in present])),
                "precision_macro": float(np.mean([prec[c] for c in present])),
                "recall_macro": float(np.mean([rec[c] for c in present])),
            }
            if self.custom is None:
                values["log_loss"] = self.log_loss / self.n
            out["recall_per_class"] = {str(c): round(rec[c], 6) for c in present}
        for name, v in values.items():
            if wanted is None or name in wanted:
                out[name] = round(float(v), 6) if math.isfinite(v) else None
        return out
