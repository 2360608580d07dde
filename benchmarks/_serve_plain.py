"""The serving benchmark's models and its baseline: a plain single Serve deployment."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = [f"px{i}" for i in range(64)]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def mlp_package(folder: Path, seed: int, epochs: int = 30, hidden: int = 128) -> Any:
    """A built-in MLP package in the quickstart's format (px0..px63, standardized)."""
    import torch

    from raypipe.models.builtin import WEIGHTS
    from raypipe.models.networks import build_module
    from raypipe.store.models import ModelPackage

    x, y = digits()
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    spec = {"type": "mlp", "hidden": [hidden, hidden], "dropout": 0.0, "activation": "relu"}
    torch.manual_seed(seed)
    net = build_module(spec, 64, 10)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy((x - mean) / std), torch.from_numpy(y)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / WEIGHTS)
    meta = {
        "task": "classification",
        "features": FEATURES,
        "label": "label",
        "input_schema": {f: "float" for f in FEATURES},
        "classes": list(range(10)),
        "spec": spec,
        "preprocessing": {"standardize": {"mean": mean.tolist(), "std": std.tolist()}},
        "params": {"seed": seed, "epochs": epochs},
        "metrics": {},
        "code": "bench-serving",
    }
    return ModelPackage.create(folder, meta)


class PlainModel:
    """The baseline: one deployment that parses the body and predicts with the same
    model code as raypipe's variant replicas (no validation, no routing, no metrics)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from raypipe.serving.model_variant import ModelVariant

        self.model = ModelVariant(config)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import Response

        body = json.loads(await request.body())
        row = [body["features"][f] for f in self.model.features]
        pred = self.model.predict(uuid.uuid4().hex, [row])
        return Response(json.dumps({"prediction": pred[0]}).encode(), media_type="application/json")
