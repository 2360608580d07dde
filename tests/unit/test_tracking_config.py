"""``tracking:`` of train and tune stages: where it applies, what it refuses, that a missing
package is a planning error naming the field, and that it stays out of the cache key."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import raypipe
from raypipe import ConfigError
from raypipe.config.tracking import TrackingConfig
from raypipe.exceptions import StageError
from raypipe.runner.cache import cache_key
from raypipe.stages import tracking

PIPELINE = """\
name: tracked
{pipeline_tracking}
stages:
  - name: read
    kind: data.read
    params: {{path: {data}}}
  - name: fit
    kind: train
    inputs: {{train: read.data}}
    params:
      model: {{type: mlp, hidden: [8]}}
{stage_tracking}
  - name: sweep
    kind: tune
    inputs: {{train: read.data}}
    params:
      model: {{type: mlp, hidden: [8]}}
      space: {{epochs: {{choice: [1, 2]}}}}
      metric: val_loss
      mode: min
"""

MLFLOW = "tracking: {mlflow: {tracking_uri: 'file:///tmp/mlruns', experiment: e}}"


def plan(tmp_path: Path, pipeline_tracking: str = "", stage_tracking: str = "") -> Any:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    pd.DataFrame({"x": [1.0, 2.0], "label": [0, 1]}).to_parquet(data / "p0.parquet")
    p = tmp_path / "p.yaml"
    p.write_text(PIPELINE.format(pipeline_tracking=pipeline_tracking, stage_tracking=stage_tracking, data=data))
    return raypipe.load(p)


def test_the_pipelines_tracking_goes_to_its_train_and_tune_stages_unless_they_set_their_own(tmp_path: Path) -> None:
    p = plan(tmp_path, MLFLOW, "      tracking: {mlflow: {experiment: own}}")
    kinds = {name: s.kind.params for name, s in p.stages.items()}
    assert not hasattr(kinds["read"], "tracking")
    assert kinds["sweep"].tracking.mlflow.experiment == "e" and kinds["sweep"].tracking.wandb is None
    assert kinds["fit"].tracking.mlflow.experiment == "own" and kinds["fit"].tracking.mlflow.tracking_uri is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("tracking: {mlflow: {tracking_uri: 'file:///x'}}", "experiment"),
        ("tracking: {mlflow: {experiment: e, uri: x}}", "uri"),
        ("tracking: {wandb: {project: p, mode: offlin}}", "offline"),
        ("tracking: {}", "give `mlflow: {...}`, `wandb: {...}` or both"),
    ],
)
def test_a_bad_tracking_section_is_an_error_naming_its_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        plan(tmp_path, text)
    assert "tracking" in str(e.value) and message in str(e.value)


def test_a_missing_package_is_a_planning_error_naming_the_field_and_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        plan(tmp_path, "", "      tracking: {wandb: {project: digits, mode: offline}}")
    text = str(e.value)
    assert "stages[1].params.tracking.wandb" in text or "stages.fit.params.tracking.wandb" in text, text
    assert "pip install 'raypipe[wandb]'" in text
    config = TrackingConfig.model_validate({"wandb": {"project": "digits", "mode": "offline"}})
    with pytest.raises(
        StageError,
        match=r"^stages\.fit\.params\.tracking\.wandb: needs the 'wandb' package: pip install 'raypipe\[wandb\]'",
    ):
        tracking.require(config, "stages.fit.params")  # the same check in the task, on the node it runs on


def test_tracking_is_not_part_of_the_cache_key(tmp_path: Path) -> None:
    plain, tracked = plan(tmp_path), plan(tmp_path, MLFLOW)
    for name in ("fit", "sweep"):
        inputs = {"train": "0" * 64}
        assert cache_key(plain.stages[name], inputs, {}) == cache_key(tracked.stages[name], inputs, {})
    assert tracked.stages["fit"].kind.params.tracking is not None
    changed = plan(tmp_path, "", "      epochs: 3")
    assert cache_key(changed.stages["fit"], {"train": "0" * 64}, {}) != cache_key(
        plain.stages["fit"], {"train": "0" * 64}, {}
    )


def test_reports_become_numeric_metrics_at_their_step() -> None:
    assert tracking.numeric({"loss": 0.5, "epoch": 2, "ok": True, "name": "x", "bad": float("nan")}) == {
        "loss": 0.5,
        "epoch": 2.0,
    }
    assert tracking.step_of({"epoch": 4, "loss": 1.0}, 0) == 4
    assert tracking.step_of({"step": 7, "epoch": 1}, 0) == 7
    assert tracking.step_of({"loss": 1.0}, 2) == 3


def test_the_best_trial_is_the_one_the_tune_stage_picks() -> None:
    trials = pd.DataFrame(
        {
            "trial_id": ["a_00000", "a_00001", "a_00002"],
            "val_loss_best": [0.4, 0.2, None],
            "error": [None, None, None],
        }
    )
    assert tracking.best_trial(trials, "val_loss", "min") == "a_00001"
    assert tracking.best_trial(trials, "val_loss", "max") == "a_00000"
    trials.loc[1, "error"] = "boom"
    assert tracking.best_trial(trials, "val_loss", "min") == "a_00000"
    assert tracking.best_trial(trials, "accuracy", "max") is None


def test_only_a_file_store_uri_turns_on_mlflows_file_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    tracking.allow_file_store("http://mlflow.internal:5000")
    tracking.allow_file_store("databricks")
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    tracking.allow_file_store("file:///tmp/mlruns")
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
