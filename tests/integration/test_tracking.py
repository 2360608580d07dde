"""Experiment tracking: a tiny ``train`` stage with ``tracking: {mlflow: ...}`` leaves its params,
every epoch's metrics and its tags (the raypipe run id, the stored model's URI) in an MLflow
file store, through Ray's own integration; a cache hit logs no second run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import raypipe

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

F = "tests.integration.funcs"


def test_an_mlflow_file_store_holds_the_train_stages_params_metrics_and_tags(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300)})
    df["y"] = 3 * df["x1"] - 2 * df["x2"] + 1
    (tmp_path / "src").mkdir()
    df.to_parquet(tmp_path / "src" / "p0.parquet")
    (tmp_path / "log").mkdir()
    uri = f"file://{tmp_path / 'mlruns'}"
    cfg = raypipe.PipelineConfig(
        name="tracked",
        storage=str(tmp_path / "store"),
        tracking={"mlflow": {"tracking_uri": uri, "experiment": "digits-exp"}},
        stages=[
            raypipe.StageConfig(name="read", kind="data.read", params={"path": str(tmp_path / "src")}),
            raypipe.StageConfig(
                name="fit",
                kind="train",
                inputs={"train": "read.data"},
                resources={"cpu": 0.5},
                params={
                    "function": f"{F}:linear_loop",
                    "config": {"epochs": 3, "lr": 0.1, "log": str(tmp_path / "log")},
                },
            ),
        ],
    )
    res = raypipe.run(cfg)
    assert res.ok, res.errors
    db = str(tmp_path / "store" / "raypipe.db")
    history = raypipe.read_artifact(res.outputs["fit"]["history"].sha256, db=db)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("digits-exp")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["function"] == f"{F}:linear_loop"
    assert run.data.params["config/epochs"] == "3" and run.data.params["config/lr"] == "0.1"
    assert "tracking" not in " ".join(run.data.params)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(losses, key=lambda m: m.step)] == [
        (h["epoch"], pytest.approx(h["loss"])) for h in history
    ]
    assert len(history) == 3
    tags = run.data.tags
    assert tags["raypipe.run_id"] == res.run_id and tags["raypipe.stage"] == "fit"
    assert tags["raypipe.kind"] == "train" and tags["raypipe.attempt"] == "1"
    model = res.outputs["fit"]["model"]
    assert tags["raypipe.outcome"] == "model"
    assert tags["raypipe.model_uri"] == model.uri and tags["raypipe.model_sha256"] == model.sha256

    again = raypipe.run(cfg)  # tracking is not in the cache key: a cache hit, no new MLflow run
    assert again.ok and again.stages["fit"] == "cached"
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_a_sweep_logs_a_run_per_trial_and_tags_the_best_trials_run_with_the_model(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    pd.DataFrame({"x": np.arange(50.0)}).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "log").mkdir()
    uri = f"file://{tmp_path / 'mlruns'}"
    cfg = raypipe.PipelineConfig(
        name="tracked_sweep",
        storage=str(tmp_path / "store"),
        stages=[
            raypipe.StageConfig(name="read", kind="data.read", params={"path": str(tmp_path / "d.parquet")}),
            raypipe.StageConfig(
                name="sweep",
                kind="tune",
                inputs={"train": "read.data"},
                resources={"cpu": 0.5},
                gang_size=2,
                params={
                    "function": "tests.integration.tune_funcs:quality_curve",
                    "config": {"log": str(tmp_path / "log"), "iterations": 3},
                    "space": {"quality": {"grid": [1, 4]}},
                    "search": "grid",
                    "metric": "loss",
                    "mode": "min",
                    "tracking": {"mlflow": {"tracking_uri": uri, "experiment": "sweeps"}},
                },
            ),
        ],
    )
    res = raypipe.run(cfg)
    assert res.ok, res.errors
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweeps")
    assert experiment is not None
    runs = {r.data.params["quality"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"1", "4"}
    for quality, run in runs.items():
        assert run.data.tags["raypipe.run_id"] == res.run_id and run.data.tags["raypipe.stage"] == "sweep"
        losses = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        assert [m.value for m in losses] == [pytest.approx(10.0 / (1 + int(quality) * i)) for i in (1, 2, 3)]
    best, other = runs["4"].data.tags, runs["1"].data.tags
    assert best["raypipe.outcome"] == "model" and best["raypipe.model_uri"] == res.outputs["sweep"]["model"].uri
    assert "raypipe.outcome" not in other and "raypipe.model_uri" not in other
