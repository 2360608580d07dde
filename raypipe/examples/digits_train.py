"""A Ray Train loop for the digits data (``configs/train_digits.yaml``).

Each worker streams its shard of the ``train`` dataset with
``ray.train.get_dataset_shard``, trains a data-parallel MLP (DDP over gloo on CPU,
NCCL on GPUs), evaluates on its shard of ``test`` and reports per epoch, with a
checkpoint from rank 0.  A restarted run continues from the last checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

FEATURES = [f"px{i}" for i in range(64)]


def _batches(shard: Any, batch_size: int) -> Any:
    import torch

    for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.float32):
        x = torch.stack([batch[c] for c in FEATURES], dim=1) / 16.0
        yield x, batch["label"].long()


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    torch.manual_seed(config.get("seed", 0))
    hidden = config.get("hidden", 128)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )
    model = ray.train.torch.prepare_model(net)
    opt = torch.optim.Adam(model.parameters(), lr=config.get("lr", 1e-3))
    loss_fn = torch.nn.CrossEntropyLoss()
    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "model.pt", weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    rank = ray.train.get_context().get_world_rank()
    train, test = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("test")
    for epoch in range(start, config.get("epochs", 10)):
        model.train()
        seen, loss_sum = 0, 0.0
        for x, y in _batches(train, config.get("batch_size", 64)):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            seen += len(y)
            loss_sum += float(loss) * len(y)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in _batches(test, 256):
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        metrics = {"epoch": epoch, "loss": loss_sum / max(seen, 1), "accuracy": correct / max(total, 1), "rows": seen}
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save(
                    {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, Path(d) / "model.pt"
                )
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)
