"""Stage functions for integration tests; Ray workers import them by name."""

from __future__ import annotations

import os
import time
from pathlib import Path


def make(n: int = 3) -> dict:
    return {"out": list(range(n))}


def add(x: list, k: int = 1) -> dict:
    return {"out": [v + k for v in x]}


def total(x: list) -> dict:
    return {"sum": sum(x)}


def boom(message: str = "kaboom") -> dict:
    raise ValueError(message)


def flaky(counter: str, fail_times: int = 2) -> dict:
    """Fails ``fail_times`` times (counted in a file), then succeeds."""
    p = Path(counter)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < fail_times:
        raise RuntimeError(f"flaky failure {n + 1}")
    return {"attempts": n + 1}


def slow(seconds: float = 30.0, started: str = "", gate: str = "") -> dict:
    """Writes ``started``, then sleeps while the file ``gate`` exists (up to ``seconds``)."""
    if started:
        Path(started).write_text(str(os.getpid()))
    deadline = time.time() + seconds
    while time.time() < deadline and (not gate or Path(gate).exists()):
        time.sleep(0.05)
    return {"done": True}


def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


def checkpointed_steps(steps: int, step_s: float, log: str, ctx) -> dict:
    """Counts to ``steps``, checkpointing after each step; stops when preempted and resumes
    from its checkpoint on the next grant.  Appends ``attempt step`` lines to ``log``."""
    import json

    from raypipe.exceptions import StagePreempted

    ckpt = Path(ctx.checkpoint_dir) / "state.json"
    start = json.loads(ckpt.read_text())["next"] if ckpt.exists() else 0
    with open(log, "a") as f:
        f.write(f"start {start}\n")
    for i in range(start, steps):
        time.sleep(step_s)
        with open(log, "a") as f:
            f.write(f"step {i}\n")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next": i + 1}))
        tmp.replace(ckpt)
        if i + 1 < steps and ctx.preemption_requested(every_s=0.1):
            raise StagePreempted(f"checkpointed at step {i + 1}")
    return {"resumed_from": start}


# ----------------------------------------------------------------------------- data stages
def add_feature(batch, factor: float = 2.0):
    batch["x2"] = batch["x"] * factor
    return batch


class Offset:
    """A stateful transform (runs on an actor pool): adds ``offset`` set up once per actor."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.pid = os.getpid()

    def __call__(self, batch):
        batch["x"] = batch["x"] + self.offset
        batch["pid"] = self.pid
        return batch


def count_rows(data) -> dict:
    return {"rows": data.count(), "columns": sorted(data.columns())}


def record_task(batch, log_dir: str, hold_s: float = 0.3):
    """Notes where and when each Ray Data task ran (node, start, end) in ``log_dir``."""
    import ray

    start = time.time()
    time.sleep(hold_s)
    node = ray.get_runtime_context().get_node_id()
    Path(log_dir, f"{os.getpid()}-{start:.6f}").write_text(f"{node} {start} {time.time()}")
    return batch


def hold_gang(seconds: float, log: str, gate: str = "") -> dict:
    """A stand-in for a training gang: notes its nodes and time window, holds its grant
    for ``seconds`` or, with ``gate``, while that file exists (at most ``seconds``)."""
    import ray

    pg = ray.util.get_current_placement_group()
    nodes = sorted(set(ray.util.placement_group_table(pg)["bundles_to_node_id"].values())) if pg else []
    start = time.time()
    while time.time() - start < seconds and (not gate or Path(gate).exists()):
        time.sleep(0.05 if gate else seconds)
    Path(log).write_text(f"{start} {time.time()} {' '.join(nodes)}")
    return {"nodes": nodes}


def remove_file(path: str, data) -> dict:
    Path(path).unlink(missing_ok=True)
    return {}


# ----------------------------------------------------------------------------- train stage
def linear_loop(config: dict) -> None:
    """A Ray Train loop: fit y = w.x + b on the streamed ``train`` shard, checkpoint per epoch."""
    import tempfile

    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(torch.nn.Linear(2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "model.pt")
        model.module.load_state_dict(state["model"]) if hasattr(model, "module") else model.load_state_dict(
            state["model"]
        )
        start = state["epoch"] + 1
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start, config["epochs"]):
        rows, loss_sum = 0, 0.0
        for batch in shard.iter_torch_batches(batch_size=32, dtypes=torch.float32):
            x = torch.stack([batch["x1"], batch["x2"]], dim=1)
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), batch["y"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rows += len(x)
            loss_sum += float(loss) * len(x)
        Path(config["log"], f"rank{ctx.get_world_rank()}-epoch{epoch}").write_text(str(rows))
        metrics = {"epoch": epoch, "loss": loss_sum / max(rows, 1), "rows": rows}
        with tempfile.TemporaryDirectory() as d:
            if ctx.get_world_rank() == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "epoch": epoch}, Path(d) / "model.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)


def lose_write_access(store: str, pid_file: str, n: int = 1000) -> dict:
    """Fault injection: the artifact root stops being writable for this worker (as when a
    volume is remounted read-only or its credentials lose write access), then the stage
    returns an array to store.  As root, whom permission bits do not stop, the worker drops
    to ``nobody``; otherwise the root's ``tmp/`` and ``objects/`` become read-only (the test
    restores them).  The pid goes to ``pid_file`` so the test can retire the process."""
    import numpy as np

    Path(pid_file).write_text(str(os.getpid()))
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    else:
        for sub in ("tmp", "objects"):
            Path(store, sub).mkdir(exist_ok=True)
            os.chmod(Path(store, sub), 0o555)
    return {"out": np.arange(n, dtype="float64")}


def fill_disk(limit_bytes: int, pid_file: str, n: int = 200_000) -> dict:
    """Fault injection: this worker process may write files of at most ``limit_bytes`` (as if
    the disk were full), then the stage returns a ``n``-float array (~8n bytes) to store.
    The worker's pid goes to ``pid_file`` so the test can retire the poisoned process."""
    import resource
    import signal

    import numpy as np

    Path(pid_file).write_text(str(os.getpid()))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core dump
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
    return {"out": np.arange(n, dtype="float64")}


def use_column(batch, column: str = "nope"):
    """A transform that reads a column the data may not have."""
    return batch.assign(out=batch[column] * 2)


def divide(batch):
    """A transform that fails on every batch with the user's own error."""
    raise ValueError("cannot divide the amounts: the rate column is empty")


def intervals(batch):
    """A transform whose output has a type the store cannot version (an interval)."""
    import pyarrow as pa

    n = batch.num_rows
    return batch.append_column("gap", pa.array([pa.MonthDayNano([1, 2, 3])] * n, pa.month_day_nano_interval()))


def make_dataset(rows: int = 2000):
    """A python stage that returns a Ray Dataset (its write runs as Ray Data tasks)."""
    import ray.data

    return {"data": ray.data.range(rows, override_num_blocks=4).map_batches(lambda b: {"x": b["id"] * 2})}
