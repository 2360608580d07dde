"""Streaming, mergeable evaluation metrics that equal scikit-learn's (pure numpy).

Batches arrive one at a time (:meth:`update`); two accumulators of the same kind
combine with :meth:`merge` (in place, returning ``self``), so per-block partials can
be reduced in any order.  :meth:`result` gives every metric as a Python float, or
``None`` when it is undefined, with the reason under ``notes[metric]``.

Classification (:class:`ClassificationMetrics`) keeps exact counts:

* a confusion count per (true, predicted) label pair, over any hashable labels
  (numpy scalars become Python values; ``None``/NaN labels are rejected).  accuracy,
  precision/recall/F1 per label and their macro means are taken over the *union* of
  the labels seen in y_true and y_pred, sorted like scikit-learn's ``unique_labels``
  (by ``str`` when the labels do not compare), with ``zero_division`` -> 0.0;
* log loss like ``sklearn.metrics.log_loss(y_true, proba, labels=classes)`` in
  scikit-learn 1.9: probabilities are clipped to ``[eps, 1 - eps]`` in their own
  dtype (``eps = finfo(dtype).eps``: 2.2e-16 for float64, 1.2e-7 for float32; other
  dtypes are cast to float64) and are *not* renormalised when a row does not sum to 1
  (a note counts such rows).  The logs are summed in float64 (scikit-learn sums
  float32 input in float32, so it differs from this by float32 rounding).  A y_true
  label outside the model's classes makes log loss (and the AUCs) undefined, as
  scikit-learn raises for it: ``None`` and a note naming the labels;
* binary models (exactly 2 classes; positive class ``classes[1]``): for each
  distinct score P(classes[1]) the number of positives and negatives, which gives
  ``roc_auc`` (the Mann-Whitney statistic, computed in integers, = ``roc_auc_score``
  with sklearn's tie handling) and ``pr_auc`` (= ``average_precision_score``: one
  step per distinct score).  With one class only in y_true, roc_auc is ``None``;
  pr_auc is 0.0 with no positives and 1.0 with no negatives, as scikit-learn.

Probabilities that are NaN, infinite or outside [0, 1] make the probability metrics
``None`` (scikit-learn raises) instead of failing the evaluation.

Regression (:class:`RegressionMetrics`) keeps, in float64, the count, the mean and M2
(sum of squared deviations) of y around a shift (the first y seen, so 1e8 offsets lose
nothing), merged with Chan et al.'s pairwise update (each batch two-pass), the sums of
squared and absolute errors and min/max of y.  R² follows ``r2_score``'s
``force_finite``: a constant y gives 1.0 for perfect predictions, else 0.0 (constant
means min == max, exactly; scikit-learn tests its own rounded variance against 0),
and fewer than 2 rows give ``None``.  Non-finite labels or predictions make every
metric ``None``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from raypipe.exceptions import DataError

CLASSIFICATION_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss", "roc_auc", "pr_auc")
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
_PROBA_DTYPES = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16))


# ------------------------------------------------------------------------- labels
def _is_missing(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, float):
        return math.isnan(x)
    return type(x).__name__ in ("NAType", "NaTType")


def normalize_labels(values: Any, what: str = "labels") -> list[Hashable]:
    """``values`` as a list of hashable Python values (numpy scalars -> ``.item()``).

    Raises :class:`DataError` on missing values (None, NaN, pandas NA) or unhashable ones.
    """
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise DataError(f"{what}: expected one label per row, got an array of shape {arr.shape}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise DataError(f"{what} contain missing values (NaN)")
    out = arr.tolist()
    if arr.dtype.kind == "O":
        out = [x.item() if isinstance(x, np.generic) else x for x in out]
        for x in out:
            if _is_missing(x):
                raise DataError(f"{what} contain missing values ({x!r})")
            if not isinstance(x, Hashable):
                raise DataError(f"{what} must be hashable values, got {type(x).__name__}")
    return out


def sort_labels(labels: Iterable[Hashable]) -> list[Hashable]:
    """Sorted like scikit-learn's ``unique_labels`` when the labels compare, else by ``str``."""
    items = list(labels)
    try:
        return sorted(items)  # type: ignore[type-var]
    except TypeError:
        return sorted(items, key=lambda x: (str(x), type(x).__name__))


def json_label(label: Hashable) -> Any:
    """A label as a JSON value (bool, int, float, str kept; anything else as ``str``)."""
    return label if isinstance(label, (bool, int, float, str)) else str(label)


def _show(labels: Iterable[Hashable], limit: int = 5) -> str:
    items = sort_labels(labels)
    text = ", ".join(repr(x) for x in items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


# ------------------------------------------------------------------ score counts
class _ScoreCounts:
    """Positives and negatives per distinct score, exact and mergeable.

    Batches are buffered and folded into sorted unique arrays when the buffer outgrows
    them (amortised O(n log n) overall, 24 bytes per distinct score).
    """

    def __init__(self) -> None:
        self.scores = np.zeros(0, dtype=np.float64)
        self.pos = np.zeros(0, dtype=np.int64)
        self.neg = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def add(self, scores: np.ndarray, positive: np.ndarray) -> None:
        if len(scores) == 0:
            return
        p = positive.astype(np.int64)
        self._push(scores.astype(np.float64), p, 1 - p)

    def _push(self, s: np.ndarray, p: np.ndarray, n: np.ndarray) -> None:
        self._pending.append((s, p, n))
        self._pending_len += len(s)
        if self._pending_len > max(len(self.scores), 65536):
            self.compact()

    def merge(self, other: _ScoreCounts) -> None:
        other.compact()
        if len(other.scores):
            self._push(other.scores.copy(), other.pos.copy(), other.neg.copy())

    def compact(self) -> None:
        if not self._pending:
            return
        parts = [(self.scores, self.pos, self.neg), *self._pending]
        s = np.concatenate([x[0] for x in parts])
        p = np.concatenate([x[1] for x in parts])
        n = np.concatenate([x[2] for x in parts])
        self.scores, inverse = np.unique(s, return_inverse=True)
        # counts stay far below 2**53, so the float weights of bincount are exact
        self.pos = np.rint(np.bincount(inverse, weights=p, minlength=len(self.scores))).astype(np.int64)
        self.neg = np.rint(np.bincount(inverse, weights=n, minlength=len(self.scores))).astype(np.int64)
        self._pending, self._pending_len = [], 0

    def totals(self) -> tuple[int, int]:
        self.compact()
        return int(self.pos.sum()), int(self.neg.sum())

    def roc_auc(self) -> float:
        """Area under the ROC curve with ties counted half (what sklearn's trapezoids give)."""
        self.compact()
        n_pos, n_neg = self.totals()
        twice_u = 0
        above = 0  # positives with a strictly higher score
        for p, n in zip(self.pos[::-1].tolist(), self.neg[::-1].tolist(), strict=True):
            twice_u += n * (2 * above + p)
            above += p
        return twice_u / (2 * n_pos * n_neg)

    def average_precision(self) -> float:
        """sklearn's ``average_precision_score``: sum over thresholds of (R_k - R_k-1) * P_k."""
        self.compact()
        n_pos, _ = self.totals()
        if n_pos == 0:
            return 0.0  # sklearn: recall is set to 1 at every threshold, so no step adds area
        tp = np.cumsum(self.pos[::-1])
        fp = np.cumsum(self.neg[::-1])
        steps = self.pos[::-1]
        keep = steps > 0
        terms = steps[keep] * (tp[keep] / (tp[keep] + fp[keep]))
        return math.fsum(terms.tolist()) / n_pos


# ----------------------------------------------------------------- classification
class ClassificationMetrics:
    """Exact streaming classification metrics; see the module docstring.

    ``classes``: the model's classes in the order of its probability columns (needed for
    log loss and the AUCs; ``None`` for a model that gives predictions only).
    """

    def __init__(self, classes: Sequence[Any] | None = None) -> None:
        self.classes: list[Hashable] | None = (
            None if classes is None else normalize_labels(np.asarray(list(classes), dtype=object), "classes")
        )
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise DataError(f"the model's classes are not distinct: {self.classes}")
        self._index = {c: i for i, c in enumerate(self.classes or [])}
        self.n = 0
        self.confusion: Counter[tuple[Hashable, Hashable]] = Counter()
        self.proba_rows = 0  # rows that came with probabilities
        self.bad_proba_rows = 0  # NaN, infinite or outside [0, 1]
        self.unnormalized_rows = 0  # valid rows whose probabilities do not sum to 1
        self.unseen: Counter[Hashable] = Counter()  # y_true labels outside `classes` (rows with probabilities)
        self.log_loss_sum = 0.0
        self.ranks = _ScoreCounts()

    @property
    def binary(self) -> bool:
        return self.classes is not None and len(self.classes) == 2

    def update(self, y_true: Any, y_pred: Any, proba: Any = None) -> None:
        t = normalize_labels(y_true, "true labels")
        p = normalize_labels(y_pred, "predictions")
        if len(t) != len(p):
            raise DataError(f"{len(p)} predictions for {len(t)} rows")
        self.confusion.update(zip(t, p, strict=True))
        self.n += len(t)
        if proba is not None:
            self._update_proba(t, proba)

    def _update_proba(self, t: list[Hashable], proba: Any) -> None:
        if self.classes is None:
            raise DataError("probabilities need the model's classes (the order of their columns)")
        prob = np.asarray(proba)
        if prob.ndim != 2 or prob.shape != (len(t), len(self.classes)):
            raise DataError(
                f"probabilities must have shape (rows, classes) = ({len(t)}, {len(self.classes)}), got {prob.shape}"
            )
        if prob.dtype not in _PROBA_DTYPES:
            prob = prob.astype(np.float64)
        self.proba_rows += len(t)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(prob).all(axis=1) & (prob >= 0).all(axis=1) & (prob <= 1).all(axis=1)
        self.bad_proba_rows += int((~valid).sum())
        col = np.array([self._index.get(x, -1) for x in t], dtype=np.int64)
        for x, c in zip(t, col.tolist(), strict=True):
            if c < 0:
                self.unseen[x] += 1
        use = valid & (col >= 0)
        rows = np.flatnonzero(use)
        eps = np.finfo(prob.dtype).eps
        sums = prob[valid].astype(np.float64).sum(axis=1)
        self.unnormalized_rows += int((~np.isclose(sums, 1.0, rtol=math.sqrt(float(eps)))).sum())
        picked = np.clip(prob[rows, col[rows]], eps, 1 - eps)  # clipped in the input dtype, as sklearn
        self.log_loss_sum += float(-np.log(picked.astype(np.float64)).sum())
        if self.binary:
            self.ranks.add(prob[rows, 1], col[rows] == 1)

    def merge(self, other: ClassificationMetrics) -> ClassificationMetrics:
        """Add ``other``'s counts into this accumulator (same classes); returns ``self``."""
        if not isinstance(other, ClassificationMetrics):
            raise TypeError(f"cannot merge {type(other).__name__} into ClassificationMetrics")
        if other.classes != self.classes:
            raise ValueError(f"cannot merge metrics of different classes: {self.classes} vs {other.classes}")
        self.n += other.n
        self.confusion.update(other.confusion)
        self.proba_rows += other.proba_rows
        self.bad_proba_rows += other.bad_proba_rows
        self.unnormalized_rows += other.unnormalized_rows
        self.unseen.update(other.unseen)
        self.log_loss_sum += other.log_loss_sum
        self.ranks.merge(other.ranks)
        return self

    def labels(self) -> list[Hashable]:
        """The union of the labels seen in y_true and y_pred, sorted."""
        return sort_labels({t for t, _ in self.confusion} | {p for _, p in self.confusion})

    def _proba_problem(self) -> str | None:
        if self.classes is None or self.proba_rows == 0:
            return "no predicted probabilities"
        if self.proba_rows < self.n:
            return f"probabilities for only {self.proba_rows} of {self.n} rows"
        if self.bad_proba_rows:
            return f"{self.bad_proba_rows} row(s) have probabilities that are NaN, infinite or outside [0, 1]"
        if self.unseen:
            rows = sum(self.unseen.values())
            return (
                f"y_true has label(s) outside the model's classes {self.classes}: {_show(self.unseen)} "
                f"({rows} row(s)); the model gives them no probability (scikit-learn's "
                "log_loss(labels=classes) rejects them too)"
            )
        return None

    def result(self) -> dict[str, Any]:
        """Metrics (None when undefined), ``per_class``, ``confusion_matrix`` and ``notes``."""
        notes: dict[str, str] = {}
        labels = self.labels()
        pos = {lab: i for i, lab in enumerate(labels)}
        matrix = [[0] * len(labels) for _ in labels]
        for (t, p), c in self.confusion.items():
            matrix[pos[t]][pos[p]] += c
        per_class: list[dict[str, Any]] = []
        for i, lab in enumerate(labels):
            tp = matrix[i][i]
            support = sum(matrix[i])
            predicted = sum(row[i] for row in matrix)
            per_class.append(
                {
                    "label": json_label(lab),
                    "precision": tp / predicted if predicted else 0.0,
                    "recall": tp / support if support else 0.0,
                    "f1": 2 * tp / (support + predicted) if support + predicted else 0.0,
                    "support": support,
                }
            )
        values: dict[str, float | None] = dict.fromkeys(CLASSIFICATION_METRICS)
        if self.n:
            values["accuracy"] = sum(matrix[i][i] for i in range(len(labels))) / self.n
            for name, key in (("precision_macro", "precision"), ("recall_macro", "recall"), ("f1_macro", "f1")):
                values[name] = float(np.mean([c[key] for c in per_class]))
        else:
            for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
                notes[name] = "no rows"
        problem = self._proba_problem() if self.n else "no rows"
        if problem is None:
            values["log_loss"] = self.log_loss_sum / self.n
            if self.unnormalized_rows:
                notes["log_loss"] = (
                    f"{self.unnormalized_rows} row(s) of probabilities do not sum to 1; used as given, "
                    "not renormalised (as scikit-learn 1.9)"
                )
        else:
            notes["log_loss"] = f"undefined: {problem}"
        if self.classes is None or len(self.classes) != 2:
            why = "the model has no classes" if self.classes is None else f"this model has {len(self.classes)}"
            for name in ("roc_auc", "pr_auc"):
                notes[name] = f"undefined: needs a binary model (2 classes); {why}"
        elif problem is not None:
            for name in ("roc_auc", "pr_auc"):
                notes[name] = f"undefined: {problem}"
        else:
            n_pos, n_neg = self.ranks.totals()
            positive, negative = self.classes[1], self.classes[0]
            if n_pos and n_neg:
                values["roc_auc"] = self.ranks.roc_auc()
            else:
                only = negative if n_pos == 0 else positive
                notes["roc_auc"] = f"undefined: y_true has only one class ({only!r})"
            values["pr_auc"] = self.ranks.average_precision()
            if n_pos == 0:
                notes["pr_auc"] = (
                    f"y_true has no positives ({positive!r}): 0.0, as scikit-learn's average_precision_score"
                )
        return {
            "rows": self.n,
            **values,
            "per_class": per_class,
            "confusion_matrix": {"labels": [json_label(x) for x in labels], "matrix": matrix},
            "notes": notes,
        }


# --------------------------------------------------------------------- regression
class RegressionMetrics:
    """Numerically stable streaming regression metrics; see the module docstring."""

    def __init__(self) -> None:
        self.n = 0  # rows, finite or not
        self.n_finite = 0  # rows in the sums below
        self.shift: float | None = None  # y is accumulated as y - shift
        self.mean = 0.0  # of y - shift
        self.m2 = 0.0  # sum of squared deviations of y from its mean
        self.sse = 0.0
        self.sae = 0.0
        self.y_min = math.inf
        self.y_max = -math.inf
        self.bad_rows = 0  # rows with a non-finite label or prediction

    def update(self, y_true: Any, y_pred: Any) -> None:
        try:
            y = np.asarray(y_true, dtype=np.float64).reshape(-1)
            p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"regression labels and predictions must be numbers: {e}") from None
        if len(y) != len(p):
            raise DataError(f"{len(p)} predictions for {len(y)} rows")
        self.n += len(y)
        finite = np.isfinite(y) & np.isfinite(p)
        self.bad_rows += int((~finite).sum())
        y, p = y[finite], p[finite]
        if len(y) == 0:
            return
        err = y - p
        self.sse += float((err * err).sum())
        self.sae += float(np.abs(err).sum())
        self.y_min = min(self.y_min, float(y.min()))
        self.y_max = max(self.y_max, float(y.max()))
        if self.shift is None:
            self.shift = float(y[0])
        d = y - self.shift
        b_mean = float(d.mean())
        b_m2 = float(((d - b_mean) ** 2).sum())
        self._combine(len(y), b_mean, b_m2)

    def _combine(self, n_b: int, mean_b: float, m2_b: float) -> None:
        """Chan et al.: fold (n_b, mean_b, m2_b), with mean_b relative to ``self.shift``."""
        n_a = self.n_finite
        if n_a == 0:
            self.mean, self.m2 = mean_b, m2_b
        else:
            n = n_a + n_b
            delta = mean_b - self.mean
            self.mean += delta * (n_b / n)
            self.m2 += m2_b + delta * delta * (n_a * n_b / n)
        self.n_finite = n_a + n_b

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        """Add ``other``'s sums into this accumulator; returns ``self``."""
        if not isinstance(other, RegressionMetrics):
            raise TypeError(f"cannot merge {type(other).__name__} into RegressionMetrics")
        self.n += other.n
        self.bad_rows += other.bad_rows
        if other.n_finite == 0 or other.shift is None:
            return self
        self.sse += other.sse
        self.sae += other.sae
        self.y_min = min(self.y_min, other.y_min)
        self.y_max = max(self.y_max, other.y_max)
        if self.shift is None:
            self.shift = other.shift
        # other's mean relative to our shift (the shift difference is exact when the shifts are close)
        self._combine(other.n_finite, (other.shift - self.shift) + other.mean, other.m2)
        return self

    def result(self) -> dict[str, Any]:
        values: dict[str, float | None] = dict.fromkeys(REGRESSION_METRICS)
        notes: dict[str, str] = {}
        if self.n == 0 or self.bad_rows:
            why = "no rows" if self.n == 0 else f"{self.bad_rows} row(s) have a NaN or infinite label or prediction"
            notes.update(dict.fromkeys(REGRESSION_METRICS, f"undefined: {why}"))
            return {"rows": self.n, **values, "notes": notes}
        mse = self.sse / self.n
        values.update(mse=mse, rmse=math.sqrt(mse), mae=self.sae / self.n)
        if self.n < 2:
            notes["r2"] = "undefined with fewer than 2 rows"
        elif self.y_min == self.y_max or self.m2 == 0:
            values["r2"] = 1.0 if self.sse == 0 else 0.0
            notes["r2"] = "y is constant: R² is 1.0 for perfect predictions, else 0.0 (scikit-learn's force_finite)"
        else:
            values["r2"] = 1 - self.sse / self.m2
        return {"rows": self.n, **values, "notes": notes}
