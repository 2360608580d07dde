"""The model registry end to end on a shared local Ray: raw file -> dataset -> model -> register."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import raypipe
from raypipe.cli import app
from raypipe.runner.executor import StageEvent
from tests.conftest import cli_json

pytestmark = pytest.mark.usefixtures("ray_local")

F = "tests.integration.registry_funcs"


def pipeline(tmp_path: Path, csv: Path, model_input: str = "fit.model") -> raypipe.PipelineConfig:
    stages: list[dict[str, Any]] = [
        {"name": "read", "kind": "data.read", "params": {"path": str(csv)}},
        {"name": "fit", "kind": "python", "inputs": {"data": "read.data"}, "params": {"function": f"{F}:fit"}},
        {
            "name": "evaluate",
            "kind": "python",
            "inputs": {"model": "fit.model"},
            "params": {"function": f"{F}:evaluate"},
        },
        {
            "name": "register",
            "kind": "register",
            "inputs": {"model": model_input, "metrics": "evaluate.metrics"},
            "resources": {"cpu": 0},
            "params": {"name": "means", "aliases": ["candidate"], "description": "predicts the mean"},
        },
    ]
    return raypipe.PipelineConfig(
        name="reg", storage=str(tmp_path / "store"), stages=[raypipe.StageConfig(**s) for s in stages]
    )


def run(cfg: raypipe.PipelineConfig) -> tuple[raypipe.RunResult, dict[str, StageEvent]]:
    events: dict[str, StageEvent] = {}
    res = raypipe.run(cfg, on_event=lambda e: events.__setitem__(e.stage, e))
    assert res.ok, res.errors
    return res, events


def test_register_records_versions_with_the_full_lineage(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"x": range(20), "y": [float(i % 5) for i in range(20)]}).to_csv(csv, index=False)
    db = str(tmp_path / "store" / "raypipe.db")
    cfg = pipeline(tmp_path, csv)

    first, events = run(cfg)
    assert events["register"].message == "registered means v1 @candidate"
    assert first.outputs["register"]["registration"].format == "json"
    detail = raypipe.show_model("means", db=db)
    v1 = detail.version
    assert (v1.version, v1.aliases, detail.description) == (1, ("candidate",), "predicts the mean")
    assert v1.sha256 == first.outputs["fit"]["model"].sha256
    assert (v1.run_id, v1.stage) == (first.run_id, "fit")
    assert v1.metrics == {"mean": 2.0, "score": 1.0}, "the metrics input wins over the model's own"
    assert v1.params == {"lr": 0.1} and v1.code == "fit-v1" and v1.model["label"] == "y"
    assert [(d["sha256"], d["stage"], d["rows"]) for d in v1.datasets] == [
        (first.outputs["read"]["data"].sha256, "read", 20)
    ]
    tree = detail.lineage
    assert tree.produced_by is not None and tree.produced_by.stage == "fit"
    [data] = tree.produced_by.inputs
    assert (data.format, data.sha256) == ("dataset", first.outputs["read"]["data"].sha256)
    assert data.produced_by is not None and data.produced_by.stage == "read"
    [src] = data.produced_by.inputs
    assert (src.format, src.uri, src.size) == ("source", str(csv), csv.stat().st_size)

    runner = CliRunner()
    out = runner.invoke(app, ["model", "show", "means@candidate", "--db", db], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    for text in ("model means v1 @candidate", "<- fit", "data: dataset v", "<- read", f"raw file {csv}"):
        assert text in out.output, (text, out.output)
    as_json = cli_json(runner.invoke(app, ["model", "show", "means:1", "--db", db, "--json"]).output)
    src_json = as_json["lineage"]["produced_by"]["inputs"][0]["produced_by"]["inputs"][0]
    assert src_json["path"] == str(csv) and src_json["format"] == "source"

    # the same pipeline again: every stage a cache hit, still version 1
    again, events = run(cfg)
    assert set(again.stages.values()) == {"cached"}
    assert events["register"].message.endswith("already registered: means v1 @candidate")
    assert [(m.name, m.versions) for m in raypipe.list_models(db=db)] == [("means", 1)]

    # a changed raw file: a new dataset version, a new model, version 2, and candidate moves
    pd.DataFrame({"x": range(30), "y": [float(i % 7) for i in range(30)]}).to_csv(csv, index=False)
    second, events = run(cfg)
    assert second.stages["read"] == "succeeded" and events["register"].message == "registered means v2 @candidate"
    [summary] = raypipe.list_models(db=db)
    assert (summary.versions, summary.latest.version, summary.aliases) == (2, 2, {"candidate": 2})
    v2 = raypipe.show_model("means@candidate", db=db)
    assert v2.version.datasets[0]["sha256"] == second.outputs["read"]["data"].sha256 != v1.datasets[0]["sha256"]
    assert [n.size for n in v2.lineage.sources()] == [csv.stat().st_size]
    assert [(e.alias, e.old_version, e.new_version) for e in v2.alias_history] == [
        ("candidate", None, 1),
        ("candidate", 1, 2),
    ]
    assert raypipe.set_model_alias("means", 1, "production", reason="the stable one", db=db) is not None
    assert raypipe.show_model("means@production", db=db).version.version == 1


def test_register_refuses_an_input_that_is_not_a_model(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"x": [1, 2], "y": [0.0, 1.0]}).to_csv(csv, index=False)
    cfg = pipeline(tmp_path, csv, model_input="read.data")
    res = raypipe.run(cfg)
    assert not res.ok and "is a dataset artifact, not a model" in res.errors["register"]


def test_a_cached_rerun_of_an_old_config_does_not_move_candidate_back(tmp_path: Path) -> None:
    """Issue 17: config A registers v1 @candidate, config B v2 @candidate; A again, all from the
    cache, reports v1 and leaves candidate on v2 (a rollout of digits@candidate stays on v2)."""
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"x": range(20), "y": [float(i % 5) for i in range(20)]}).to_csv(csv, index=False)
    db = str(tmp_path / "store" / "raypipe.db")
    config_a = pipeline(tmp_path, csv)
    config_b = pipeline(tmp_path, csv)
    fit_b = next(s for s in config_b.stages if s.name == "fit")
    fit_b.params["args"] = {"lr": 0.2}  # another model: another version

    _, events = run(config_a)
    assert events["register"].message == "registered means v1 @candidate"
    _, events = run(config_b)
    assert events["register"].message == "registered means v2 @candidate"
    again, events = run(config_a)
    assert set(again.stages.values()) == {"cached"}
    assert events["register"].message.endswith("already registered: means v1 (aliases unchanged: candidate -> v2)"), (
        events["register"].message
    )
    [summary] = raypipe.list_models(db=db)
    assert (summary.versions, summary.aliases) == (2, {"candidate": 2})
    history = raypipe.show_model("means", db=db).alias_history
    assert [(e.alias, e.old_version, e.new_version) for e in history] == [("candidate", None, 1), ("candidate", 1, 2)]
    assert all("(stage run #" in e.reason for e in history)
