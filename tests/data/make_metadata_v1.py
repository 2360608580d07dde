"""Make ``tests/data/metadata_v1.db``: a metadata store written by raypipe at schema version 1.

The fixture was made with the code of commit e8cfe22 (the last one at schema version 1,
before schema versions were read and migrated), so the migration tests open a store exactly
as that raypipe left it.  It was run on that commit's package, extracted beside the
repository (no Ray needed)::

    mkdir -p /tmp/raypipe_v1
    git archive e8cfe22 raypipe | tar -x -C /tmp/raypipe_v1
    PYTHONPATH=/tmp/raypipe_v1 python tests/data/make_metadata_v1.py

What it holds (tests/unit/test_schema_migrations.py checks every item after the upgrade):

* run ``quickstart-1`` (succeeded): read (two raw files) -> preprocess -> train -> evaluate
  -> register; model ``digits`` v1, aliases ``production`` and ``candidate``, a
  ``reference_profile`` link;
* run ``quickstart-2`` (succeeded): read and preprocess cached from run 1, train failed once
  then succeeded, register; ``digits`` v2 @candidate, then @production moved to v2 by hand;
* run ``quickstart-3`` (failed): read failed, train skipped;
* rollout ``digits-1`` (started, step, promoted) and loop cycle ``c1`` of app ``digits``
  (armed, drift, retrain_started, retrain_finished, promoted).

Content hashes are fixed (the sha256 of a name) so the tests can name the artifacts.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys

import raypipe.store.metadata
from raypipe.store.metadata import MetadataStore
from raypipe.store.objects import ArtifactRef
from raypipe.store.registry import ModelRegistry, RegisteredBy
from raypipe.store.rollouts import LoopStore, RolloutStore


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def ref(name: str, fmt: str, schema: dict | None = None, size: int = 100) -> ArtifactRef:
    return ArtifactRef(
        uri=f"/data/project/artifacts/{sha(name)}", sha256=sha(name), size=size, format=fmt, schema=schema
    )


def main(path: str) -> None:
    if getattr(raypipe.store.metadata, "SCHEMA_VERSION", None) != 1:
        sys.exit("run this with the package of commit e8cfe22 on PYTHONPATH (see the docstring)")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    meta = MetadataStore(path)
    reg = ModelRegistry(meta)
    storage = "/data/project/artifacts"
    cfg = '{"name": "quickstart", "stages": []}'

    src = {
        "source:0": ArtifactRef("/data/raw/a.csv", sha("a.csv"), 10, "source", {"mtime_ns": 1}),
        "source:1": ArtifactRef("/data/raw/b.csv", sha("b.csv"), 20, "source", {"mtime_ns": 2}),
    }
    raw = ref("raw", "dataset", {"rows": 1000})
    train, test = ref("train", "dataset", {"rows": 800}), ref("test", "dataset", {"rows": 200})
    model_meta = {"task": "classification", "label": "y", "features": ["x1", "x2"], "metrics": {"accuracy": 0.91}}
    model1 = ref("model-1", "model", {**model_meta, "params": {"C": 1.0}, "code": "code-1"})
    model2 = ref(
        "model-2", "model", {**model_meta, "params": {"C": 2.0}, "code": "code-2", "metrics": {"accuracy": 0.93}}
    )
    metrics1 = ref("metrics-1", "json")

    # run 1: the whole pipeline
    meta.create_run("quickstart-1", "quickstart", cfg, "configs/quickstart.yaml", storage)
    sr = meta.start_stage("quickstart-1", "read", 1, "key-read")
    meta.succeed_stage(sr, src, {"data": raw}, node_id="node-a")
    read1 = sr
    sr = meta.start_stage("quickstart-1", "preprocess", 1, "key-pre", status="queued")
    meta.mark_running(sr)
    meta.succeed_stage(sr, {"data": raw}, {"train": train, "test": test}, node_id="node-a")
    pre1 = sr
    sr = meta.start_stage("quickstart-1", "train", 1, "key-train-1")
    meta.succeed_stage(sr, {"train": train}, {"model": model1}, node_id="node-b")
    train1 = sr
    sr = meta.start_stage("quickstart-1", "evaluate", 1, "key-eval-1")
    meta.succeed_stage(sr, {"model": model1, "test": test}, {"metrics": metrics1}, node_id="node-b")
    sr = meta.start_stage("quickstart-1", "register", 1, None)
    reg.register(
        "digits",
        model1,
        "quickstart-1",
        "train",
        train1,
        aliases=["candidate"],
        aliases_if_unset=["production"],
        description="handwritten digits",
        by=RegisteredBy("quickstart-1", "register", sr),
    )
    meta.succeed_stage(sr, {"model": model1}, {})
    meta.finish_run("quickstart-1", "succeeded")
    reg.link("digits", 1, "reference_profile", {"sha256": sha("profile-1"), "uri": "/data/project/profile-1"})

    # run 2: cache hits, a retried stage, a second version
    meta.create_run("quickstart-2", "quickstart", cfg, "configs/quickstart.yaml", storage)
    meta.record_cached("quickstart-2", "read", "key-read", read1, src, {"data": raw})
    meta.record_cached("quickstart-2", "preprocess", "key-pre", pre1, {"data": raw}, {"train": train, "test": test})
    sr = meta.start_stage("quickstart-2", "train", 1, "key-train-2")
    meta.fail_stage(sr, "failed", "OutOfMemoryError: worker died")
    sr = meta.start_stage("quickstart-2", "train", 2, "key-train-2")
    meta.succeed_stage(sr, {"train": train}, {"model": model2}, node_id="node-c")
    train2 = sr
    sr = meta.start_stage("quickstart-2", "register", 1, None)
    reg.register(
        "digits",
        model2,
        "quickstart-2",
        "train",
        train2,
        aliases=["candidate"],
        by=RegisteredBy("quickstart-2", "register", sr),
    )
    meta.succeed_stage(sr, {"model": model2}, {})
    meta.finish_run("quickstart-2", "succeeded")
    reg.set_alias("digits", 2, "production", reason="promoted by hand")

    # run 3: a failure
    meta.create_run("quickstart-3", "quickstart", cfg, None, storage)
    sr = meta.start_stage("quickstart-3", "read", 1, "key-read-3")
    meta.fail_stage(sr, "failed", "FileNotFoundError: /data/raw/c.csv")
    meta.skip_stage("quickstart-3", "train", "upstream read failed")
    meta.finish_run("quickstart-3", "failed", "stage read failed")

    rollouts = RolloutStore(meta)
    rollouts.record("digits", "digits-1", "started", {"from": "v1", "to": "v2", "weights": {"v1": 90, "v2": 10}})
    rollouts.record("digits", "digits-1", "step", {"weights": {"v1": 50, "v2": 50}})
    rollouts.record("digits", "digits-1", "promoted", {"weights": {"v2": 100}})
    loops = LoopStore(meta)
    loops.record("digits", "loop", "armed", {"pipeline": "configs/quickstart.yaml"})
    loops.record("digits", "c1", "drift", {"features": ["x1"], "psi": 0.4})
    loops.record("digits", "c1", "retrain_started", {"run_id": "quickstart-2"})
    loops.record("digits", "c1", "retrain_finished", {"run_id": "quickstart-2", "version": 2})
    loops.record("digits", "c1", "promoted", {"version": 2})
    meta.close()

    # one small self-contained file: no WAL beside it, 1 KiB pages
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA page_size=1024")
    conn.execute("VACUUM")
    conn.close()


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata_v1.db")
    )
