"""Model packages for the serving tests and benchmark: small built-in MLPs on the digits
data, trained in a second without Ray Train, stored and registered directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raypipe.store.artifacts import ArtifactStore
from raypipe.store.metadata import MetadataStore
from raypipe.store.models import ModelPackage
from raypipe.store.registry import ModelRegistry

FEATURES = [f"px{i}" for i in range(64)]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def mlp_package(folder: Path, seed: int = 0, epochs: int = 30, hidden: int = 32) -> ModelPackage:
    """A built-in MLP (the quickstart's format: px0..px63, standardized) trained full-batch."""
    import torch

    from raypipe.models.builtin import WEIGHTS
    from raypipe.models.networks import build_module

    x, y = digits()
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    spec = {"type": "mlp", "hidden": [hidden], "dropout": 0.0, "activation": "relu"}
    torch.manual_seed(seed)
    net = build_module(spec, 64, 10)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy((x - mean) / std), torch.from_numpy(y)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    acc = float((net(xt).argmax(1) == yt).float().mean())
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / WEIGHTS)
    meta: dict[str, Any] = {
        "task": "classification",
        "features": FEATURES,
        "label": "label",
        "input_schema": {f: "float" for f in FEATURES},
        "classes": list(range(10)),
        "spec": spec,
        "preprocessing": {"standardize": {"mean": mean.tolist(), "std": std.tolist()}},
        "params": {"seed": seed, "epochs": epochs},
        "metrics": {"train_accuracy": acc},
        "code": "serve-test-mlp",
    }
    return ModelPackage.create(folder, meta)


def register_digits(root: Path, versions: int = 2, name: str = "digits") -> str:
    """Store and register ``versions`` MLPs as ``name`` v1.. (v1 @production, the last
    @candidate); returns the metadata database path."""
    store = ArtifactStore(str(root / "store"))
    db = str(root / "raypipe.db")
    meta = MetadataStore(db)
    try:
        reg = ModelRegistry(meta)
        for i in range(versions):
            ref = store.put_value(mlp_package(root / f"model{i}", seed=i, epochs=20 + 10 * i))
            aliases = (["production"] if i == 0 else []) + (["candidate"] if i == versions - 1 and i else [])
            reg.register(name, ref, None, None, None, aliases=aliases)
    finally:
        meta.close()
    return db


def sample_rows(n: int, seed: int = 0) -> list[dict[str, float]]:
    x, _ = digits()
    idx = np.random.default_rng(seed).integers(0, len(x), n)
    return [dict(zip(FEATURES, map(float, x[i]), strict=True)) for i in idx]


def drift_reference(db: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A drift monitor's reference for the digits apps: the data's profile and v1's model metadata."""
    import pandas as pd

    from raypipe.stages.data.profiling import add_counts, finalize, histogram_counts, histogram_edges, partial_profile

    x, y = digits()
    df = pd.DataFrame(x, columns=FEATURES)
    df["label"] = y
    p = partial_profile(df, sample_size=2000, seed=0, max_categories=50)
    edges = histogram_edges(p, 20)
    profile = finalize(p, add_counts({}, histogram_counts(df, edges)), edges)
    meta = MetadataStore(db)
    try:
        model_meta = ModelRegistry(meta).get("digits:1").model
    finally:
        meta.close()
    return profile, model_meta
