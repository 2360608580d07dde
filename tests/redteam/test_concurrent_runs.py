"""Red team: one pipeline run twice at once (two real `raypipe run` processes on one Ray).

Both runs compute the same dataset (same content-addressed version) at the same moment
(a `meet` stage holds each until the other is there), so their writes race for the same
`datasets/<version>/` and the same objects.  Both must succeed with one intact dataset:
its manifest present, every file there and hashing to it, readable; both runs' outputs
the same; nothing left half-written, no claim left behind; each run's checkpoint folder
its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from raypipe.store import integrity
from raypipe.store.artifacts import ArtifactStore
from raypipe.store.datasets import dataset_exists, read_manifest
from raypipe.store.metadata import MetadataStore
from tests.conftest import REPO, assert_cluster_free

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

F = "tests.redteam.concurrent_funcs"
ROWS = 3000


def pipeline(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for part in range(3):  # three files: several blocks, several parquet files written
        lines = ["id,a,b"] + [f"{i},{i % 97},{i / 8}" for i in range(part * 1000, (part + 1) * 1000)]
        (data / f"p{part}.csv").write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "twin.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            name: twin
            storage: {tmp_path / "store"}
            stages:
              - name: meet
                kind: python
                resources: {{cpu: 0.25}}
                cache: false
                params: {{function: "{F}:meet", args: {{folder: "{tmp_path / "meet"}", runs: 2}}}}
              - name: read
                kind: data.read
                depends_on: [meet]
                resources: {{cpu: 0.5}}
                params: {{path: "{data}"}}
              - name: mark
                kind: python
                depends_on: [meet]
                resources: {{cpu: 0.25}}
                cache: false
                params: {{function: "{F}:mark"}}
              - name: total
                kind: python
                inputs: {{data: read.data}}
                resources: {{cpu: 0.25}}
                params: {{function: "{F}:total"}}
            """
        )
    )
    return cfg


def test_two_runs_of_one_pipeline_at_once_share_one_intact_dataset(
    tmp_path: Path, ray_local: str, reliability: Any
) -> None:
    reliability.fault("two `raypipe run` processes of one pipeline at once")
    cfg = pipeline(tmp_path)
    cmd = [sys.executable, "-m", "raypipe.cli", "run", str(cfg), "--address", ray_local]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("took over the stale claim" in o for o in outs), outs

    store = tmp_path / "store"
    meta = MetadataStore(str(store / "raypipe.db"))
    try:
        runs = meta.list_runs()
        assert len(runs) == 2 and all(r.status == "succeeded" for r in runs)
        outputs: list[dict[str, Any]] = []
        for run in runs:
            done = {sr.stage: sr for sr in meta.stage_runs(run.run_id)}
            assert {s: sr.status for s, sr in done.items() if s in ("meet", "mark")} == {
                "meet": "succeeded",
                "mark": "succeeded",
            }, "both ran at once"
            assert done["read"].status == "succeeded", "both runs wrote the dataset"
            assert done["total"].status in ("succeeded", "cached")
            outputs.append({s: meta.io_of(sr.id, "out") for s, sr in done.items()})
        reliability.records("runs", 2, sum(r.status == "succeeded" for r in runs))
    finally:
        meta.close()

    # the same dataset and the same results in both runs
    first, second = outputs
    assert first["read"] == second["read"] and first["total"] == second["total"]
    artifacts = ArtifactStore(str(store))
    ref = first["read"]["data"]
    assert dataset_exists(artifacts, ref)
    manifest = read_manifest(artifacts, ref)
    folder = Path(ref.uri)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["_manifest.json", *(f["name"] for f in manifest["files"])]
    )
    rows = 0
    for f in manifest["files"]:
        assert integrity.sha256_file(str(folder / f["name"])) == f["sha256"], f"{f['name']} is intact"
        rows += pq.read_table(folder / f["name"]).num_rows
    assert rows == manifest["rows"] == ROWS
    versions = [v.name for v in (store / "datasets").iterdir()]
    assert versions == [ref.sha256], "one dataset version, nothing half-written beside it"
    expected = {"rows": ROWS, "a": sum(i % 97 for i in range(ROWS)), "b": round(sum(i / 8 for i in range(ROWS)), 6)}
    assert json.loads((Path(first["total"]["rows"].uri)).read_text()) == expected["rows"]
    assert json.loads((Path(first["total"]["a"].uri)).read_text()) == expected["a"]
    assert json.loads((Path(first["total"]["b"].uri)).read_text()) == pytest.approx(expected["b"])

    # nothing in flight is left, and each run checkpointed in its own folder
    assert list((store / "tmp").iterdir()) == [] and list((store / "claims").iterdir()) == []
    marks = [Path(json.loads(Path(o["mark"]["folder"].uri).read_text())) for o in outputs]
    owners = [m.relative_to(store / "checkpoints").parts[0] for m in marks]  # checkpoints/<run>/mark/<key>
    assert sorted(owners) == sorted(r.run_id for r in runs)
    assert [(m / "owner").read_text() for m in marks] == owners
    assert_cluster_free()
