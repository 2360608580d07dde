"""Experiment tracking of ``train`` and ``tune`` stages (``params.tracking``, or the
pipeline's ``tracking:``) through Ray's own integrations.

Ray Train V2 takes no Ray Tune callbacks (``ray.train.RunConfig(callbacks=)`` accepts only
``ray.train.UserCallback``), so the two kinds differ:

- ``train``: the stage's task (the process that calls ``trainer.fit()``) opens the run with
  :func:`ray.air.integrations.mlflow.setup_mlflow` / :func:`ray.air.integrations.wandb.setup_wandb`:
  params (the stage's params, a user loop's ``config``) and tags (raypipe run id, stage,
  attempt).  MLflow gets every report of rank 0 as it happens, with its step, from a
  ``UserCallback`` in Train's controller (:func:`mlflow_reports`); W&B gets them when
  training ends (its run lives in the task's process).  The run ends FINISHED or FAILED.
- ``tune``: Ray Tune's :class:`~ray.air.integrations.mlflow.MLflowLoggerCallback` and
  :class:`~ray.air.integrations.wandb.WandbLoggerCallback` (a run per trial: the trial's
  config, every result), with the same tags.

The run that made the stage's ``model`` (train: the attempt that succeeded; tune: the best
trial's) is tagged ``raypipe.outcome=model``, and once the output is stored the driver adds
``raypipe.model_uri`` and ``raypipe.model_sha256`` to it (:func:`tag_model`; MLflow only: a
W&B run cannot be changed from another process in offline mode).

A missing package is a planning error naming the field (:func:`missing_packages`).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from raypipe.config.tracking import MlflowTracking, TrackingConfig, WandbTracking
from raypipe.exceptions import StageError
from raypipe.secrets import resolve_secrets

log = logging.getLogger(__name__)

#: Tag of the run whose training made the stage's ``model`` output.
OUTCOME_TAG = "raypipe.outcome"


def missing_packages(tracking: TrackingConfig | None) -> list[tuple[tuple[str | int, ...], str]]:
    """``(loc under params, message)`` for each tracker whose package is not installed."""
    issues: list[tuple[tuple[str | int, ...], str]] = []
    for name in ("mlflow", "wandb"):
        if tracking is not None and getattr(tracking, name) is not None and importlib.util.find_spec(name) is None:
            issues.append((("tracking", name), f"needs the {name!r} package: pip install 'raypipe[{name}]'"))
    return issues


def require(tracking: TrackingConfig | None, where: str) -> None:
    """In the task: the same check, on the node the stage runs on."""
    problems = missing_packages(tracking)
    if problems:
        loc, message = problems[0]
        raise StageError(f"{where}.{'.'.join(map(str, loc))}: {message} (on this node)")


def tags(ctx: Any, kind: str) -> dict[str, str]:
    return {
        "raypipe.run_id": ctx.run_id,
        "raypipe.stage": ctx.stage,
        "raypipe.attempt": str(ctx.attempt),
        "raypipe.kind": kind,
    }


def run_name(ctx: Any) -> str:
    return f"{ctx.run_id}.{ctx.stage}" + (f".{ctx.attempt}" if ctx.attempt > 1 else "")


def allow_file_store(uri: str | None) -> None:
    """MLflow >= 3 refuses its file backend unless ``MLFLOW_ALLOW_FILE_STORE`` is set; a
    ``tracking_uri`` that names one is that choice."""
    if uri and uri.startswith(("file:", "/", "./", "~")):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a report (what trackers take as metrics)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and not isinstance(v, (list, dict)):
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def step_of(row: Mapping[str, Any], index: int) -> int:
    """A report's step: its ``step`` or ``epoch`` when it has one, else its position (from 1)."""
    for key in ("step", "epoch"):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    return index + 1


@contextmanager
def _wandb_env(w: WandbTracking | None) -> Iterator[None]:
    """``WANDB_MODE`` for Ray's W&B helpers while a stage runs (they skip the API key
    check in offline mode only when the variable says so); restored afterwards."""
    if w is None:
        yield
        return
    old = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = w.mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = old


def _wandb_kwargs(w: WandbTracking, ctx: Any, kind: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "project": w.project,
        "mode": w.mode,
        "group": ctx.run_id,
        "job_type": kind,
        "tags": [f"{k}={v}" for k, v in tags(ctx, kind).items()],
    }
    if w.entity:
        kwargs["entity"] = w.entity
    if w.dir:
        os.makedirs(os.path.expanduser(w.dir), exist_ok=True)
        kwargs["dir"] = os.path.expanduser(w.dir)
    return kwargs


# ------------------------------------------------------------------------------ train
class TrainTracking:
    """One attempt of a ``train`` stage, tracked (see the module's docstring)."""

    def __init__(self, tracking: TrackingConfig | None, ctx: Any, params: Mapping[str, Any]) -> None:
        self.tracking, self.ctx, self.params = tracking, ctx, dict(params)
        self.mlflow_run_id: str | None = None
        self._mlflow: Any = None
        self._wandb: Any = None

    @contextmanager
    def session(self) -> Iterator[TrainTracking]:
        """Open the runs; on leaving, end them FINISHED, or FAILED on an exception."""
        if self.tracking is None:
            yield self
            return
        require(self.tracking, f"stages.{self.ctx.stage}.params")
        with _wandb_env(self.tracking.wandb):
            ok = False
            try:
                self._start()
                yield self
                ok = True
            finally:
                self._end(ok)  # also a run opened before the other tracker failed to start

    def _start(self) -> None:
        if self.tracking is None:
            return
        m = self.tracking.mlflow
        if m is not None:
            from ray.air.integrations.mlflow import setup_mlflow

            allow_file_store(m.tracking_uri)
            try:
                self._mlflow = setup_mlflow(
                    config=self.params,
                    tracking_uri=m.tracking_uri,
                    experiment_name=m.experiment,
                    run_name=run_name(self.ctx),
                    tags=tags(self.ctx, "train"),
                    create_experiment_if_not_exists=True,
                )
            except Exception as e:  # MLflow's errors have no common base worth naming
                raise StageError(f"tracking.mlflow: cannot start an MLflow run at {m.tracking_uri!r}: {e}") from e
            self.mlflow_run_id = self._mlflow.active_run().info.run_id
        w = self.tracking.wandb
        if w is not None:
            from ray.air.integrations.wandb import setup_wandb

            self._wandb = setup_wandb(
                config=self.params,
                trial_id=run_name(self.ctx).replace(".", "-"),
                trial_name=run_name(self.ctx),
                **_wandb_kwargs(w, self.ctx, "train"),
            )

    def callbacks(self) -> list[Any]:
        """Ray Train ``UserCallback``s for the trainer's ``RunConfig``."""
        if self.mlflow_run_id is None or self.tracking is None or self.tracking.mlflow is None:
            return []
        return [mlflow_reports(self.tracking.mlflow.tracking_uri, self.mlflow_run_id)]

    def finish(self, history: Sequence[Mapping[str, Any]]) -> None:
        """After training: W&B's copy of every report; the run is the one that made the model."""
        if self._wandb is not None:
            for i, row in enumerate(history):
                self._wandb.log(numeric(row), step=step_of(row, i))
            self._wandb.summary[OUTCOME_TAG] = "model"
        if self._mlflow is not None:
            self._mlflow.set_tag(OUTCOME_TAG, "model")

    def _end(self, ok: bool) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run(status="FINISHED" if ok else "FAILED")
        if self._wandb is not None:
            self._wandb.finish(exit_code=0 if ok else 1)


def mlflow_reports(tracking_uri: str | None, run_id: str) -> Any:
    """A Ray Train callback (in Train's controller) that logs every report of rank 0 to the
    MLflow run ``run_id`` as it happens, at the report's step."""
    from ray.train import UserCallback

    class MlflowReports(UserCallback):
        def __init__(self) -> None:
            self.count = 0
            self.client: Any = None

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if not metrics:
                return
            from mlflow.entities import Metric

            if self.client is None:
                from mlflow.tracking import MlflowClient

                allow_file_store(tracking_uri)
                self.client = MlflowClient(tracking_uri)
            row, now = metrics[0], int(time.time() * 1000)
            step = step_of(row, self.count)
            self.count += 1
            values = [Metric(k, v, now, step) for k, v in numeric(row).items()]
            if values:
                self.client.log_batch(run_id, metrics=values)

    return MlflowReports()


# ------------------------------------------------------------------------------- tune
def tune_callbacks(tracking: TrackingConfig | None, ctx: Any) -> list[Any]:
    """Ray Tune's logger callbacks for the sweep's ``RunConfig`` (a run per trial)."""
    if tracking is None:
        return []
    require(tracking, f"stages.{ctx.stage}.params")
    callbacks: list[Any] = []
    m = tracking.mlflow
    if m is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        allow_file_store(m.tracking_uri)
        callbacks.append(
            MLflowLoggerCallback(tracking_uri=m.tracking_uri, experiment_name=m.experiment, tags=tags(ctx, "tune"))
        )
    w = tracking.wandb
    if w is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(WandbLoggerCallback(**_wandb_kwargs(w, ctx, "tune")))
    return callbacks


@contextmanager
def tune_session(tracking: TrackingConfig | None) -> Iterator[None]:
    with _wandb_env(tracking.wandb if tracking is not None else None):
        yield


def best_trial(trials: Any, metric: str, mode: str) -> str | None:
    """The id of the best trial in the sweep's ``trials`` table (as the stage picks it)."""
    col = f"{metric}_best"
    if trials is None or col not in getattr(trials, "columns", []):
        return None
    ok = trials[trials["error"].isna() & trials[col].notna()]
    if ok.empty:
        return None
    row = ok.loc[ok[col].idxmin() if mode == "min" else ok[col].idxmax()]
    return str(row["trial_id"])


def mark_best_trial(tracking: TrackingConfig | None, ctx: Any, trial_id: str | None) -> None:
    """Tag the MLflow run of the best trial (``MLflowLoggerCallback`` names it after the trial)."""
    m = tracking.mlflow if tracking is not None else None
    if m is None or trial_id is None:
        return
    for run in _runs(m, ctx.run_id, ctx.stage, f"tags.`raypipe.attempt` = '{ctx.attempt}'"):
        if str(run.data.tags.get("trial_name", "")).endswith(trial_id):
            _client(m).set_tag(run.info.run_id, OUTCOME_TAG, "model")


# ----------------------------------------------------------------------- the driver
def tag_model(tracking: TrackingConfig | None, run_id: str, stage: str, model: Any, cached: bool) -> None:
    """On the driver once the stage is recorded done: the stored model's URI on the MLflow
    run that made it.  A cache hit made nothing here (its run has it already).  A tracking
    server that cannot be reached is a warning: the model is stored and registered anyway."""
    m = tracking.mlflow if tracking is not None else None
    if m is None or cached or model is None:
        return
    try:
        m = MlflowTracking.model_validate(resolve_secrets(m.model_dump(), "tracking.mlflow"))
        for run in _runs(m, run_id, stage, f"tags.`{OUTCOME_TAG}` = 'model'"):
            client = _client(m)
            client.set_tag(run.info.run_id, "raypipe.model_uri", model.uri)
            client.set_tag(run.info.run_id, "raypipe.model_sha256", model.sha256)
    except Exception as e:  # noqa: BLE001  # a tracking server's failure must not fail a finished stage
        log.warning("tracking.mlflow: could not tag the MLflow run of %s/%s with the model's URI: %s", run_id, stage, e)


def _client(m: MlflowTracking) -> Any:
    from mlflow.tracking import MlflowClient

    allow_file_store(m.tracking_uri)
    return MlflowClient(m.tracking_uri)


def _runs(m: MlflowTracking, run_id: str, stage: str, extra: str) -> list[Any]:
    client = _client(m)
    experiment = client.get_experiment_by_name(m.experiment)
    if experiment is None:
        return []
    where = f"tags.`raypipe.run_id` = '{_quoted(run_id)}' and tags.`raypipe.stage` = '{_quoted(stage)}' and {extra}"
    return list(client.search_runs([experiment.experiment_id], filter_string=where, max_results=1000))


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
