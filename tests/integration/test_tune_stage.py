"""The ``tune`` kind: an ASHA sweep inside the stage's grant, resumed after its driver dies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.store.models import ModelPackage

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

F = "tests.integration.tune_funcs"


def outputs(res: raypipe.RunResult, stage: str, store: Path) -> dict:
    db = str(store / "raypipe.db")
    return {name: raypipe.read_artifact(ref.sha256, db=db) for name, ref in res.outputs[stage].items()}


def test_asha_stops_bad_trials_early_and_returns_the_best_within_the_grant(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(size=200)}).to_parquet(tmp_path / "d.parquet")
    log = tmp_path / "log"
    log.mkdir()
    cfg = raypipe.PipelineConfig(
        name="asha",
        storage=str(tmp_path / "store"),
        stages=[
            raypipe.StageConfig(name="read", kind="data.read", params={"path": str(tmp_path / "d.parquet")}),
            raypipe.StageConfig(
                name="sweep",
                kind="tune",
                inputs={"train": "read.data"},
                # 4 x 0.5 CPU would fit the 2-CPU Ray at once; the grant holds 2 bundles.
                resources={"cpu": 0.5},
                gang_size=2,
                params={
                    "function": f"{F}:quality_curve",
                    "config": {"log": str(log), "iterations": 8, "step_s": 0.05},
                    # Grid order: the two good configs run first, the bad ones then meet
                    # their results at ASHA's first rung.
                    "space": {"quality": {"grid": [8, 4, 2, 1]}},
                    "search": "grid",
                    "metric": "loss",
                    "mode": "min",
                    "scheduler": {"asha": {"max_t": 8, "grace_period": 1, "reduction_factor": 2}},
                },
            ),
        ],
    )
    res = raypipe.run(cfg)
    assert res.ok, res.errors
    out = outputs(res, "sweep", tmp_path / "store")
    trials = out["trials"].set_index("config/quality")
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
    for bad in (2, 1):
        assert trials.loc[bad, "stopped_early"], trials
        assert trials.loc[bad, "iterations"] < 8
        assert len(list(log.glob(f"q{bad}-it*"))) == trials.loc[bad, "iterations"], "it really stopped"
    assert trials.loc[8, "iterations"] == 8 and not trials.loc[8, "stopped_early"]
    assert out["best_config"] == {"log": str(log), "iterations": 8, "step_s": 0.05, "quality": 8}
    assert trials.loc[8, "loss_best"] == pytest.approx(10 / 65) and trials.loc[8, "loss_last"] == pytest.approx(10 / 65)
    assert out["metrics"]["loss"] == pytest.approx(10 / 65) and out["metrics"]["training_iteration"] == 8
    model = out["model"]
    assert isinstance(model, ModelPackage)
    assert (model.root / "weights.txt").read_text() == "quality 8\n"
    assert model.meta["trained_by"]["kind"] == "tune" and model.meta["params"]["quality"] == 8

    # Within the grant: never more than 2 trials at once (each trial's span: from the
    # start of its first iteration to the end of its last), and each got the dataset.
    spans: dict[str, list[float]] = {}
    for f in log.iterdir():
        start, end, rows = f.read_text().split()
        assert int(rows) == 200, "each trial got the whole dataset input as a DataFrame"
        q = f.name.split("-")[0]
        span = spans.setdefault(q, [float(start), float(end)])
        span[0], span[1] = min(span[0], float(start)), max(span[1], float(end))
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    running = most = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        most = max(most, running)
    assert most <= 2, f"{most} trials ran at once on a grant of 2 bundles"


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.mkdir()
    store = tmp_path / "store"
    cfg = raypipe.PipelineConfig(
        name="interrupt",
        storage=str(store),
        stages=[
            raypipe.StageConfig(
                name="sweep",
                kind="tune",
                resources={"cpu": 0.5},
                gang_size=2,
                retries={"max": 1, "backoff_s": 0},
                params={
                    "function": f"{F}:interrupted_once",
                    "config": {
                        "log": str(log),
                        "iterations": 3,
                        "killer": 1,
                        "marker": str(tmp_path / "killed"),
                        "storage": str(store / "checkpoints"),
                        "finished_first": 2,
                        "driver_title": "raypipe:interrupt:sweep",
                    },
                    "space": {"quality": {"grid": [8, 4, 2, 1]}},
                    "search": "grid",
                    "metric": "loss",
                    "mode": "min",
                },
            )
        ],
    )
    res = raypipe.run(cfg)
    assert res.ok, res.errors
    assert (tmp_path / "killed").exists(), "the first attempt was killed"
    detail = raypipe.show_run(res.run_id, db=str(store / "raypipe.db"))
    assert [s.attempt for s in detail.stages if s.stage == "sweep"] == [1, 2]
    runs: dict[tuple[int, int], int] = {}
    for f in log.iterdir():
        q, it, _pid = f.name.split("-")
        runs[int(q[1:]), int(it[2:])] = runs.get((int(q[1:]), int(it[2:])), 0) + 1
    for q in (8, 4):  # finished before the kill: not run again
        assert [runs.get((q, i)) for i in range(3)] == [1, 1, 1], runs
    # The trials that were running ran to the end (from their last checkpoint the sweep's
    # saved state knew of: it is saved every 2 s and when a trial ends, so maybe from the start).
    for q in (2, 1):
        assert all(1 <= runs.get((q, i), 0) <= 2 for i in range(3)), runs
    assert runs[1, 1] == 2, "the killer was interrupted in its second iteration"
    out = outputs(res, "sweep", store)
    assert len(out["trials"]) == 4 and set(out["trials"]["status"]) == {"TERMINATED"}
    assert out["best_config"]["quality"] == 8
