"""The ``train`` kind: Ray Train workers stream a dataset artifact's shards, as an admitted gang."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import raypipe
from tests.conftest import assert_cluster_free

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
                # exact linear data: 2 epochs at lr 0.1 get within 0.01 of the weights
                params={"function": f"{F}:linear_loop", "config": {"epochs": 2, "lr": 0.1, "log": str(log)}},
            ),
        ],
    )
    res = raypipe.run(cfg)
    assert res.ok, res.errors
    seen = {p.name: int(p.read_text()) for p in log.iterdir()}
    for epoch in range(2):
        per_rank = [seen[f"rank{r}-epoch{epoch}"] for r in (0, 1)]
        assert sum(per_rank) == n and min(per_rank) > 0, f"each worker streamed its own shard: {per_rank}"
    db = str(tmp_path / "store" / "raypipe.db")
    history = raypipe.read_artifact(res.outputs["fit"]["history"].sha256, db=db)
    assert [h["epoch"] for h in history] == [0, 1] and history[-1]["loss"] < history[0]["loss"]
    model = raypipe.read_artifact(res.outputs["fit"]["model"].sha256, db=db)
    assert model.meta["trained_by"]["function"] == f"{F}:linear_loop"
    assert model.meta["input_schema"] == {"x1": "double", "x2": "double", "y": "double"}
    state = torch.load(model.file("model.pt"))
    np.testing.assert_allclose(state["model"]["weight"].numpy().ravel(), [3.0, -2.0], atol=0.15)


def _train_worker_pids() -> list[int]:
    """Ray Train worker processes on this machine (Ray titles them ``ray::RayTrainWorker...``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


def _kill_a_worker_after_epoch(store: Path, epoch: int, killed: list[int], stop: threading.Event) -> None:
    """Once the history shows ``epoch`` reported, SIGKILL one Ray Train worker process."""
    while not stop.is_set():
        for hist in store.glob("checkpoints/*/fit/*/history.jsonl"):
            rows = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
            if any(r["epoch"] >= epoch for r in rows):
                workers = _train_worker_pids()
                if workers:
                    pid = workers[-1]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.2)


def test_builtin_mlp_two_workers_converge_and_resume_after_a_worker_is_killed(tmp_path: Path, reliability: Any) -> None:
    """The digits dataset, 2 DDP workers (gloo): one is killed once the first epoch is reported (its
    checkpoint is saved by then); Ray Train restarts the group from the last checkpoint (the epochs
    continue; nothing restarts from zero) and it converges."""
    store = tmp_path / "store"
    cfg = raypipe.PipelineConfig(
        name="train-builtin",
        storage=str(store),
        stages=[
            raypipe.StageConfig(
                name="read",
                kind="data.read",
                params={"package": "sklearn.datasets", "path": "data/digits.csv.gz", "csv": {"header": False}},
            ),
            raypipe.StageConfig(
                name="label",
                kind="data.transform",
                inputs={"data": "read.data"},
                params={"function": "raypipe.examples.quickstart:name_columns"},
            ),
            raypipe.StageConfig(
                name="split",
                kind="data.split",
                inputs={"data": "label.data"},
                params={"fractions": {"train": 0.8, "test": 0.2}},
            ),
            raypipe.StageConfig(
                name="fit",
                kind="train",
                inputs={"train": "split.train", "validation": "split.test"},
                resources={"cpu": 0.5},
                gang_size=2,
                params={
                    "model": {"type": "mlp", "hidden": [64]},
                    "optimizer": {"lr": 0.01},  # above 0.95 validation accuracy in 4 epochs
                    "epochs": 4,
                    "max_failures": 2,
                },
            ),
        ],
    )
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker_after_epoch, args=(store, 0, killed, stop), daemon=True)
    killer.start()
    try:
        res = raypipe.run(cfg)
    finally:
        stop.set()
        killer.join()
    assert res.ok, res.errors
    assert killed, "a training worker was killed"
    reliability.fault("a DDP training worker SIGKILLed after an epoch")
    db = str(store / "raypipe.db")
    history = raypipe.read_artifact(res.outputs["fit"]["history"].sha256, db=db)
    starts = [h["start_epoch"] for h in history]
    assert starts[0] == 0 and starts[-1] > 0, f"the restarted group resumed from a checkpoint: {history}"
    first_resumed = starts.index(starts[-1])
    assert history[first_resumed]["epoch"] == starts[-1], "it continued at the epoch after its checkpoint"
    assert all(h["start_epoch"] == starts[-1] for h in history[first_resumed:])
    assert [h["epoch"] for h in history][-1] == 3
    assert history[-1]["val_accuracy"] > 0.9, history[-1]
    model = raypipe.read_artifact(res.outputs["fit"]["model"].sha256, db=db)
    assert model.meta["spec"]["type"] == "mlp" and len(model.meta["features"]) == 64
    assert model.meta["classes"] == list(range(10))
    assert_cluster_free()
