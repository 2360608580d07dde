"""One model version served by a Serve deployment: the package loaded from the artifact
store, rows predicted (the variant replicas behind the router)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from raypipe.models.builtin import predictor
from raypipe.serving.routing import unit_hash
from raypipe.serving.validation import (
    LabelSchema,
)
from raypipe.store.artifacts import ArtifactRef, ArtifactStore, root_of

#: The variants' replicas run their (async) user code on the replica's event loop too; a
#: forward pass of more than ``INLINE_ROWS`` rows (or a user ``predict``) goes to a thread.
VARIANT_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
INLINE_ROWS = 256


def short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    last = text[-1] if text else type(e).__name__
    return last[:300]


class InjectedFailure(RuntimeError):
    """A failure made on purpose by a variant's ``fail_rate`` (testing only)."""


def import_object(target: str) -> Any:
    import importlib

    module, _, qual = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


class ModelVariant:
    """Replicas of one model version: load the package from the artifact store, predict rows."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)
        self.label = config["label"]
        self.fail_rate = float(config.get("fail_rate") or 0.0)
        ref = ArtifactRef(uri=config["uri"], sha256=config["sha256"], size=int(config["size"]), format="model")
        self.package = ArtifactStore(root_of(ref.uri)).get_value(ref)
        meta = self.package.meta
        self.features = list(meta.get("features") or [])
        self.task = meta.get("task")
        self.custom = None
        self.fast = None
        if meta.get("spec"):
            self.fast = predictor(self.package)
        elif meta.get("predict"):
            self.custom = import_object(str(meta["predict"]))
        else:
            raise RuntimeError(
                f"variant {self.label}: the model was trained by a user loop without a `predict` function; "
                "set `predict` in its train stage"
            )

    def _forward(self, rows: list[list[Any]]) -> tuple[list[Any], list[int]]:
        """Predictions of rows (in feature order), and per row the values of categories the
        model never saw (encoded as "other")."""
        import numpy as np

        if self.fast is not None:
            p = self.fast
            enc = p.pre.encode_rows(rows)
            preds = p.labels(p.forward(enc)).tolist()
            unseen = enc.unseen_rows.tolist() if enc.unseen_rows is not None else [0] * len(rows)
            return preds, unseen
        import pandas as pd

        df = pd.DataFrame(rows, columns=self.features)
        return np.asarray(self.custom(self.package, df)).tolist(), [0] * len(rows)  # type: ignore[misc]

    def label_schema(self) -> dict[str, Any]:
        """What a true label of this model's predictions is (``/feedback``'s ``label``):
        ``{"task", "classes"}`` (:class:`~raypipe.serving.validation.LabelSchema`)."""
        return LabelSchema.from_meta(self.package.meta).to_dict()

    def _injected(self, request_id: str) -> bool:
        return bool(self.fail_rate) and unit_hash("fail", request_id) < self.fail_rate

    def predict(self, request_id: str, rows: list[list[Any]]) -> list[Any]:
        """Predictions for one request's rows."""
        if self._injected(request_id):
            raise InjectedFailure(f"variant {self.label}: injected failure (fail_rate {self.fail_rate:g})")
        return self._forward(rows)[0]

    async def predict_many(self, request_ids: list[str], batches: list[list[list[Any]]]) -> list[dict[str, Any]]:
        """Several requests in one forward pass: ``{"ok": True, "p": [...]}`` or
        ``{"ok": False, "error": "..."}`` per request, in order.  Async and run on the
        replica's event loop (``VARIANT_ENV``): a small built-in model's forward pass runs
        inline, with no thread hand-off; big batches and user ``predict`` functions go to a
        thread.  The router sends each replica at most two calls at a time."""
        out: list[dict[str, Any]] = [{"ok": False, "error": ""} for _ in request_ids]
        take = [i for i, rid in enumerate(request_ids) if not self._injected(rid)]
        for i in set(range(len(request_ids))) - set(take):
            out[i]["error"] = f"variant {self.label}: injected failure (fail_rate {self.fail_rate:g})"
        rows = [row for i in take for row in batches[i]]
        if rows:
            try:
                if self.custom is not None or len(rows) > INLINE_ROWS:
                    preds, unseen = await asyncio.to_thread(self._forward, rows)
                else:
                    preds, unseen = self._forward(rows)
            except Exception as e:  # noqa: BLE001 - the model's error goes to each request
                for i in take:
                    out[i]["error"] = f"{type(e).__name__}: {short_error(e)}"
                return out
            at = 0
            for i in take:
                n = len(batches[i])
                out[i] = {"ok": True, "p": preds[at : at + n], "unseen": sum(unseen[at : at + n])}
                at += n
        return out


class _LocalMethod:
    """``handle.method.remote(*args)`` of a Serve handle, for an object in this process: an
    awaitable of the method's result (a coroutine, run on the caller's event loop)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        result = self.fn(*args)
        if asyncio.iscoroutine(result):
            return result

        async def done() -> Any:
            return result

        return done()


class LocalVariant:
    """A variant loaded in the router's own replica (colocated mode): the calls the router
    makes of a variant's Serve handle (``predict_many``, ``label_schema``), answered by a
    :class:`ModelVariant` built from the same config the variant's deployment gets."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.model = ModelVariant(config)
        self.predict_many = _LocalMethod(self.model.predict_many)
        self.label_schema = _LocalMethod(self.model.label_schema)
