"""``raypipe plan`` on a real local Ray: what it predicts for each stage is what ``run`` then
does after edits of the pipeline (none, params, code, a data file), including ``data.read``'s
files; the cluster check reads the running cluster; each run records its environment and the
key documents ``diff`` and ``rerun`` read."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from raypipe import api
from raypipe.runner.executor import RunResult
from raypipe.runner.forecast import StagePlan
from raypipe.store.metadata import MetadataStore

FUNCS = """
def scaled(data, k=1):
    return {"n": data.count() * k}


def label(x, tag="a"):
    return {"out": [x, tag]}
"""


@pytest.fixture(scope="module")
def ray_with_funcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local Ray (2 CPUs) whose workers import stage functions from a folder of this test's."""
    import ray

    folder = tmp_path_factory.mktemp("planfuncs")
    (folder / "plan_e2e_funcs.py").write_text(FUNCS)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *([old] if old else [])])
    sys.path.insert(0, str(folder))
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address, folder
    finally:
        ray.shutdown()
        sys.path.remove(str(folder))
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def agree(predicted: list[StagePlan], result: RunResult, db: str) -> None:
    meta = MetadataStore(db)
    try:
        keys = {sr.stage: sr.cache_key for sr in meta.stage_runs(result.run_id)}
    finally:
        meta.close()
    assert result.ok, result.errors
    for sp in predicted:
        done = result.stages[sp.stage]
        if sp.action == "cached":
            assert done == "cached", (sp, done)
        elif sp.key_known:
            assert done == "succeeded", (sp, done)
        else:
            assert done in ("succeeded", "cached"), (sp, done)
        if sp.key is not None:
            assert keys[sp.stage] == sp.key, sp.stage


def test_plan_agrees_with_run_after_edits(ray_with_funcs: tuple[str, Path], tmp_path: Path) -> None:
    address, folder = ray_with_funcs
    data = tmp_path / "data"
    data.mkdir()
    (data / "part.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    db = str(tmp_path / "store" / "raypipe.db")
    doc: dict[str, Any] = {
        "name": "planned",
        "storage": str(tmp_path / "store"),
        "stages": [
            {"name": "read", "kind": "data.read", "params": {"path": str(data)}},
            {
                "name": "count",
                "kind": "python",
                "inputs": {"data": "read.data"},
                "params": {"function": "plan_e2e_funcs:scaled", "args": {"k": 1}},
            },
            {
                "name": "label",
                "kind": "python",
                "inputs": {"x": "count.n"},
                "params": {"function": "plan_e2e_funcs:label"},
            },
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))

    def plan_and_run(*overrides: str) -> tuple[dict[str, StagePlan], RunResult]:
        p = api.plan_pipeline(path, overrides=overrides, db=db, address=address)
        result = api.run(path, overrides=overrides, db=db, address=address)
        agree(p.stages, result, db)
        return {s.stage: s for s in p.stages}, result

    first, r1 = plan_and_run()
    assert [s.action for s in first.values()] == ["run"] * 3
    assert first["read"].reasons == ["no previous run of pipeline 'planned'"]
    assert first["count"].cluster == "fits now" and first["count"].key_known is False

    same, _ = plan_and_run()
    assert all(s.action == "cached" for s in same.values()) and same["read"].cached_run == r1.run_id

    params, r3 = plan_and_run("stages.count.params.args.k=2")
    assert params["read"].action == "cached"
    assert (params["count"].action, params["count"].reasons) == ("run", ["params.args.k: 1 -> 2"])
    assert params["label"].action == "run" and not params["label"].key_known

    (folder / "plan_e2e_funcs.py").write_text(FUNCS + "\n# an edit\n")
    code, _ = plan_and_run("stages.count.params.args.k=2")
    assert code["read"].action == "cached"
    assert code["count"].action == "run" and code["count"].reasons[0].startswith("code changed")
    assert code["label"].reasons[0].startswith("code changed")

    (data / "part.csv").write_text("a,b\n1,2\n3,4\n5,6\n7,8\n")
    files, r5 = plan_and_run("stages.count.params.args.k=2")
    assert files["read"].action == "run" and files["read"].reasons[0].startswith("source files changed")
    assert files["read"].reasons[1] == f"file {data}/part.csv: size 16 -> 20 bytes"
    assert r5.stages["count"] == "succeeded"  # 4 rows now

    d = api.diff_runs(r1.run_id, r3.run_id, db)
    rows = {(r.section, r.name): r for r in d.differing}
    assert rows[("params", "count.args.k")].a == 1 and rows[("params", "count.args.k")].b == 2
    check = api.rerun_check(r5.run_id, db)
    assert check.recorded is not None and check.recorded["packages"]["ray"] == check.now["packages"]["ray"]
    assert not [c for c in check.changes if c.startswith("package ")]
