"""Schema versions of the metadata store: a store made by raypipe at schema version 1
(tests/data/metadata_v1.db, see tests/data/make_metadata_v1.py) opens upgraded with every
record readable, on SQLite and PostgreSQL; a newer store is refused; a failing migration
leaves the store at the last version it completed; ``raypipe db upgrade`` and ``db status``."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from raypipe.cli import app
from raypipe.exceptions import StorageError
from raypipe.store import migrations
from raypipe.store.metadata import MetadataStore, current_actor
from raypipe.store.migrations import BASELINE, Migration, code_version, stored_version
from raypipe.store.objects import ArtifactRef
from raypipe.store.registry import ModelRegistry
from raypipe.store.rollouts import LoopStore, RolloutStore
from raypipe.store.sql import Database, ddl, redact

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "metadata_v1.db"
runner = CliRunner()


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def columns(url: str, table: str) -> set[str]:
    db = Database(url)
    try:
        if db.backend == "sqlite":
            return {r["name"] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return {r[0] for r in rows}
    finally:
        db.close()


def version_of(url: str) -> int | None:
    db = Database(url)
    try:
        return stored_version(db)
    finally:
        db.close()


def set_version(url: str, version: int) -> None:
    db = Database(url)
    try:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    finally:
        db.close()


def v1_copy(tmp_path: Path) -> str:
    path = tmp_path / "v1.db"
    shutil.copy(FIXTURE, path)
    return str(path)


def v1_postgres(fixture: str, url: str) -> None:
    """The v1 fixture copied into the empty PostgreSQL database ``url``: its tables and
    indexes created by v1's own DDL (as SQLite kept it, through the dialect layer as v1 ran
    it), its rows copied, the identity columns continuing after the copied ids."""
    src = sqlite3.connect(fixture)
    objects = src.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'sqlite_sequence' "
        "ORDER BY type = 'index', rowid"
    ).fetchall()
    db = Database(url)
    with db.transaction() as c:
        for _, _, sql in objects:
            c.execute(ddl(sql, "postgresql"))
        for kind, table, _ in objects:
            if kind != "table":
                continue
            cur = src.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cur.description]
            for row in cur.fetchall():
                marks = ", ".join("?" for _ in names)
                c.execute(f"INSERT INTO {table}({', '.join(names)}) VALUES ({marks})", row)
            if "id" in names:
                c.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
    db.close()
    src.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def v1_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store at schema version 1 with the fixture's records, on each backend."""
    path = v1_copy(tmp_path)
    if request.param == "sqlite":
        return path
    url: str = request.getfixturevalue("postgres").new_database()
    v1_postgres(path, url)
    return url


def test_the_fixture_and_the_baseline_are_schema_version_1(tmp_path: Path) -> None:
    path = v1_copy(tmp_path)
    assert version_of(path) == 1 and "actor" not in columns(path, "runs")
    # BASELINE is v1's schema as v1 wrote it: the fixture's tables and indexes, but the event
    # logs' (created when first used)
    fresh = sqlite3.connect(tmp_path / "baseline.db")
    fresh.executescript(BASELINE)
    query = "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '%events%' ORDER BY name"
    assert fresh.execute(query).fetchall() == sqlite3.connect(path).execute(query).fetchall()


def test_a_v1_store_opens_upgraded_with_every_record(v1_db: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="raypipe.store"):
        meta = MetadataStore(v1_db)
    assert meta.schema_version == code_version() >= 3 and version_of(v1_db) == code_version()
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"from schema version 1 to {code_version()}" in line and meta.location in line
    assert {"actor"} <= columns(v1_db, "runs") and {"id", "at", "actor", "action", "target"} <= columns(v1_db, "audit")
    assert columns(v1_db, "platform_configs") == {"version", "applied_at", "actor", "config_json"}

    # runs and stage runs
    runs = {r.run_id: r for r in meta.list_runs()}
    assert {k: r.status for k, r in runs.items()} == {
        "quickstart-1": "succeeded",
        "quickstart-2": "succeeded",
        "quickstart-3": "failed",
    }
    assert all(r.actor is None for r in runs.values())  # v1 did not record who
    assert runs["quickstart-1"].config_path == "configs/quickstart.yaml" and runs["quickstart-3"].error
    assert meta.get_run("quickstart-2").to_dict()["actor"] is None
    first = {s.stage: s for s in meta.stage_runs("quickstart-1")}
    second = meta.stage_runs("quickstart-2")
    assert [(s.stage, s.attempt, s.status) for s in second] == [
        ("read", 0, "cached"),
        ("preprocess", 0, "cached"),
        ("train", 1, "failed"),
        ("train", 2, "succeeded"),
        ("register", 1, "succeeded"),
    ]
    assert second[0].cached_from == first["read"].id and "OutOfMemoryError" in str(second[2].error)
    assert [(s.stage, s.status) for s in meta.stage_runs("quickstart-3")] == [("read", "failed"), ("train", "skipped")]
    assert set(meta.done_stages("quickstart-1")) == {"read", "preprocess", "train", "evaluate", "register"}
    cached = meta.find_cached("key-read")
    assert cached is not None and cached.run_id == "quickstart-2"

    # artifacts and lineage
    outs = meta.io_of(first["preprocess"].id)
    assert {k: v.sha256 for k, v in outs.items()} == {"test": sha("test"), "train": sha("train")}
    assert meta.artifact(sha("raw")[:12]).schema == {"rows": 1000}
    assert {p["src_sha256"] for p in meta.lineage_of(sha("model-1"))} == {sha("train")}

    # the registry
    reg = ModelRegistry(meta)
    (model,) = reg.list_models()
    assert (model.name, model.versions, model.aliases) == ("digits", 2, {"candidate": 2, "production": 2})
    assert model.description == "handwritten digits"
    v1 = reg.get("digits:1")
    assert v1.metrics == {"accuracy": 0.91} and v1.params == {"C": 1.0} and v1.code == "code-1"
    assert {d["sha256"] for d in v1.datasets} == {sha("raw"), sha("train")}
    assert [link["kind"] for link in v1.links] == ["reference_profile"]
    assert reg.get("digits@production").version == 2
    assert [(e.alias, e.old_version, e.new_version) for e in reg.alias_history("digits")] == [
        ("candidate", None, 1),
        ("production", None, 1),
        ("candidate", 1, 2),
        ("production", 1, 2),
    ]
    tree = reg.lineage_tree(sha("model-1"))
    assert {n.uri for n in tree.sources()} == {"/data/raw/a.csv", "/data/raw/b.csv"}
    assert reg.registered_by(second[-1].id) is not None

    # the event logs
    rollouts, loops = RolloutStore(meta), LoopStore(meta)
    assert [e.event for e in rollouts.events("digits")] == ["started", "step", "promoted"]
    assert rollouts.rollouts("digits")[0]["finished"] is True
    assert [e.event for e in loops.events("digits", "c1")] == [
        "drift",
        "retrain_started",
        "retrain_finished",
        "promoted",
    ]

    # new writes, with who made them
    meta.create_run("quickstart-4", "quickstart", "{}", None, "/data/project/artifacts")
    meta.create_run("quickstart-5", "quickstart", "{}", None, "/data/project/artifacts", actor="alice")
    assert meta.get_run("quickstart-4").actor == current_actor() and meta.get_run("quickstart-5").actor == "alice"
    sr = meta.start_stage("quickstart-4", "train", 1, "key-train-4")
    model3 = ArtifactRef(f"/data/project/artifacts/{sha('model-3')}", sha("model-3"), 100, "model", {"metrics": {}})
    meta.succeed_stage(sr, {"train": ArtifactRef("", sha("train"), 100, "dataset")}, {"model": model3})
    assert sr > second[-1].id
    v3 = reg.register("digits", model3, "quickstart-4", "train", sr, aliases=["candidate"])
    assert v3.version == 3 and reg.aliases("digits")["candidate"] == 3
    assert rollouts.record("digits", "digits-2", "started").id > rollouts.events("digits", "digits-1")[-1].id
    meta.record_audit("alias.move", "digits@candidate", {"from": 2, "to": 3}, actor="alice")
    moved, entry = meta.audit_log("digits@candidate")
    assert (moved["action"], moved["actor"], moved["detail"]["new_version"]) == ("alias.set", current_actor(), 3)
    assert (entry["actor"], entry["action"], entry["detail"]) == ("alice", "alias.move", {"from": 2, "to": 3})
    assert [e["target"] for e in meta.audit_log(action="run")] == ["quickstart-4", "quickstart-5"]
    meta.close()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raypipe.store"):
        MetadataStore(v1_db).close()  # at the current version: nothing to do, nothing said
    assert caplog.records == []

    r = runner.invoke(app, ["runs", "--db", v1_db, "--json"])
    assert r.exit_code == 0, r.output
    actors = {d["run_id"]: d["actor"] for d in json.loads(r.stdout)}
    assert actors["quickstart-5"] == "alice" and actors["quickstart-1"] is None


def test_a_v1_store_from_before_the_registry_gets_its_tables(v1_db: str) -> None:
    # raypipe wrote schema version 1 before its registry tables came; so did the first registry
    db = Database(v1_db)
    for stmt in ("DROP INDEX stage_io_sha", "DROP TABLE model_registrations", "DROP TABLE model_links"):
        db.execute(stmt)
    db.close()
    meta = MetadataStore(v1_db)
    assert meta.schema_version == code_version()
    assert {"stage_run_id", "run_id"} <= columns(v1_db, "model_registrations") and columns(v1_db, "model_links")
    index = (
        "SELECT 1 FROM sqlite_master WHERE name = 'stage_io_sha'"
        if meta.backend == "sqlite"
        else "SELECT 1 FROM pg_indexes WHERE indexname = 'stage_io_sha'"
    )
    assert meta._conn.execute(index).fetchone() is not None
    assert ModelRegistry(meta).link("digits", 1, "reference_profile", {"sha256": "x"}) is True
    meta.close()


def test_a_new_store_gets_the_current_schema(metadata_db: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="raypipe.store"):
        meta = MetadataStore(metadata_db)
    assert meta.schema_version == version_of(metadata_db) == code_version()
    assert "actor" in columns(metadata_db, "runs") and "audit" not in caplog.text
    assert caplog.records == []  # creating a store is no upgrade
    meta.create_run("r1", "p", "{}", None, "/tmp/s")
    assert meta.get_run("r1").actor == current_actor()
    meta.close()


def test_a_store_newer_than_the_code_is_refused(metadata_db: str) -> None:
    MetadataStore(metadata_db).close()
    set_version(metadata_db, code_version() + 1)
    url = metadata_db
    if metadata_db.startswith("postgresql://"):
        url = metadata_db.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")  # trust: any password
    with pytest.raises(StorageError) as err:
        MetadataStore(url)
    message = str(err.value)
    assert f"has schema version {code_version() + 1}, newer than this raypipe's ({code_version()})" in message
    assert "upgrade raypipe" in message and "s3cret" not in message
    assert f"metadata store {redact(url)!r}" in message
    r = runner.invoke(app, ["db", "upgrade", "--db", url, "--json"])
    assert r.exit_code == 2 and r.stdout == "" and "upgrade raypipe" in r.stderr and "s3cret" not in r.stderr
    r = runner.invoke(app, ["db", "status", "--db", url, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["version"], doc["code_version"], doc["state"]) == (code_version() + 1, code_version(), "newer")
    assert version_of(metadata_db) == code_version() + 1  # left as it was


def test_a_failing_migration_leaves_the_version_it_reached(metadata_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    MetadataStore(metadata_db).close()  # at the code's version
    n = code_version()
    real = list(migrations.MIGRATIONS)
    ok = Migration(n + 1, "table t3", ("CREATE TABLE t3 (x INTEGER)",))
    boom = Migration(
        n + 2,
        "runs.y, then a table that is not there",
        ("ALTER TABLE runs ADD COLUMN y TEXT", "ALTER TABLE nope ADD COLUMN z TEXT"),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", [*real, ok, boom])
    with pytest.raises(StorageError) as err:
        MetadataStore(metadata_db)
    assert f"upgrading to schema version {n + 2} (runs.y, then a table that is not there) failed" in str(err.value)
    assert f"it stays at version {n + 1}" in str(err.value)
    assert version_of(metadata_db) == n + 1 and "x" in columns(metadata_db, "t3")
    assert "y" not in columns(metadata_db, "runs")  # the failed migration's first statement rolled back too

    def broken(db: Database) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN y TEXT")
        raise RuntimeError("a bug in the migration")

    fixed = Migration(n + 2, "runs.y", apply=broken)
    monkeypatch.setattr(migrations, "MIGRATIONS", [*real, ok, fixed])
    with pytest.raises(StorageError, match=f"RuntimeError: a bug in the migration; it stays at version {n + 1}"):
        MetadataStore(metadata_db)
    assert version_of(metadata_db) == n + 1 and "y" not in columns(metadata_db, "runs")

    fixed = Migration(n + 2, "runs.y", ("ALTER TABLE runs ADD COLUMN y TEXT",))
    monkeypatch.setattr(migrations, "MIGRATIONS", [*real, ok, fixed])
    meta = MetadataStore(metadata_db)
    assert meta.schema_version == version_of(metadata_db) == n + 2 and "y" in columns(metadata_db, "runs")
    meta.close()


def test_a_v1_store_whose_migration_fails_stays_at_version_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = v1_copy(tmp_path)
    real = migrations.MIGRATIONS[0]  # version 2

    def half(db: Database) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(migrations, "MIGRATIONS", [Migration(2, real.description, real.statements, apply=half)])
    with pytest.raises(StorageError, match="it stays at version 1"):
        MetadataStore(path)
    assert version_of(path) == 1 and "actor" not in columns(path, "runs") and columns(path, "audit") == set()
    monkeypatch.setattr(migrations, "MIGRATIONS", [real])
    assert MetadataStore(path).schema_version == 2


def test_stores_opened_at_once_apply_each_migration_once(v1_db: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_it() -> None:
        try:
            barrier.wait()
            MetadataStore(v1_db).close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and version_of(v1_db) == code_version()


def test_auto_upgrade_off_refuses_an_older_store_until_db_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = v1_copy(tmp_path)
    monkeypatch.setenv("RAYPIPE_DB_AUTO_UPGRADE", "0")
    with pytest.raises(
        StorageError, match=rf"schema version 1, older than this raypipe's \({code_version()}\).*raypipe db upgrade"
    ):
        MetadataStore(path)
    assert version_of(path) == 1
    r = runner.invoke(app, ["db", "upgrade", "--db", path])
    assert r.exit_code == 0, r.output
    assert f"schema version 1 -> {code_version()}" in r.stdout
    assert MetadataStore(path).schema_version == code_version()


def test_db_upgrade_and_status(tmp_path: Path) -> None:
    path = v1_copy(tmp_path)
    r = runner.invoke(app, ["db", "status", "--db", path, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    cv = code_version()
    assert (doc["version"], doc["code_version"], doc["state"], doc["backend"]) == (1, cv, "older", "sqlite")
    assert [m["version"] for m in doc["pending"]] == list(range(2, cv + 1))
    assert version_of(path) == 1  # status changes nothing
    r = runner.invoke(app, ["db", "status", "--db", path], terminal_width=200)
    assert r.exit_code == 0 and f"schema version: 1 · this raypipe's: {cv}" in r.stdout
    assert "2: runs.actor" in r.stdout and "3: table platform_configs" in r.stdout

    r = runner.invoke(app, ["db", "upgrade", "--db", path, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["from_version"], doc["to_version"], doc["code_version"]) == (1, cv, cv)
    assert [m["version"] for m in doc["applied"]] == list(range(2, cv + 1)) and doc["db"] == str(Path(path).resolve())
    assert r.stderr == ""  # the command reports the upgrade; no log line besides

    r = runner.invoke(app, ["db", "upgrade", "--db", path, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["applied"] == []
    r = runner.invoke(app, ["db", "upgrade", "--db", path])
    assert r.exit_code == 0 and "nothing to do" in r.stdout
    assert json.loads(runner.invoke(app, ["db", "status", "--db", path, "--json"]).stdout)["state"] == "current"

    r = runner.invoke(app, ["db", "upgrade", "--db", str(tmp_path / "missing.db")])
    assert r.exit_code == 2 and "no metadata store" in r.stderr
    assert not (tmp_path / "missing.db").exists()


def test_db_upgrade_of_a_v1_postgresql_store(postgres: Any, tmp_path: Path) -> None:
    url = postgres.new_database()
    v1_postgres(v1_copy(tmp_path), url)
    r = runner.invoke(app, ["db", "upgrade", "--db", url, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["from_version"], doc["to_version"]) == (1, code_version()) and version_of(url) == code_version()


def test_migrations_number_the_versions_one_by_one() -> None:
    migrations.check_order(migrations.MIGRATIONS)
    with pytest.raises(AssertionError, match=r"versions \[2, 3\]"):
        migrations.check_order([migrations.MIGRATIONS[0], Migration(4, "a gap")])
