"""The networks of built-in models (an MLP or a small CNN, behind category embeddings); torch is imported lazily."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raypipe.models.preprocess import Preprocessor


def build_module(spec: Mapping[str, Any], n_in: int, n_out: int) -> Any:
    import torch.nn as nn

    act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[spec.get("activation", "relu")]
    layers: list[Any] = []
    if spec["type"] == "mlp":
        width = n_in
        for h in spec["hidden"]:
            layers += [nn.Linear(width, h), act()]
            if spec.get("dropout"):
                layers.append(nn.Dropout(spec["dropout"]))
            width = h
        layers.append(nn.Linear(width, n_out))
        return nn.Sequential(*layers)
    c, h, w = spec["input_shape"]
    layers.append(nn.Unflatten(1, (c, h, w)))
    for ch in spec["channels"]:
        layers += [nn.Conv2d(c, ch, spec["kernel"], padding="same"), act()]
        c = ch
    ph, pw = min(h, 4), min(w, 4)  # small images keep their layout; larger ones are pooled to 4x4
    layers += [nn.AdaptiveAvgPool2d((ph, pw)), nn.Flatten(), nn.Linear(c * ph * pw, spec["hidden"]), act()]
    if spec.get("dropout"):
        layers.append(nn.Dropout(spec["dropout"]))
    layers.append(nn.Linear(spec["hidden"], n_out))
    return nn.Sequential(*layers)


def _n_out(meta: Mapping[str, Any]) -> int:
    return len(meta["classes"]) if meta["task"] == "classification" else 1


_NET: Any = None


def _net_class() -> Any:
    """:class:`TabularNet` (defined on first use: torch is imported lazily)."""
    global _NET
    if _NET is None:
        import torch
        import torch.nn as nn

        class TabularNet(nn.Module):
            """Embeddings of the embedded categories, concatenated with the dense inputs,
            into the body (the MLP or CNN of the spec)."""

            def __init__(self, body: Any, embeddings: Sequence[tuple[int, int]]) -> None:
                super().__init__()
                self.body = body
                self.embeddings = nn.ModuleList([nn.Embedding(n, d) for n, d in embeddings])

            def forward(self, dense: Any, embedded: Any = None) -> Any:
                if len(self.embeddings) == 0:
                    return self.body(dense)
                parts = [dense] + [e(embedded[:, i]) for i, e in enumerate(self.embeddings)]
                return self.body(torch.cat(parts, dim=1))

        _NET = TabularNet
    return _NET


def build_net(meta: Mapping[str, Any], pre: Preprocessor | None = None) -> Any:
    """The network of a model's metadata: ``net(dense, embedded)``."""
    pre = pre or Preprocessor.from_meta(meta)
    emb = pre.embeddings()
    body = build_module(meta["spec"], pre.width + sum(d for _, d in emb), _n_out(meta))
    return _net_class()(body, emb)


def load_weights(net: Any, state: Mapping[str, Any]) -> None:
    """Load a state dict into :func:`build_net`'s network (packages written before
    embeddings existed hold the body's weights without the ``body.`` prefix)."""
    if state and not any(k.startswith(("body.", "embeddings.")) for k in state):
        state = {f"body.{k}": v for k, v in state.items()}
    net.load_state_dict(state)
