"""The ``train`` kind: Ray Train workers stream a dataset artifact's shards, as an admitted gang."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import raypipe

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

F = "tests.integration.funcs"


def test_two_workers_stream_their_shards_of_a_dataset_and_checkpoint(tmp_path: Path) -> None:
    import torch

    rng = np.random.default_rng(0)
    n = 1200
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    df["y"] = 3 * df["x1"] - 2 * df["x2"] + 1
    (tmp_path / "src").mkdir()
    for i in range(4):
        df.iloc[i * 300 : (i + 1) * 300].to_parquet(tmp_path / "src" / f"p{i}.parquet")
    log = tmp_path / "log"
    log.mkdir()
    cfg = raypipe.PipelineConfig(
        name="train",
        storage=str(tmp_path / "store"),
        stages=[
            raypipe.StageConfig(name="read", kind="data.read", params={"path": str(tmp_path / "src")}),
            raypipe.StageConfig(
                name="fit",
                kind="train",
                inputs={"train": "read.data"},
                resources={"cpu": 0.5},
                gang_size=2,
                params={"function": f"{F}:linear_loop", "config": {"epochs": 3, "lr": 0.05, "log": str(log)}},
            ),
        ],
    )
    res = raypipe.run(cfg)
    assert res.ok, res.errors
    seen = {p.name: int(p.read_text()) for p in log.iterdir()}
    for epoch in range(3):
        per_rank = [seen[f"rank{r}-epoch{epoch}"] for r in (0, 1)]
        assert sum(per_rank) == n and min(per_rank) > 0, f"each worker streamed its own shard: {per_rank}"
    db = str(tmp_path / "store" / "raypipe.db")
    history = raypipe.read_artifact(res.outputs["fit"]["history"].sha256, db=db)
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[-1]["loss"] < history[0]["loss"]
    archive = raypipe.read_artifact(res.outputs["fit"]["checkpoint"].sha256, db=db)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "ckpt", filter="data")
    state = torch.load(tmp_path / "ckpt" / "model.pt")
    np.testing.assert_allclose(state["model"]["weight"].numpy().ravel(), [3.0, -2.0], atol=0.15)
