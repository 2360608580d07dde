"""``raypipe plan`` against what the executor then does, ``diff``, ``model diff`` and ``rerun``'s
environment check: a real SQLite store and artifact store, real stage functions run in this
process by an inline backend (no Ray), random edits of a pipeline with hypothesis."""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from raypipe import api
from raypipe.cli import app
from raypipe.config import PipelineConfig
from raypipe.resources import Resources
from raypipe.runner import provenance
from raypipe.runner.backend import StageTask, TaskFailed
from raypipe.runner.cache import hash_document, key_document
from raypipe.runner.executor import Executor, RunResult
from raypipe.runner.forecast import ClusterNodes, Forecast, StagePlan, cluster_fit
from raypipe.runner.keydiff import key_changes
from raypipe.runner.plan import Plan, build_plan
from raypipe.runner.states import StageStatus
from raypipe.runner.task import _run, stage_kind
from raypipe.stages.base import StageContext
from raypipe.store.artifacts import ArtifactStore
from raypipe.store.metadata import MetadataStore

runner = CliRunner()

FUNCS = """
def make(n=1):
    return {"out": n}


def use(x, k=1):
    return {"out": x * k}


def last(x=0, tag="t"):
    return {"out": [x, tag]}
"""


class InlineBackend:
    """Runs each stage task at once in this process (the real stage kind and storage), no Ray."""

    def __init__(self) -> None:
        self.t = 0.0
        self.done: dict[int, Any] = {}
        self.launched: list[str] = []

    def launch(self, task: StageTask) -> int:
        p = task.payload
        self.launched.append(str(p["stage"]))
        ctx = StageContext(
            run_id=p["run_id"], stage=p["stage"], attempt=p["attempt"], resources=Resources(), storage=p["storage"]
        )
        try:
            outs = _run(stage_kind(p), ctx, ArtifactStore(p["storage"]), p, p.get("outputs"))
            result: Any = {"outputs": outs, "node_id": "inline"}
        except Exception as e:  # noqa: BLE001 - handed to the executor as the stage's failure
            result = TaskFailed(e)
        handle = len(self.launched)
        self.done[handle] = result
        return handle

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]:
        return [h for h in handles if h in self.done]

    def result(self, handle: Any, timeout_s: float | None = None) -> Any:
        r = self.done.pop(handle)
        if isinstance(r, TaskFailed):
            raise r
        return r

    def cancel(self, handle: Any) -> None:
        self.done.pop(handle, None)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class Project:
    """A pipeline whose functions live in a module of its own, a store, and its runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.module = f"planfuncs_{uuid.uuid4().hex[:8]}"
        (root / f"{self.module}.py").write_text(FUNCS)
        sys.path.insert(0, str(root))
        self.meta = MetadataStore(str(root / "meta.db"))
        self.artifacts = ArtifactStore(str(root / "store"))
        self.n, self.k, self.tag, self.c_after_b, self.comments = 1, 2, "t", True, 0
        self.runs = 0

    def close(self) -> None:
        self.meta.close()
        sys.path.remove(str(self.root))
        sys.modules.pop(self.module, None)

    def config(self) -> dict[str, Any]:
        f = self.module
        return {
            "name": "edits",
            "storage": self.artifacts.root,
            "stages": [
                {"name": "a", "kind": "python", "params": {"function": f"{f}:make", "args": {"n": self.n}}},
                {
                    "name": "b",
                    "kind": "python",
                    "inputs": {"x": "a.out"},
                    "params": {"function": f"{f}:use", "args": {"k": self.k}},
                },
                {
                    "name": "c",
                    "kind": "python",
                    "inputs": {"x": "b.out"},
                    "params": {"function": f"{f}:last", "args": {"tag": self.tag}},
                },
                {
                    "name": "d",
                    "kind": "python",
                    "depends_on": ["b"] if self.c_after_b else [],
                    "params": {"function": f"{f}:make"},
                },
            ],
        }

    def plan(self) -> Plan:
        return build_plan(PipelineConfig.model_validate(self.config()))

    def edit(self, what: str, value: int) -> None:
        if what == "n":
            self.n = value
        elif what == "k":
            self.k = value  # k=0: b's output is 0 whatever a's is
        elif what == "tag":
            self.tag = "t" if value % 2 else "u"
        elif what == "depends":
            self.c_after_b = not self.c_after_b
        elif what == "code":
            self.comments += 1
            (self.root / f"{self.module}.py").write_text(FUNCS + "\n# edit\n" * self.comments)

    def forecast(self) -> list[StagePlan]:
        return Forecast(self.plan(), self.meta, self.artifacts).stages()

    def run(self) -> tuple[RunResult, str]:
        self.runs += 1
        run_id = f"r{self.runs}"
        plan = self.plan()
        self.meta.create_run(
            run_id, plan.config.name, json.dumps(plan.config.model_dump(mode="json")), None, self.artifacts.root
        )
        ex = Executor(plan, run_id, self.meta, self.artifacts, backend=InlineBackend(), connect=None)
        return ex.execute(), run_id


def agree(predicted: list[StagePlan], result: RunResult, meta: MetadataStore, run_id: str) -> None:
    """What the plan said of each stage is what the run did (and a known key is the key it used)."""
    keys = {sr.stage: sr.cache_key for sr in meta.stage_runs(run_id)}
    for sp in predicted:
        done = result.stages[sp.stage]
        if sp.action == "cached":
            assert done == StageStatus.CACHED, (sp, done)
        elif sp.key_known:
            assert done == StageStatus.SUCCEEDED, (sp, done)
        else:
            assert done in (StageStatus.SUCCEEDED, StageStatus.CACHED), (sp, done)
        if sp.key is not None:
            assert keys[sp.stage] == sp.key, sp.stage


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    yield p
    p.close()


def reasons(stages: list[StagePlan]) -> dict[str, tuple[str, list[str]]]:
    return {s.stage: (s.action, s.reasons) for s in stages}


def test_plan_names_what_changed_and_run_does_what_it_said(project: Project) -> None:
    first = project.forecast()
    assert [s.action for s in first] == ["run"] * 4
    assert first[0].reasons == ["no previous run of pipeline 'edits'"]
    assert not first[1].key_known and "upstream 'a' runs first" in first[1].reasons[0]
    assert first[3].key_known is False  # depends_on b, whose key waits on a's outputs
    result, rid = project.run()
    agree(first, result, project.meta, rid)

    same = project.forecast()
    assert [s.action for s in same] == ["cached"] * 4 and same[0].cached_run == rid
    result, rid = project.run()
    agree(same, result, project.meta, rid)

    project.edit("tag", 2)  # c's params only
    p = reasons(project.forecast())
    assert p["a"][0] == p["b"][0] == p["d"][0] == "cached"
    assert p["c"] == ("run", ['params.args.tag: "t" -> "u"'])
    result, rid = project.run()
    assert result.stages["c"] == StageStatus.SUCCEEDED and result.stages["b"] == StageStatus.CACHED

    project.edit("code", 0)  # every stage's function module
    p = reasons(project.forecast())
    assert p["a"][0] == "run" and p["a"][1][0].startswith("code changed (fingerprint ")
    assert p["d"][0] == "run" and p["d"][1][0].startswith("code changed") and "upstream 'b' runs first" in p["d"][1][1]
    assert p["b"][0] == "run" and p["b"][1][0].startswith("code changed") and "upstream 'a' runs first" in p["b"][1][1]
    result, rid = project.run()
    # a's output did not change: b reads the same input, but its own code changed too
    assert result.stages["b"] == StageStatus.SUCCEEDED


def test_an_upstream_whose_output_comes_out_the_same_lets_the_downstream_reuse_its_cache(project: Project) -> None:
    project.edit("k", 0)
    project.run()
    project.edit("n", 5)  # a runs again; b's output is 0 either way, so c is a cache hit after all
    predicted = project.forecast()
    p = reasons(predicted)
    assert p["a"] == ("run", ["params.args.n: 1 -> 5"])
    assert (
        p["c"][0] == "run" and "upstream 'b' runs first" in p["c"][1][0] and "reuses the cached result" in p["c"][1][0]
    )
    result, rid = project.run()
    agree(predicted, result, project.meta, rid)
    assert result.stages["c"] == StageStatus.CACHED


def test_an_input_sha_and_a_new_stage_are_named(project: Project) -> None:
    project.run()
    project.edit("n", 3)
    project.run()  # a, b ran with the new n: b's input changed
    project.edit("n", 1)  # back: a is cached (run r1), b too
    assert [s.action for s in project.forecast()] == ["cached"] * 4
    doc_old = project.meta.key_doc(project.meta.done_stages("r1")["b"].id)
    doc_new = project.meta.key_doc(project.meta.done_stages("r2")["b"].id)
    assert doc_old is not None and doc_new is not None
    (line,) = key_changes(doc_old, doc_new)
    assert line.startswith("input x: sha ") and " -> " in line
    assert hash_document(doc_new) == project.meta.done_stages("r2")["b"].cache_key
    cfg = project.config()
    cfg["stages"].append({"name": "e", "kind": "python", "params": {"function": f"{project.module}:make"}})
    plan = build_plan(PipelineConfig.model_validate(cfg))
    e = Forecast(plan, project.meta, project.artifacts).stages()[-1]
    assert (e.action, e.reasons) == ("run", ["new stage"])


def test_env_and_cache_off_and_gone_outputs(project: Project) -> None:
    project.run()
    plan = project.plan()
    ps = plan.stages["a"]
    doc = key_document(ps, {}, {})
    old = {**doc, "env": {**doc["env"], "torch": "2.12.0"}}
    assert key_changes(old, doc) == [f'env.torch: "2.12.0" -> {json.dumps(doc["env"]["torch"])}']
    off = Forecast(plan, project.meta, project.artifacts, use_cache=False).stages()
    assert off[0].reasons == ["the cache is off (--no-cache)"]
    out = project.meta.io_of(project.meta.done_stages("r1")["c"].id, "out")["out"]  # c's alone: [2, "t"]
    Path(out.uri.removeprefix("file://")).unlink()
    c = Forecast(plan, project.meta, project.artifacts).stages()[2]
    assert c.action == "run" and "outputs are gone from storage: out" in c.reasons[0]


def test_cluster_fit_words() -> None:
    one = Resources.of(cpu=2)
    nodes = ClusterNodes(
        total=(Resources.of(cpu=4), Resources.of(cpu=2)), free=(Resources.of(cpu=1), Resources.of(cpu=2))
    )
    assert cluster_fit(one, 1, nodes, "") == "fits now"
    assert cluster_fit(one, 2, nodes, "").startswith("waits:")
    assert cluster_fit(Resources.of(cpu=8), 1, nodes, "").startswith("never fits:")
    assert cluster_fit(one, 1, None, "no running Ray cluster") == "cluster not checked: no running Ray cluster"
    assert cluster_fit(Resources(), 1, None, "x") == "asks for no resources"


EDITS = st.lists(
    st.tuples(st.sampled_from(["n", "k", "tag", "depends", "code", "none"]), st.integers(0, 2)), min_size=1, max_size=4
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
def test_plan_agrees_with_run_over_random_edits(edits: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Project(Path(tmp))
        try:
            p.run()
            for what, value in edits:
                p.edit(what, value)
                predicted = p.forecast()
                result, rid = p.run()
                assert result.ok
                agree(predicted, result, p.meta, rid)
        finally:
            p.close()
            importlib.invalidate_caches()


# ----------------------------------------------------------------------------- the commands


def write_pipeline(project: Project) -> Path:
    path = project.root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(project.config()))
    return path


def test_plan_command_json_and_detailed_exit_codes(project: Project) -> None:
    path = write_pipeline(project)
    db = str(project.root / "meta.db")
    base = ["plan", str(path), "--db", db, "--no-cluster"]
    r = runner.invoke(app, [*base, "--json", "--detailed-exitcode"])
    assert r.exit_code == 2, r.output
    doc = json.loads(r.stdout)
    assert doc["would_run"] and doc["summary"]["run"] == ["a", "b", "c", "d"]
    project.run()
    r = runner.invoke(app, [*base, "--detailed-exitcode"], terminal_width=200)
    assert r.exit_code == 0 and "nothing would run" in r.stdout
    r = runner.invoke(app, [*base, "--set", "stages.c.params.args.tag=v", "--json", "--detailed-exitcode"])
    assert r.exit_code == 2
    c = json.loads(r.stdout)["stages"][2]
    assert c["action"] == "run" and c["reasons"] == ['params.args.tag: "t" -> "v"']
    assert c["cluster"] == "cluster not checked: not asked (--no-cluster)"
    bad = project.root / "bad.yaml"
    bad.write_text(yaml.safe_dump({**project.config(), "stages": [{"name": "a", "kind": "python", "params": {}}]}))
    r = runner.invoke(app, ["plan", str(bad), "--db", db, "--no-cluster", "--detailed-exitcode"])
    assert r.exit_code == 1 and "function" in r.output and "Traceback" not in r.output


def test_plan_without_a_store_creates_none(tmp_path: Path) -> None:
    p = Project(tmp_path)
    try:
        path = write_pipeline(p)
        p.meta.close()
        (tmp_path / "meta.db").unlink()
        plan = api.plan_pipeline(path, db=str(tmp_path / "none.db"), check_cluster=False)
        assert not plan.store_found and not (tmp_path / "none.db").exists()
        assert [s.action for s in plan.stages] == ["run"] * 4
    finally:
        p.meta = MetadataStore(str(tmp_path / "meta.db"))
        p.close()


def test_diff_runs_marks_what_changed(project: Project) -> None:
    _, r1 = project.run()
    project.edit("tag", 2)
    project.edit("code", 0)
    _, r2 = project.run()
    d = api.diff_runs(r1, r2, str(project.root / "meta.db"))
    rows = {(r.section, r.name): r for r in d.rows}
    assert rows[("params", "c.args.tag")].a == "t" and rows[("params", "c.args.tag")].b == "u"
    assert rows[("params", "c.args.tag")].differs and not rows[("params", "a.args.n")].differs
    assert rows[("code", "c")].differs and rows[("code", "a")].differs
    assert not rows[("inputs", "b.x")].differs  # a's output is the same
    assert rows[("outputs", "c.out")].differs
    r = runner.invoke(app, ["diff", r1, r2, "--db", str(project.root / "meta.db"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["differences"] == len(d.differing)
    r = runner.invoke(app, ["diff", r1, r2, "--db", str(project.root / "meta.db")], terminal_width=220)
    assert r.exit_code == 0 and "≠" in r.stdout and "rows differ" in r.stdout


def test_environment_changes_are_named() -> None:
    old = {"git_commit": "a" * 40, "git_dirty": False, "python": "3.11.9", "packages": {"torch": "2.12.0", "x": "1"}}
    new = {"git_commit": "b" * 40, "git_dirty": True, "python": "3.11.9", "packages": {"torch": "2.13.0", "y": "2"}}
    assert provenance.environment_changes(old, new) == [
        f"git commit {'a' * 12} -> {'b' * 12}",
        "git working tree clean -> dirty",
        "package torch 2.12.0 -> 2.13.0",
        "package x 1 -> (absent)",
        "package y (absent) -> 2",
    ]
    assert provenance.environment_changes(old, old) == []
    assert "predates" in provenance.environment_changes(None, new)[0]


def test_git_state_of_a_repository(tmp_path: Path) -> None:
    import subprocess

    if subprocess.run(["git", "--version"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no git on this machine")
    assert provenance.git_state(str(tmp_path))["git_commit"] is None
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], capture_output=True, check=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f.txt").write_text("1")
    run("add", "f.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    clean = provenance.git_state(str(tmp_path))
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False
    (tmp_path / "f.txt").write_text("2")
    assert provenance.git_state(str(tmp_path))["git_dirty"] is True


def test_key_documents_and_environments_on_both_stores(metadata_db: str) -> None:
    meta = MetadataStore(metadata_db)
    try:
        meta.create_run("r1", "p", "{}", None, "/tmp/x")
        meta.create_run("r2", "q", "{}", None, "/tmp/x")
        doc = {"v": 1, "kind": "python", "params": {"k": 1}, "env": {"torch": "2.12.0"}}
        s1 = meta.start_stage("r1", "train", 1, "k1", "running", doc)
        meta.succeed_stage(s1, {}, {})
        s2 = meta.start_stage("r1", "train", 2, "k2", "running", {**doc, "params": {"k": 2}})  # failed: not latest done
        meta.fail_stage(s2, "failed", "boom")
        meta.start_stage("r2", "train", 1, "k3", "running", {**doc, "params": {"k": 3}})  # another pipeline
        assert meta.key_doc(s1) == doc and meta.key_doc(s2) is not None
        assert meta.latest_key_doc("p", "train") == (s1, doc)
        assert meta.latest_key_doc("p", "train", before_run="r1") is None
        assert meta.stage_history("p", "train") == (True, True) and meta.stage_history("p", "eval") == (True, False)
        assert meta.stage_history("nope", "train") == (False, False)
        assert meta.run_of(s1) == "r1"
        env = {
            "git_commit": "c" * 40,
            "git_dirty": True,
            "git_root": "/src",
            "python": "3.11.9",
            "packages": {"ray": "2.60.0"},
        }
        meta.record_environment("r1", env)
        meta.record_environment("r1", {**env, "git_dirty": False})  # kept once
        got = meta.environment_of("r1")
        assert got is not None and {k: got[k] for k in env} == env
        assert meta.environment_of("r2") is None
    finally:
        meta.close()


def test_model_diff_shows_params_code_and_metrics(project: Project) -> None:
    import hashlib

    from raypipe.store.artifacts import ArtifactRef
    from raypipe.store.registry import ModelRegistry

    _, r1 = project.run()
    project.meta.record_environment(
        r1, {"git_commit": "a" * 40, "git_dirty": False, "python": "3.11.9", "packages": {"torch": "2.12.0"}}
    )
    sid = project.meta.done_stages(r1)["a"].id

    def ref(tag: str, lr: float, acc: float) -> ArtifactRef:
        schema = {"format": "raypipe-model/1", "task": "classification", "label": "y", "features": ["a"]}
        schema |= {"params": {"lr": lr}, "metrics": {"accuracy": acc}, "code": hashlib.sha256(tag.encode()).hexdigest()}
        digest = hashlib.sha256(tag.encode()).hexdigest()
        return ArtifactRef(uri=f"/store/objects/{digest}.tar", sha256=digest, size=10, format="model", schema=schema)

    reg = ModelRegistry(project.meta)
    reg.register("m", ref("one", 0.1, 0.8), r1, "a", sid)
    reg.register("m", ref("two", 0.2, 0.9), r1, "a", sid)
    d = api.diff_models("m:1", "m:2", str(project.root / "meta.db"))
    rows = {(r.section, r.name): r for r in d.rows}
    assert d.a == "m:1" and d.b == "m:2"
    assert rows[("params", "params.lr")].differs and rows[("metrics", "metrics.accuracy")].b == 0.9
    assert rows[("code", "model code")].differs and not rows[("code", "stage code")].differs
    assert rows[("env", "git_commit")].a == "a" * 40 and not rows[("packages", "torch")].differs
    r = runner.invoke(app, ["model", "diff", "m:1", "m", "--db", str(project.root / "meta.db")], terminal_width=200)
    assert r.exit_code == 0 and "≠" in r.stdout and "metrics.accuracy" in r.stdout
    r = runner.invoke(app, ["model", "diff", "m:1", "m:9", "--db", str(project.root / "meta.db")])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_rerun_prints_what_changed_and_runs_the_recorded_config(project: Project) -> None:
    _, r1 = project.run()
    env = provenance.capture(None)
    project.meta.record_environment(
        r1, {**env, "git_commit": "f" * 40, "packages": {**env["packages"], "torch": "0.0.1"}}
    )
    db = str(project.root / "meta.db")
    r = runner.invoke(app, ["rerun", r1, "--db", db, "--run-id", "again"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert f"rerun of {r1}" in r.stdout and f"package torch 0.0.1 -> {env['packages']['torch']}" in r.stdout
    assert "git commit ffffffffffff -> " in r.stdout
    stages = {sr.stage: sr.status for sr in project.meta.stage_runs("again")}
    assert stages == dict.fromkeys("abcd", "cached")  # the recorded config, unchanged: no stage runs, no Ray
    assert project.meta.environment_of("again") is not None
    r = runner.invoke(app, ["rerun", r1, "--db", db, "--set", "stages.zz.params.x=1"])
    assert r.exit_code == 2 and "no stage named 'zz'" in r.output


def test_a_changed_data_file_is_named(tmp_path: Path) -> None:
    """data.read's files enter its key as a run computes it (``source_fingerprint``); the plan
    names each file that changed since the recorded run (no Ray: the stage is planned, not run)."""
    from raypipe.store.objects import source_refs

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("x\n1\n")
    (data / "b.csv").write_text("x\n2\n")
    cfg = {
        "name": "files",
        "storage": str(tmp_path / "store"),
        "stages": [{"name": "read", "kind": "data.read", "params": {"path": str(data)}}],
    }
    plan = build_plan(PipelineConfig.model_validate(cfg))
    ps = plan.stages["read"]
    meta = MetadataStore(str(tmp_path / "meta.db"))
    try:
        meta.create_run("r1", "files", "{}", None, str(tmp_path / "store"))
        doc = key_document(ps, {}, {})
        sid = meta.start_stage("r1", "read", 1, hash_document(doc), "running", doc)
        meta.succeed_stage(sid, source_refs(ps.kind.source_files() or []), {})
        same = Forecast(plan, meta, ArtifactStore(str(tmp_path / "store"))).stages()[0]
        assert same.action == "cached"  # the key a run computes, found
        (data / "a.csv").write_text("x\n1\n3\n")
        (data / "b.csv").unlink()
        (data / "c.csv").write_text("x\n4\n")
        plan = build_plan(PipelineConfig.model_validate(cfg))
        read = Forecast(plan, meta, ArtifactStore(str(tmp_path / "store"))).stages()[0]
        assert read.action == "run" and read.reasons[0].startswith("source files changed")
        assert read.reasons[1:] == [
            f"file {data}/a.csv: size 4 -> 6 bytes",
            f"file {data}/b.csv: gone",
            f"file {data}/c.csv: new",
        ]
    finally:
        meta.close()
