"""The runner on a real local Ray: cache, reruns, retries, failures, timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import raypipe
from raypipe.runner.executor import StageEvent
from raypipe.store.metadata import MetadataStore

pytestmark = pytest.mark.usefixtures("ray_local")

F = "tests.integration.funcs"


def stage(name: str, fn: str, **kw: Any) -> raypipe.StageConfig:
    args = kw.pop("args", {})
    return raypipe.StageConfig(name=name, kind="python", params={"function": f"{F}:{fn}", "args": args}, **kw)


def pipe(tmp_path: Path, *stages: raypipe.StageConfig, name: str = "t") -> raypipe.PipelineConfig:
    return raypipe.PipelineConfig(name=name, storage=str(tmp_path / "store"), stages=list(stages))


def statuses(tmp_path: Path, run_id: str) -> dict[str, list[str]]:
    meta = MetadataStore(str(tmp_path / "store" / "raypipe.db"))
    out: dict[str, list[str]] = {}
    for sr in meta.stage_runs(run_id):
        out.setdefault(sr.stage, []).append(sr.status)
    return out


def diamond(tmp_path: Path, k: int = 1) -> raypipe.PipelineConfig:
    return pipe(
        tmp_path,
        stage("a", "make", args={"n": 4}),
        stage("b", "add", inputs={"x": "a.out"}, args={"k": k}),
        stage("c", "total", inputs={"x": "b.out"}),
        stage("d", "total", inputs={"x": "a.out"}),
    )


def test_unchanged_rerun_is_all_cache_hits_and_param_change_reruns_descendants(tmp_path: Path) -> None:
    first = raypipe.run(diamond(tmp_path))
    assert first.ok and set(first.stages.values()) == {"succeeded"}
    second = raypipe.run(diamond(tmp_path))
    assert second.stages == {s: "cached" for s in "abcd"}
    assert second.outputs["c"] == first.outputs["c"]
    third = raypipe.run(diamond(tmp_path, k=10))
    assert third.stages == {"a": "cached", "b": "succeeded", "c": "succeeded", "d": "cached"}
    assert raypipe.read_artifact(third.outputs["c"]["sum"].sha256, db=str(tmp_path / "store" / "raypipe.db")) == 46
    # --no-cache runs everything again, same results.
    fourth = raypipe.run(diamond(tmp_path, k=10), use_cache=False)
    assert set(fourth.stages.values()) == {"succeeded"}
    assert fourth.outputs["c"] == third.outputs["c"]


def test_flaky_stage_is_retried_then_succeeds(tmp_path: Path) -> None:
    events: list[StageEvent] = []
    cfg = pipe(
        tmp_path,
        stage(
            "f", "flaky", args={"counter": str(tmp_path / "n"), "fail_times": 2}, retries={"max": 2, "backoff_s": 0.1}
        ),
    )
    res = raypipe.run(cfg, on_event=events.append)
    assert res.ok
    assert statuses(tmp_path, res.run_id) == {"f": ["failed", "failed", "succeeded"]}
    assert [e.status for e in events].count("retrying") == 2
    retry_msgs = [e.message for e in events if e.status == "retrying"]
    assert "RuntimeError: flaky failure 1" in retry_msgs[0] and "retry in 0.1s" in retry_msgs[0]
    assert "retry in 0.2s" in retry_msgs[1], "backoff doubles"


def test_failing_stage_stops_descendants_but_independent_branch_finishes(tmp_path: Path) -> None:
    cfg = pipe(
        tmp_path,
        stage("bad", "boom", args={"message": "no luck"}),
        stage("after_bad", "make", depends_on=["bad"]),
        stage("good", "sleep", args={"seconds": 1.0}),
        stage("after_good", "make", depends_on=["good"]),
    )
    res = raypipe.run(cfg)
    assert res.status == "failed"
    assert res.stages == {"bad": "failed", "after_bad": "skipped", "good": "succeeded", "after_good": "succeeded"}
    assert res.errors == {"bad": "ValueError: no luck"}
    st = statuses(tmp_path, res.run_id)
    assert st["after_bad"] == ["skipped"]
    detail = raypipe.show_run(res.run_id, db=str(tmp_path / "store" / "raypipe.db"))
    bad = [s for s in detail.stages if s.stage == "bad"][0]
    assert "no luck" in (bad.error or "")
    assert detail.run.status == "failed"


def test_timeout_cancels_the_stage(tmp_path: Path) -> None:
    cfg = pipe(tmp_path, stage("s", "sleep", args={"seconds": 60}, timeout_s=1.5))
    res = raypipe.run(cfg)
    assert res.status == "failed" and res.errors["s"] == "timed out after 1.5s"
    assert statuses(tmp_path, res.run_id) == {"s": ["timeout"]}
    assert res.wall_s < 30
    log = (tmp_path / "store" / "logs" / res.run_id / "s" / "1.log").read_text()
    assert log.splitlines()[-1].endswith(
        "killed by the runner: timed out after 1.5s (its last output may be only in Ray's worker logs)"
    )


def test_undeclared_output_is_a_stage_error(tmp_path: Path) -> None:
    cfg = pipe(tmp_path, stage("a", "make", outputs=["other"]))
    res = raypipe.run(cfg)
    assert res.status == "failed"
    assert "declares outputs ['other'] but returned ['out']" in res.errors["a"]


def test_a_pipeline_on_a_postgresql_metadata_store(tmp_path: Path, postgres: Any) -> None:
    """The same runs on a shared PostgreSQL store: records, cache hits across drivers, read back."""
    url = postgres.new_database()
    cfg = diamond(tmp_path).model_copy(update={"metadata": url})
    first = raypipe.run(cfg)
    assert first.ok and set(first.stages.values()) == {"succeeded"}
    second = raypipe.run(diamond(tmp_path, k=10).model_copy(update={"metadata": url}))
    assert second.stages == {"a": "cached", "b": "succeeded", "c": "succeeded", "d": "cached"}
    assert raypipe.read_artifact(second.outputs["c"]["sum"].sha256, db=url) == 46
    meta = MetadataStore(url)
    try:
        assert [r.status for r in meta.list_runs()] == ["succeeded", "succeeded"]
        assert sorted((sr.stage, sr.status) for sr in meta.stage_runs(second.run_id)) == [
            ("a", "cached"),
            ("b", "succeeded"),
            ("c", "succeeded"),
            ("d", "cached"),
        ]
    finally:
        meta.close()
    assert not (tmp_path / "store" / "raypipe.db").exists()  # nothing went to a SQLite file
