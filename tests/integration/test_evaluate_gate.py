"""The ``evaluate`` kind's gate: a missed gate fails the stage once (no retry) with a message
naming metric, value, threshold and miss, and the stages after it are skipped; ``beat``
compares with the registry's ``production`` version on the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import raypipe

pytestmark = pytest.mark.usefixtures("ray_local")

F = "tests.integration.registry_funcs"


def _data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    df["label"] = np.where(rng.random(n) < 0.75, 1, 0)  # 75% of rows are class 1
    path = tmp_path / "rows.parquet"
    df.to_parquet(path)
    return path


def _pipeline(tmp_path: Path, src: Path, gate: dict, bias_to: int, aliases: list[str]) -> raypipe.PipelineConfig:
    return raypipe.PipelineConfig(
        name="gate",
        storage=str(tmp_path / "store"),
        stages=[
            raypipe.StageConfig(name="read", kind="data.read", params={"path": str(src)}),
            raypipe.StageConfig(
                name="fit",
                kind="python",
                inputs={"data": "read.data"},
                params={"function": f"{F}:mlp_package", "args": {"bias_to": bias_to}},
                outputs=["model"],
            ),
            raypipe.StageConfig(
                name="evaluate",
                kind="evaluate",
                inputs={"model": "fit.model", "data": "read.data"},
                retries={"max": 2, "backoff_s": 0},
                params={"gate": gate},
            ),
            raypipe.StageConfig(
                name="register",
                kind="register",
                inputs={"model": "fit.model", "metrics": "evaluate.metrics"},
                params={"name": "gated", "aliases": aliases},
            ),
        ],
    )


def test_a_missed_min_gate_blocks_its_dependents_with_its_message(tmp_path: Path) -> None:
    src = _data(tmp_path)
    res = raypipe.run(_pipeline(tmp_path, src, {"min": {"accuracy": 0.9}, "max": {"log_loss": 5.0}}, 1, ["candidate"]))
    assert not res.ok
    assert res.stages["evaluate"] == "failed" and res.stages["register"] == "skipped"
    msg = res.errors["evaluate"]
    assert "gate failed: accuracy 0.7" in msg and "< min 0.9 (missed by 0.1" in msg, msg
    assert "log_loss" not in msg, "the met max gate is not reported as missed"
    db = str(tmp_path / "store" / "raypipe.db")
    attempts = [s for s in raypipe.show_run(res.run_id, db=db).stages if s.stage == "evaluate"]
    assert len(attempts) == 1, "a missed gate is not retried"
    assert res.failures["evaluate"].category == "gate" and res.failures["evaluate"].message == msg
    with pytest.raises(raypipe.ModelNotFoundError):
        raypipe.show_model("gated", db=db)


def test_beat_production_compares_on_the_same_data(tmp_path: Path) -> None:
    src = _data(tmp_path)
    beat = {"beat": {"model": "gated", "alias": "production", "metric": "accuracy", "margin": 0.01}}
    first = raypipe.run(_pipeline(tmp_path, src, beat, 1, ["production"]))  # no production yet: passes
    assert first.ok, first.errors
    db = str(tmp_path / "store" / "raypipe.db")
    metrics = raypipe.read_artifact(first.outputs["evaluate"]["metrics"].sha256, db=db)
    assert metrics["gate"][0]["note"] == "no gated@production yet"
    assert abs(metrics["accuracy"] - 0.75) < 0.06
    worse = raypipe.run(_pipeline(tmp_path, src, beat, 0, ["candidate"]))  # always predicts the 25% class
    assert worse.stages["evaluate"] == "failed" and worse.stages["register"] == "skipped"
    msg = worse.errors["evaluate"]
    assert "does not beat gated@production" in msg and "by margin 0.01" in msg and "missed by" in msg, msg
    assert raypipe.show_model("gated@production", db=db).version.version == 1
