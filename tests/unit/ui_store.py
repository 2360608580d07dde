"""A small real store for the UI's tests, made without Ray through raypipe's own APIs: the
metadata store's stage runs, the artifact store's objects, the registry, the stage log
capture.  Two runs of a pipeline ``demo`` (raw file -> ingest -> prepare -> train ->
evaluate -> register -> report): the first failed its evaluate once then succeeded, the
second is all cache hits but for its report; and a run whose names and error hold HTML."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raypipe.failures import record
from raypipe.runner.stage_log import capture
from raypipe.stages.base import stage_log_path
from raypipe.store.artifacts import ArtifactRef, ArtifactStore, source_refs
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry, RegisteredBy

EVIL = "<script>alert('x')</script>"

STAGES: list[dict[str, Any]] = [
    {"name": "ingest", "kind": "python", "params": {"function": "demo:ingest"}},
    {"name": "prepare", "kind": "python", "inputs": {"data": "ingest.data"}, "params": {"function": "demo:prep"}},
    {
        "name": "train",
        "kind": "python",
        "inputs": {"table": "prepare.table"},
        "resources": {"cpu": 2},
        "params": {"function": "demo:train", "lr": 0.01},
    },
    {"name": "evaluate", "kind": "python", "inputs": {"model": "train.model", "table": "prepare.table"}},
    {"name": "register", "kind": "register", "inputs": {"model": "train.model", "metrics": "evaluate.metrics"}},
    {"name": "report", "kind": "python", "inputs": {"metrics": "evaluate.metrics"}, "depends_on": ["register"]},
]

REPORT = "# demo report\n\n- rows: 40\n- **accuracy: 0.9**\n\n| class | recall |\n| --- | --- |\n| a | 0.8 |\n"


def png(width: int = 4, height: int = 3) -> bytes:
    """A tiny valid RGB PNG."""
    raw = b"".join(b"\x00" + bytes([200, 40, 40] * width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@dataclass
class DemoStore:
    db: str
    root: str
    runs: list[str] = field(default_factory=list)
    refs: dict[str, ArtifactRef] = field(default_factory=dict)
    stage_runs: dict[str, int] = field(default_factory=dict)


def _stage(meta: MetadataStore, run_id: str, name: str, attempt: int, ins: dict, outs: dict) -> int:
    sid = meta.start_stage(run_id, name, attempt, f"key-{name}")
    meta.succeed_stage(sid, ins, outs, node_id="node0123456789abcdef")
    return sid


def build(tmp: Path, db: str | None = None) -> DemoStore:
    """The store under ``tmp``; its metadata in ``db`` (default: ``tmp/store/raypipe.db``)."""
    root = tmp / "store"
    art = ArtifactStore(str(root))
    raw = tmp / "raw.csv"
    raw.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    demo = DemoStore(db=db or str(root / "raypipe.db"), root=str(root))
    meta = MetadataStore(demo.db)
    reg = ModelRegistry(meta)
    src = source_refs([{"path": str(raw), "size": raw.stat().st_size, "mtime_ns": raw.stat().st_mtime_ns}])
    frame = pd.read_csv(raw)
    r = demo.refs
    r["data"] = art.put_value(frame)
    r["table"] = art.put_value(frame.assign(z=frame["x"] * 2.5))
    r["history"] = art.put_value(
        [
            {"epoch": e, "loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "val_accuracy": 0.5 + e * 0.04}
            for e in range(10)
        ]
    )
    r["metrics"] = art.put_value({"accuracy": 0.9, "f1": 0.875, "rows": 40})
    r["report"] = art.put_value(REPORT)
    plot = tmp / "confusion.png"
    plot.write_bytes(png())
    r["plot"] = art.put_value(plot)
    r["model"] = ArtifactRef(
        uri=str(root / "objects" / "mo" / "model.tar"),
        sha256="ab" * 32,
        size=12_345,
        format="model",
        schema={"task": "classification", "label": "y", "features": ["x", "z"], "classes": [0, 1], "code": "c0de"},
    )

    config = json.dumps({"name": "demo", "storage": str(root), "stages": STAGES})
    first = "demo-20260101-000000-aaaaaa"
    meta.create_run(first, "demo", config, "pipeline.yaml", str(root), actor="alice")
    demo.runs.append(first)
    s = demo.stage_runs
    s["ingest"] = _stage(meta, first, "ingest", 1, src, {"data": r["data"]})
    s["prepare"] = _stage(meta, first, "prepare", 1, {"data": r["data"]}, {"table": r["table"]})
    with capture(stage_log_path(str(root), first, "train", 1), "stage train attempt 1 of run " + first):
        print("epoch 1 loss=0.5")
        print(f"epoch 2 loss=0.25 {EVIL}")
    s["train"] = _stage(meta, first, "train", 1, {"table": r["table"]}, {"model": r["model"], "history": r["history"]})
    failed = meta.start_stage(first, "evaluate", 1, "key-evaluate")
    try:
        raise RuntimeError("evaluation worker ran out of patience")
    except RuntimeError as e:
        meta.fail_stage(failed, "failed", record(e))
    s["evaluate"] = _stage(
        meta, first, "evaluate", 2, {"model": r["model"], "table": r["table"]}, {"metrics": r["metrics"]}
    )
    s["register"] = _stage(meta, first, "register", 1, {"model": r["model"], "metrics": r["metrics"]}, {})
    reg.register(
        "demo-model",
        r["model"],
        first,
        "train",
        s["train"],
        metrics={"accuracy": 0.9, "f1": 0.875},
        aliases=["candidate"],
        description="predicts y",
        by=RegisteredBy(first, "register", s["register"]),
    )
    reg.set_alias("demo-model", 1, "production", reason="first good model")
    s["report"] = _stage(
        meta, first, "report", 1, {"metrics": r["metrics"]}, {"report": r["report"], "plot": r["plot"]}
    )
    meta.finish_run(first, "succeeded")

    second = "demo-20260102-000000-bbbbbb"
    meta.create_run(second, "demo", config, "pipeline.yaml", str(root), actor="bob")
    demo.runs.append(second)
    for name in ("ingest", "prepare", "train", "evaluate", "register"):
        ins = meta.io_of(s[name], "in")
        meta.record_cached(second, name, f"key-{name}", s[name], ins, meta.io_of(s[name], "out"))
    meta.skip_stage(second, "report", "upstream stage register failed")
    meta.finish_run(second, "failed", "stage report was skipped")

    evil = f"evil-{1}"
    meta.create_run(evil, EVIL, json.dumps({"stages": [{"name": EVIL, "kind": "python"}]}), None, str(root), EVIL)
    demo.runs.append(evil)
    bad = meta.start_stage(evil, EVIL, 1, None)
    meta.fail_stage(bad, "failed", f"ValueError: {EVIL}")
    meta.finish_run(evil, "failed", EVIL)
    meta.close()
    return demo
