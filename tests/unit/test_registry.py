"""The model registry on a SQLite file and on PostgreSQL (no Ray): versions, aliases, references, lineage, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import raypipe
from raypipe.cli import app
from raypipe.exceptions import ConfigError, ModelNotFoundError, RaypipeError
from raypipe.store.artifacts import ArtifactRef, source_refs
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry, RegisteredBy, parse_ref

REPO = Path(__file__).resolve().parents[2]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model_ref(tag: str, **meta: Any) -> ArtifactRef:
    schema = {
        "format": "raypipe-model/1",
        "task": "classification",
        "label": "y",
        "features": ["a", "b"],
        "params": {"lr": 0.1, "tag": tag},
        "metrics": {"accuracy": 0.9},
        "code": sha("code-" + tag),
        **meta,
    }
    return ArtifactRef(
        uri=f"/store/objects/{tag}.tar", sha256=sha("model-" + tag), size=1000, format="model", schema=schema
    )


def dataset_ref(tag: str, rows: int) -> ArtifactRef:
    return ArtifactRef(
        uri=f"/store/datasets/{sha(tag)}",
        sha256=sha("ds-" + tag),
        size=rows * 10,
        format="dataset",
        schema={"num_rows": rows},
    )


@pytest.fixture()
def store(metadata_db: str) -> MetadataStore:
    meta = MetadataStore(metadata_db)
    yield meta
    meta.close()


def stage(
    meta: MetadataStore, run_id: str, name: str, inputs: dict[str, ArtifactRef], outputs: dict[str, ArtifactRef]
) -> int:
    sid = meta.start_stage(run_id, name, 1, f"key-{run_id}-{name}")
    meta.succeed_stage(sid, inputs, outputs)
    return sid


def build_lineage(meta: MetadataStore, tmp_path: Path) -> dict[str, Any]:
    """a.csv, b.csv -read-> raw -split-> train, test -fit(train, valid=test)-> model."""
    files = []
    for name, size in (("a.csv", 120), ("b.csv", 80)):
        p = tmp_path / name
        p.write_text("x" * size)
        files.append({"path": str(p), "size": size, "mtime_ns": p.stat().st_mtime_ns})
    sources = source_refs(files)
    raw, train, test = dataset_ref("raw", 100), dataset_ref("train", 80), dataset_ref("test", 20)
    model = model_ref("m1")
    meta.create_run("run-1", "p", "{}", None, "/store")
    sids = {
        "read": stage(meta, "run-1", "read", sources, {"data": raw}),
        "split": stage(meta, "run-1", "split", {"data": raw}, {"train": train, "test": test}),
        "fit": stage(meta, "run-1", "fit", {"train": train, "valid": test}, {"model": model}),
    }
    return {"sources": sources, "raw": raw, "train": train, "test": test, "model": model, "sids": sids}


# ---------------------------------------------------------------------------------------------- versions
def test_versions_are_numbered_per_name_and_registering_again_is_idempotent(store: MetadataStore) -> None:
    reg = ModelRegistry(store)
    v1 = reg.register("digits", model_ref("a"), "run-1", "train", 1)
    assert (v1.version, v1.is_new, v1.aliases) == (1, True, ())
    again = reg.register("digits", model_ref("a"), "run-2", "train", 7, aliases=["candidate"])
    assert (again.version, again.is_new, again.run_id, again.aliases) == (1, False, "run-1", ("candidate",))
    v2 = reg.register("digits", model_ref("b"), "run-3", "train", 9, metrics={"f1": 0.5}, description="digit MLP")
    other = reg.register("iris", model_ref("a"), "run-1", "train", 1)
    assert (v2.version, other.version) == (2, 1)
    assert [v.version for v in reg.versions("digits")] == [1, 2]
    # metrics: the given ones, else the model's own; params and code from the model metadata
    assert v1.metrics == {"accuracy": 0.9} and v2.metrics == {"f1": 0.5}
    assert v2.params == {"lr": 0.1, "tag": "b"} and v2.code == sha("code-b")
    assert v2.model["task"] == "classification" and v2.uri == "/store/objects/b.tar"
    assert reg.get("digits").version == 2 and reg.get("digits:1").sha256 == sha("model-a")
    assert reg.get("digits@candidate").version == 1
    [d, i] = reg.list_models()
    assert (d.name, d.versions, d.latest.version, d.aliases, d.description) == (
        "digits",
        2,
        2,
        {"candidate": 1},
        "digit MLP",
    )
    assert (i.name, i.versions) == ("iris", 1)
    assert d.to_dict()["latest_metrics"] == {"f1": 0.5}
    with pytest.raises(RaypipeError, match="not a model"):
        reg.register("digits", dataset_ref("x", 3), "run-1", "read", 1)
    with pytest.raises(RaypipeError, match="model name '9lives'"):
        reg.register("9lives", model_ref("c"), "run-1", "train", 1)


def test_aliases_move_and_every_change_is_in_the_history(store: MetadataStore) -> None:
    reg = ModelRegistry(store)
    reg.register("m", model_ref("a"), "r1", "train", 1, aliases=["candidate"])
    reg.register("m", model_ref("b"), "r2", "train", 2, aliases=["candidate"], reason="stage register of run r2")
    assert reg.get("m@candidate").version == 2
    ev = reg.set_alias("m", 1, "production", reason="passed review")
    assert ev is not None and (ev.old_version, ev.new_version) == (None, 1)
    assert reg.set_alias("m", 1, "production") is None  # no change, no event
    moved = reg.set_alias("m", 2, "production", reason="canary 10% ok")
    assert moved is not None and (moved.old_version, moved.new_version) == (1, 2)
    assert reg.get("m:2").aliases == ("candidate", "production")
    with pytest.raises(RaypipeError, match="points at version 2, not 1"):
        reg.remove_alias("m", "production", version=1)
    gone = reg.remove_alias("m", "production", reason="rollback", version=2)
    assert (gone.old_version, gone.new_version) == (2, None)
    history = [(e.alias, e.old_version, e.new_version, e.reason) for e in reg.alias_history("m")]
    assert history == [
        ("candidate", None, 1, "registered from run r1 stage train"),
        ("candidate", 1, 2, "stage register of run r2"),
        ("production", None, 1, "passed review"),
        ("production", 1, 2, "canary 10% ok"),
        ("production", 2, None, "rollback"),
    ]
    assert [e.new_version for e in reg.alias_history("m", "candidate")] == [1, 2]
    with pytest.raises(ModelNotFoundError, match="no version 5; versions: 1, 2"):
        reg.set_alias("m", 5, "production")
    with pytest.raises(RaypipeError, match="alias 'bad alias'"):
        reg.set_alias("m", 1, "bad alias")
    with pytest.raises(ModelNotFoundError, match="has no alias 'production'; aliases: candidate -> v2"):
        reg.remove_alias("m", "production")


def test_references_and_their_errors_name_what_exists(store: MetadataStore) -> None:
    reg = ModelRegistry(store)
    assert parse_ref("digits") == ("digits", None, None)
    assert parse_ref("digits:3") == ("digits", 3, None)
    assert parse_ref("my.model-2@production") == ("my.model-2", None, "production")
    with pytest.raises(ModelNotFoundError, match="no model is registered yet"):
        reg.get("digits")
    reg.register("digits", model_ref("a"), "r1", "train", 1, aliases=["candidate"])
    reg.register("iris", model_ref("b"), "r1", "train", 2)
    cases = {
        "digit": "no model 'digit' in .*; registered: digits, iris",
        "digits:4": "model 'digits' has no version 4; versions: 1",
        "digits@production": "model 'digits' has no alias 'production'; aliases: candidate -> v1",
        "iris@production": "model 'iris' has no alias 'production'; it has no aliases",
    }
    for ref, message in cases.items():
        with pytest.raises(ModelNotFoundError, match=message):
            reg.get(ref)
    for bad in ("digits:x", "digits:0", "digits@", "@prod", "1digits", "digits:1@prod", ""):
        with pytest.raises(RaypipeError, match="expected NAME, NAME:VERSION"):
            reg.get(bad)


_WORKER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pathlib import Path
    from raypipe.store.artifacts import ArtifactRef
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.registry import ModelRegistry

    db, go, lo, hi = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    reg = ModelRegistry(MetadataStore(db))
    while not go.exists():
        time.sleep(0.005)
    for i in range(lo, hi):
        ref = ArtifactRef(f"/o/{i}", hashlib.sha256(b"m%d" % i).hexdigest(), 1, "model", {"metrics": {"i": i}})
        reg.register("shared", ref, "run", "train", None, aliases=["candidate"])
    """
)


def test_two_processes_registering_at_once_get_distinct_versions(tmp_path: Path, metadata_db: str) -> None:
    db, go = metadata_db, tmp_path / "go"
    MetadataStore(db).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, db, str(go), str(lo), str(hi)], env=env)
        for lo, hi in ((0, 30), (15, 45))  # 15 artifacts registered by both
    ]
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    meta = MetadataStore(db)
    try:
        versions = ModelRegistry(meta).versions("shared")
        assert [v.version for v in versions] == list(range(1, 46))
        assert sorted(v.metrics["i"] for v in versions) == list(range(45))
        assert ModelRegistry(meta).list_models()[0].aliases["candidate"] in range(1, 46)
    finally:
        meta.close()


# ---------------------------------------------------------------------------------------------- lineage
def test_lineage_tree_goes_from_the_model_to_the_raw_files_showing_shared_nodes_once(
    store: MetadataStore, tmp_path: Path
) -> None:
    g = build_lineage(store, tmp_path)
    reg = ModelRegistry(store)
    tree = reg.lineage_tree(g["model"].sha256)
    assert (tree.format, tree.produced_by.stage, tree.produced_by.stage_run_id) == ("model", "fit", g["sids"]["fit"])
    train, valid = tree.produced_by.inputs
    assert (train.as_input, train.sha256, train.rows) == ("train", g["train"].sha256, 80)
    assert (valid.as_input, valid.sha256) == ("valid", g["test"].sha256)
    raw = train.produced_by.inputs[0]
    assert raw.produced_by.stage == "read" and not raw.repeated
    assert [(s.as_input, s.uri, s.size) for s in raw.produced_by.inputs] == [
        ("source:0", str(tmp_path / "a.csv"), 120),
        ("source:1", str(tmp_path / "b.csv"), 80),
    ]
    # `raw` is reached again through the other split output: a reference, not a second subtree
    again = valid.produced_by.inputs[0]
    assert again.sha256 == g["raw"].sha256 and again.repeated and again.produced_by is None
    assert [s.uri for s in tree.sources()] == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    d = tree.to_dict()
    json.dumps(d)
    src = d["produced_by"]["inputs"][0]["produced_by"]["inputs"][0]["produced_by"]["inputs"][0]
    assert src["path"] == str(tmp_path / "a.csv") and src["mtime_ns"] > 0 and src["produced_by"] is None
    assert d["produced_by"]["inputs"][0]["version"] == g["train"].sha256
    # registering records the datasets of that lineage with the stages that made them
    mv = reg.register("m", g["model"], "run-1", "fit", g["sids"]["fit"])
    assert [(x["sha256"], x["stage"], x["rows"]) for x in mv.datasets] == [
        (g["train"].sha256, "split", 80),
        (g["raw"].sha256, "read", 100),
        (g["test"].sha256, "split", 20),
    ]


def test_lineage_prefers_the_stage_runs_of_the_given_run(store: MetadataStore, tmp_path: Path) -> None:
    g = build_lineage(store, tmp_path)
    store.create_run("run-2", "p", "{}", None, "/store")
    for name, ins, outs in (
        ("read", g["sources"], {"data": g["raw"]}),
        ("split", {"data": g["raw"]}, {"train": g["train"], "test": g["test"]}),
        ("fit", {"train": g["train"], "valid": g["test"]}, {"model": g["model"]}),
    ):
        store.record_cached("run-2", name, f"key-run-1-{name}", g["sids"][name], ins, outs)
    reg = ModelRegistry(store)
    first = reg.lineage_tree(g["model"].sha256)
    assert {n.produced_by.run_id for n in first.walk() if n.produced_by} == {"run-1"}
    second = reg.lineage_tree(g["model"].sha256, "run-2")
    steps = [n.produced_by for n in second.walk() if n.produced_by]
    assert {p.run_id for p in steps} == {"run-2"} and {p.status for p in steps} == {"cached"}
    producer = reg.producer_of(g["model"].sha256, "run-2")
    assert producer["status"] == "cached" and producer["cached_from"] == g["sids"]["fit"]


def test_an_existing_database_gets_the_registry_tables(tmp_path: Path) -> None:
    db = str(tmp_path / "old.db")
    MetadataStore(db).close()
    con = sqlite3.connect(db)  # a store of raypipe before the registry: schema version 1 without its tables
    for table in ("alias_events", "model_aliases", "model_registrations", "model_links", "model_versions", "models"):
        con.execute(f"DROP TABLE {table}")
    con.execute("DROP TABLE audit")
    con.execute("DROP TABLE platform_configs")
    for index in ("runs_created", "runs_pipeline_created", "runs_status_created", "runs_actor_created"):
        con.execute(f"DROP INDEX {index}")  # a later migration's, on runs.actor among others
    con.execute("ALTER TABLE runs DROP COLUMN actor")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    meta = MetadataStore(db)
    try:
        assert ModelRegistry(meta).list_models() == []
        ModelRegistry(meta).register("m", model_ref("a"), None, None, None)
        ModelRegistry(meta).register("m", model_ref("a"), None, None, None, by=RegisteredBy("r", "reg", 1))
        assert ModelRegistry(meta).registered_by(1) is not None
    finally:
        meta.close()


# ---------------------------------------------------------------------------------------------- kind, api, CLI
def test_register_stage_is_checked_when_planning() -> None:
    def cfg(**stage: Any) -> raypipe.PipelineConfig:
        return raypipe.PipelineConfig(
            name="p",
            stages=[
                {"name": "make", "kind": "python", "params": {"function": "tests.unit.funcs:make"}},
                {"name": "reg", "kind": "register", **stage},
            ],
        )

    plan = raypipe.load(cfg(inputs={"model": "make.out"}, params={"name": "digits"}))
    kind = plan.stages["reg"].kind
    assert kind.params.aliases == ["candidate"] and plan.stages["reg"].outputs == ("registration",)
    with pytest.raises(ConfigError, match="needs an input named 'model'"):
        raypipe.load(cfg(inputs={"m": "make.out"}, params={"name": "digits"}))
    with pytest.raises(ConfigError, match="unknown inputs"):
        raypipe.load(cfg(inputs={"model": "make.out", "extra": "make.out"}, params={"name": "digits"}))
    with pytest.raises(ConfigError, match="params.name"):
        raypipe.load(cfg(inputs={"model": "make.out"}, params={"name": "has space"}))
    with pytest.raises(ConfigError, match="params.aliases"):
        raypipe.load(cfg(inputs={"model": "make.out"}, params={"name": "d", "aliases": ["@x"]}))


def test_cli_models_show_and_alias(store: MetadataStore, tmp_path: Path) -> None:
    g = build_lineage(store, tmp_path)
    reg = ModelRegistry(store)
    reg.register("digits", g["model"], "run-1", "fit", g["sids"]["fit"], aliases=["candidate"])
    reg.register("digits", model_ref("b", metrics={"accuracy": 0.95}), "run-1", "fit", None)
    db = store.url
    runner = CliRunner()

    out = runner.invoke(app, ["models", "--db", db], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "digits" in out.output and "candidate -> v1" in out.output and "accuracy=0.95" in out.output
    listed = json.loads(runner.invoke(app, ["models", "--db", db, "--json"]).output)
    assert listed == [
        {
            "name": "digits",
            "description": "",
            "created_at": listed[0]["created_at"],
            "versions": 2,
            "latest": 2,
            "aliases": {"candidate": 1},
            "latest_metrics": {"accuracy": 0.95},
        }
    ]

    out = runner.invoke(app, ["model", "show", "digits@candidate", "--db", db], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for text in ("model digits v1 @candidate", "<- fit", "<- split", "<- read", "(shown above)", "rows"):
        assert text in out.output, text
    assert f"raw file {tmp_path / 'a.csv'} · 120 B" in out.output
    assert f"raw file {tmp_path / 'b.csv'} · 80 B" in out.output
    shown = json.loads(runner.invoke(app, ["model", "show", "digits:1", "--db", db, "--json"]).output)
    assert shown["version"] == 1 and shown["aliases"] == ["candidate"]
    assert shown["lineage"]["produced_by"]["stage"] == "fit"

    out = runner.invoke(app, ["model", "alias", "digits", "2", "production", "--reason", "ok", "--db", db])
    assert (out.exit_code, out.output.strip()) == (0, "digits@production -> v2")
    out = runner.invoke(app, ["model", "alias", "digits", "2", "candidate", "--db", db])
    assert out.output.strip() == "digits@candidate -> v2 (was v1)"
    out = runner.invoke(app, ["model", "alias", "digits", "2", "candidate", "--db", db])
    assert out.output.strip() == "digits@candidate already points at v2"
    out = runner.invoke(app, ["model", "alias", "digits", "2", "production", "--remove", "--db", db])
    assert out.output.strip() == "removed digits@production (was v2)"
    assert raypipe.show_model("digits@candidate", db=db).version.version == 2
    assert [e.reason for e in raypipe.show_model("digits", db=db).alias_history][:2] == [
        "registered from run run-1 stage fit",
        "ok",
    ]

    for args, message in (
        (["model", "show", "digits:7", "--db", db], "error: model 'digits' has no version 7; versions: 1, 2"),
        (["model", "show", "nope", "--db", db], "error: no model 'nope'"),
        (["model", "alias", "digits", "9", "production", "--db", db], "error: model 'digits' has no version 9"),
        (["model", "show", "digits", "--db", str(tmp_path / "none.db")], "error: no metadata store"),
    ):
        out = runner.invoke(app, args)
        assert out.exit_code == 2 and out.output.startswith(message), out.output


def test_after_success_registers_once_however_often_it_runs(store: MetadataStore, tmp_path: Path) -> None:
    """A resume runs the hook again for the same stage run: the same version, no alias moved twice."""
    from raypipe.stages.base import CommitContext
    from raypipe.stages.register import RegisterParams, RegisterStage
    from raypipe.store.artifacts import ArtifactStore

    g = build_lineage(store, tmp_path)
    artifacts = ArtifactStore(str(tmp_path / "objects"))
    metrics = artifacts.put_value({"accuracy": 0.97})
    kind = RegisterStage(RegisterParams(name="digits", aliases=["candidate", "latest-run"]))
    commit = CommitContext(store, artifacts, "run-1", "reg", 99, {"model": g["model"], "metrics": metrics}, {})
    assert kind.after_success(commit) == "registered digits v1 @candidate @latest-run"
    ModelRegistry(store).set_alias("digits", 1, "production")
    assert kind.after_success(commit) == "already registered: digits v1 @candidate @latest-run"
    [v] = ModelRegistry(store).versions("digits")
    assert (v.metrics, v.stage, v.stage_run_id) == ({"accuracy": 0.97}, "fit", g["sids"]["fit"])
    assert v.aliases == ("candidate", "latest-run", "production")
    history = ModelRegistry(store).alias_history("digits")
    assert len(history) == 3 and history[0].reason == "stage reg of run run-1 (stage run #99)"


def test_aliases_if_unset_and_links(store: MetadataStore) -> None:
    reg = ModelRegistry(store)
    v1 = reg.register(
        "sensors", model_ref("a"), "run-1", "train", 1, aliases=["candidate"], aliases_if_unset=["production"]
    )
    assert v1.aliases == ("candidate", "production")
    v2 = reg.register(
        "sensors", model_ref("b"), "run-2", "train", 2, aliases=["candidate"], aliases_if_unset=["production"]
    )
    assert v2.aliases == ("candidate",) and reg.get("sensors@production").version == 1
    assert [e.reason for e in reg.alias_history("sensors", "production")][-1].endswith(
        "(first version with @production)"
    )
    # links: idempotent, ordered, kept with the version; the profile link resolves to its artifact
    profile = dataset_ref("profile", 1)
    store._conn.execute(
        "INSERT INTO artifacts(sha256, uri, size, format, created_at) VALUES (?, ?, ?, 'json', 0)",
        (profile.sha256, "/store/objects/p.json", 10),
    )
    assert reg.reference_profile("sensors", 2) is None
    assert reg.link("sensors", 2, "reference_profile", {"sha256": profile.sha256, "uri": "/store/objects/p.json"})
    assert not reg.link("sensors", 2, "reference_profile", {"uri": "/store/objects/p.json", "sha256": profile.sha256})
    event = {"monitor_event_id": 3, "drifted_features": ["f0", "f1"], "statistics": {"f0": {"p_value": 1e-9}}}
    assert reg.link("sensors", 2, "drift_event", event)
    assert reg.reference_profile("sensors", 2).sha256 == profile.sha256
    got = reg.get("sensors:2")
    assert [link["kind"] for link in got.links] == ["reference_profile", "drift_event"]
    assert got.links[1]["value"] == event and reg.get("sensors:1").links == []
    assert reg.links("sensors", 2, "drift_event")[0]["value"]["statistics"]["f0"]["p_value"] == 1e-9
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        reg.link("sensors", 9, "drift_event", event)


# ---------------------------------------------------------------------------------------------- who moves aliases
def test_a_register_stage_run_moves_its_aliases_once_and_a_cache_hit_never(store: MetadataStore) -> None:
    reg = ModelRegistry(store)
    ran = RegisteredBy("run-1", "register", 11)
    v1 = reg.register("m", model_ref("a"), "run-1", "train", 10, aliases=["candidate"], by=ran, reason="r1")
    assert (v1.version, v1.aliases) == (1, ("candidate",))
    row = reg.registered_by(11)
    assert row is not None and (row["run_id"], row["stage"], row["name"], row["version"]) == (
        "run-1",
        "register",
        "m",
        1,
    )
    reg.register("m", model_ref("b"), "run-2", "train", 20, aliases=["candidate"], by=RegisteredBy("run-2", "r", 21))
    assert reg.aliases("m") == {"candidate": 2}
    # a resume of run-1 (its moves committed): nothing moves back
    again = reg.register("m", model_ref("a"), "run-1", "train", 10, aliases=["candidate"], by=ran, reason="r1")
    assert (again.version, again.is_new, reg.aliases("m")) == (1, False, {"candidate": 2})
    # a cache hit of the old config: the version, no alias moved (nor set where unset)
    hit = reg.register(
        "m",
        model_ref("a"),
        "run-3",
        "train",
        10,
        aliases=["candidate"],
        aliases_if_unset=["production"],
        move_aliases=False,
        by=RegisteredBy("run-3", "register", 31),
    )
    assert (hit.version, hit.is_new, reg.aliases("m")) == (1, False, {"candidate": 2})
    assert reg.registered_by(31) is None
    # a cache hit whose version is missing (the first commit never happened): registered, no alias
    new = reg.register("m", model_ref("c"), "run-4", "train", 40, aliases=["candidate"], move_aliases=False)
    assert (new.version, new.is_new, new.aliases, reg.aliases("m")) == (3, True, (), {"candidate": 2})
    # a register stage that ran (cache: false, say) re-registering v1: asked for candidate, gets it
    rerun = reg.register(
        "m", model_ref("a"), "run-5", "train", 10, aliases=["candidate"], by=RegisteredBy("run-5", "register", 51)
    )
    assert (rerun.version, rerun.is_new, reg.aliases("m")) == (1, False, {"candidate": 1})
    assert [(e.old_version, e.new_version) for e in reg.alias_history("m", "candidate")] == [(None, 1), (1, 2), (2, 1)]


def test_a_cache_hit_of_register_reports_the_version_and_leaves_the_aliases(
    store: MetadataStore, tmp_path: Path
) -> None:
    from raypipe.stages.base import CommitContext
    from raypipe.stages.register import RegisterParams, RegisterStage
    from raypipe.store.artifacts import ArtifactStore

    artifacts = ArtifactStore(str(tmp_path / "objects"))
    kind = RegisterStage(RegisterParams(name="digits", aliases=["candidate"], aliases_if_unset=["production"]))

    def commit(ref: ArtifactRef, run_id: str, sid: int, cached: bool) -> str | None:
        return kind.after_success(
            CommitContext(store, artifacts, run_id, "reg", sid, {"model": ref}, {}, cached=cached)
        )

    assert commit(model_ref("a"), "run-1", 1, False) == "registered digits v1 @candidate @production"
    assert commit(model_ref("b"), "run-2", 2, False) == (
        "registered digits v2 @candidate (aliases unchanged: production -> v1)"
    )
    assert commit(model_ref("a"), "run-3", 3, True) == (
        "already registered: digits v1 @production (aliases unchanged: candidate -> v2)"
    )
    ModelRegistry(store).remove_alias("digits", "production")
    assert commit(model_ref("a"), "run-4", 4, True) == (
        "already registered: digits v1 (aliases unchanged: candidate -> v2, production -> none)"
    )
    assert ModelRegistry(store).aliases("digits") == {"candidate": 2}


class _Crash(BaseException):
    """The driver dying between a stage's success record and its registration."""


def _in_process_executor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, crash_registering: list[bool] | None = None
) -> list[tuple[str, str, str]]:
    """Executor stages "run" in this process instead of Ray: ``fit`` stores a model package
    tagged with its ``tag`` arg, ``reg`` its registration; each goes through the executor's
    real success path (``_succeed`` -> ``after_success(cached=False)``).  Cache hits and
    ``resume`` are the executor's own.  Returns the (stage, status, message) events seen."""
    from raypipe.runner.executor import Executor, _Attempt
    from raypipe.stages.register import RegisterStage
    from raypipe.store.models import ModelPackage

    def request(self: Executor, ps: Any, key: str, inputs: dict[str, ArtifactRef]) -> None:
        name = ps.spec.name
        sid = self.meta.start_stage(self.run_id, name, 1, key)
        if ps.spec.kind == "register":
            outs = {"registration": self.artifacts.put_value({"name": ps.kind.params.name})}
        else:
            tag = ps.kind.params.args["tag"]
            folder = tmp_path / f"pkg-{tag}"
            (folder / "w.txt").parent.mkdir(exist_ok=True)
            (folder / "w.txt").write_text(tag)
            outs = {"model": self.artifacts.put_value(ModelPackage.create(folder, {"params": {"tag": tag}}))}
        att = _Attempt(name, sid, 1, 0.0, None, inputs, key)
        self._succeed(att, {"outputs": {k: v.to_dict() for k, v in outs.items()}})

    monkeypatch.setattr(Executor, "_request", request)
    if crash_registering is not None:
        real = RegisterStage.after_success

        def after_success(self: RegisterStage, commit: Any) -> str | None:
            if crash_registering and crash_registering.pop():
                raise _Crash("driver killed")
            return real(self, commit)

        monkeypatch.setattr(RegisterStage, "after_success", after_success)
    return []


def _registry_run(
    store: MetadataStore, tmp_path: Path, tag: str, events: list[tuple[str, str, str]], run_id: str, **kw: Any
) -> Any:
    from raypipe.runner.executor import Executor
    from raypipe.store.artifacts import ArtifactStore

    cfg = raypipe.PipelineConfig(
        name="reg",
        stages=[
            {"name": "fit", "kind": "python", "params": {"function": "tests.unit.funcs:fit", "args": {"tag": tag}}},
            {"name": "reg", "kind": "register", "inputs": {"model": "fit.model"}, "params": {"name": "digits"}},
        ],
    )
    plan = raypipe.load(cfg)
    root = str(tmp_path / "store")
    if "reuse" not in kw:
        store.create_run(run_id, "reg", "{}", None, root)
    ex = Executor(
        plan, run_id, store, ArtifactStore(root), on_event=lambda e: events.append((e.stage, e.status, e.message)), **kw
    )
    return ex.execute()


def test_a_cached_rerun_of_an_old_config_leaves_candidate_on_the_newer_version(
    store: MetadataStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: config A (v1 @candidate), config B (v2 @candidate), then A from the cache."""
    events = _in_process_executor(monkeypatch, tmp_path)
    reg = ModelRegistry(store)
    assert _registry_run(store, tmp_path, "a", events, "run-a").ok
    assert events[-1] == ("reg", "succeeded", "registered digits v1 @candidate")
    assert _registry_run(store, tmp_path, "b", events, "run-b").ok
    assert events[-1] == ("reg", "succeeded", "registered digits v2 @candidate")
    again = _registry_run(store, tmp_path, "a", events, "run-a2")
    assert again.ok and again.stages == {"fit": "cached", "reg": "cached"}
    stage, status, message = events[-1]
    assert (stage, status) == ("reg", "cached")
    assert message.endswith("; already registered: digits v1 (aliases unchanged: candidate -> v2)"), message
    assert reg.aliases("digits") == {"candidate": 2}
    assert [(e.old_version, e.new_version) for e in reg.alias_history("digits")] == [(None, 1), (1, 2)]
    reasons = [e.reason for e in reg.alias_history("digits")]
    sids = {r: reg.registered_by(sr.id) for r in ("run-a", "run-b") for sr in store.stage_runs(r) if sr.stage == "reg"}
    assert reasons == [
        f"stage reg of run run-a (stage run #{sids['run-a']['stage_run_id']})",
        f"stage reg of run run-b (stage run #{sids['run-b']['stage_run_id']})",
    ]


def test_resume_completes_the_alias_moves_of_its_own_register_stage_once(
    store: MetadataStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = [True, False]  # run-b's registration dies after its stage run is recorded as succeeded
    events = _in_process_executor(monkeypatch, tmp_path, crash_registering=crash)
    reg = ModelRegistry(store)
    assert _registry_run(store, tmp_path, "a", events, "run-a").ok
    with pytest.raises(_Crash):
        _registry_run(store, tmp_path, "b", events, "run-b")
    assert store.get_run("run-b").status == "interrupted" and reg.aliases("digits") == {"candidate": 1}
    assert [v.version for v in reg.versions("digits")] == [1]
    # resume: the register stage ran in run-b, so its moves are completed
    resumed = _registry_run(store, tmp_path, "b", events, "run-b", reuse=store.done_stages("run-b"))
    assert resumed.ok and resumed.stages == {"fit": "reused", "reg": "reused"}
    assert events[-1][:2] == ("reg", "reused") and events[-1][2].endswith("; registered digits v2 @candidate")
    assert reg.aliases("digits") == {"candidate": 2}
    # a person moves candidate back; resuming run-b again moves nothing (its moves are done)
    reg.set_alias("digits", 1, "candidate", reason="v2 looks off")
    store.finish_run("run-b", "failed")
    _registry_run(store, tmp_path, "b", events, "run-b", reuse=store.done_stages("run-b"))
    assert events[-1][2].endswith("; already registered: digits v2 (aliases unchanged: candidate -> v1)")
    assert reg.aliases("digits") == {"candidate": 1}
    assert [e.reason for e in reg.alias_history("digits")][-1] == "v2 looks off"
