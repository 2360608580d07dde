"""Runs never stay `running` forever; Ray is found as Ray's own commands find it; a Ray job
does not lose its run in Ray's temporary working directory (issue 17), without Ray."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raypipe import api
from raypipe.config import PipelineConfig, RayConfig
from raypipe.exceptions import RaypipeError
from raypipe.runner.ray_session import local_cluster_address, ray_target
from raypipe.store.metadata import MetadataStore


def test_a_run_whose_driver_died_is_shown_interrupted_with_the_reason(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    meta = MetadataStore(db)
    meta.create_run("dead-1", "p", "{}", None, str(tmp_path))
    sid = meta.start_stage("dead-1", "a", 1, "k")
    meta.mark_running(sid)
    meta.create_run("alive-1", "p", "{}", None, str(tmp_path))  # this process: alive
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    meta._conn.execute("UPDATE runs SET driver_pid = ? WHERE run_id = 'dead-1'", (gone.pid,))
    meta.close()
    runs = {r.run_id: r for r in api.list_runs(db)}
    assert runs["dead-1"].status == "interrupted"
    assert f"its driver (pid {gone.pid} on " in (runs["dead-1"].error or "")
    assert runs["alive-1"].status == "running"
    detail = api.show_run("dead-1", db)
    assert [s.status for s in detail.stages] == ["interrupted"]


def test_ray_target_follows_rays_conventions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    cfg = RayConfig(num_cpus=2)
    assert ray_target(cfg) == ("local", "a new local Ray (2 CPUs)")
    with socket.socket() as srv:  # a "GCS" that answers, left by `ray start`
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        addr = f"127.0.0.1:{srv.getsockname()[1]}"
        (tmp_path / "ray_current_cluster").write_text(addr)
        assert local_cluster_address() == addr
        assert ray_target(cfg)[0] == addr and "joins the Ray cluster" in ray_target(cfg)[1]
        assert ray_target(cfg, "local")[0] == "local"  # --local
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
        assert ray_target(cfg) == ("10.0.0.9:6379", "Ray at 10.0.0.9:6379 ($RAY_ADDRESS)")
        assert ray_target(RayConfig(address="head:6379"))[1] == "Ray at head:6379 (the pipeline's ray.address)"
        monkeypatch.delenv("RAY_ADDRESS")
    assert local_cluster_address() is None  # its file is left behind, its GCS is gone
    assert ray_target(cfg)[0] == "local"


def test_a_ray_job_refuses_relative_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = PipelineConfig.model_validate(
        {"name": "p", "storage": ".raypipe", "stages": [{"name": "a", "kind": "python", "params": {"function": "json:dumps"}}]}
    )
    api.check_job_paths(cfg, None)  # not a Ray job: fine
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.delenv("RAYPIPE_DB", raising=False)
    with pytest.raises(RaypipeError, match=r"Ray's temporary copy of --working-dir.*storage '.raypipe'.*--set storage="):
        api.check_job_paths(cfg, None)
    ok = cfg.model_copy(update={"storage": str(tmp_path)})
    api.check_job_paths(ok, None)
    with pytest.raises(RaypipeError, match="metadata store 'rel.db'"):
        api.check_job_paths(ok, "rel.db")
    api.check_job_paths(cfg.model_copy(update={"storage": "s3://bucket/x"}), "postgresql://u@h/db")


def test_a_moved_project_finds_its_artifacts_and_its_records_follow(tmp_path: Path) -> None:
    import shutil

    from raypipe.store.artifacts import ArtifactStore

    old = tmp_path / "old" / ".raypipe"
    ref = ArtifactStore(str(old)).put_value({"accuracy": 0.9})
    db = str(tmp_path / "m.db")
    meta = MetadataStore(db)
    meta.create_run("r1", "p", "{}", None, str(old))
    sid = meta.start_stage("r1", "a", 1, "key")
    meta.succeed_stage(sid, {}, {"metrics": ref})
    shutil.move(str(tmp_path / "old"), str(tmp_path / "new"))
    new = ArtifactStore(str(tmp_path / "new" / ".raypipe"))
    assert not new.exists(ref)
    moved = new.rebased(ref)
    assert moved.uri.startswith(str(tmp_path / "new")) and new.exists(moved) and moved.sha256 == ref.sha256
    assert new.get_value(moved) == {"accuracy": 0.9}
    meta.relocate({"metrics": moved})
    assert meta.io_of(sid, "out")["metrics"].uri == moved.uri
    gone = ArtifactStore(str(tmp_path / "elsewhere"))
    assert gone.rebased(ref) == ref and not gone.exists(ref)
    meta.close()
