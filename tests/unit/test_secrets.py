"""Secrets are referenced, never stored: ``${env:NAME}`` / ``${file:PATH}`` resolved where a value
is used; what is stored or passed on (runs.config_json, the retraining YAML, the loop's KV
config, the retraining driver's command line) holds the reference or a redacted form."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from raypipe.config import ConfigSource, PipelineConfig, parse_config, read_config
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.loop.cut import retraining_pipeline
from raypipe.loop.launch import loop_config, resume_args, retraining_yaml, run_args, runner_command, runner_env
from raypipe.runner.driver import stored_config_json
from raypipe.runner.plan import build_plan
from raypipe.runner.task import stage_kind
from raypipe.secrets import actor_env, actor_url, has_references, redact, reference_errors, resolve_secrets
from raypipe.serving.spec import RetrainSpec, ServeSpec, load_spec
from raypipe.store.metadata import MetadataStore, open_existing
from raypipe.store.sql import redact as sql_redact

SECRET = "hunter2-Zq9"  # the value of every secret here: it must never show up


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGPW", SECRET)
    monkeypatch.delenv("RAYPIPE_DB", raising=False)
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- resolution


def test_references_resolve_from_the_environment_and_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-1\n")  # as `echo tok-1 > token` writes it: the newline is dropped
    (tmp_path / "crlf").write_text("pw\r\n", newline="")
    value = {
        "url": "postgresql://u:${env:PGPW}@h/db",
        "args": ["${file:token}", "${file:" + str(tmp_path / "crlf") + "}", 3, None],
        "both": "${env:PGPW}/${file:token}",
        "literal": "$${env:PGPW} costs $5",  # $${ is a literal ${
        "nested": ("${env:PGPW}",),
    }
    assert resolve_secrets(value) == {
        "url": f"postgresql://u:{SECRET}@h/db",
        "args": ["tok-1", "pw", 3, None],
        "both": f"{SECRET}/tok-1",
        "literal": "${env:PGPW} costs $5",
        "nested": (SECRET,),
    }
    assert resolve_secrets("no references, ${other} and $HOME") == "no references, ${other} and $HOME"
    assert resolve_secrets("${env:X}", environ={"X": "from the mapping"}) == "from the mapping"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "${env:NOT_SET_ANYWHERE}",
            "stages.a.params.k: ${env:NOT_SET_ANYWHERE}: the environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            "${file:/no/such/file}",
            "stages.a.params.k: ${file:/no/such/file}: cannot read the file: No such file or directory",
        ),
        ("x${env:bad-name}", "'bad-name' is not an environment variable name"),
        ("${env:PGPW", "a reference is not closed with '}'"),
        ("${file: }", "${file: }: no file named"),
    ],
)
def test_a_reference_that_cannot_be_resolved_is_a_config_error_naming_it(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_secrets({"k": value}, "stages.a.params")
    assert message in str(e.value)
    assert SECRET not in str(e.value)


def test_a_directory_is_not_a_readable_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metadata: \$\{file:.*\}: cannot read the file"):
        resolve_secrets("${file:" + str(tmp_path) + "}", "metadata")


def test_reference_syntax_helpers() -> None:
    assert has_references({"a": ["x", "${env:A}"]}) and not has_references("$${env:A}")
    assert reference_errors({"a": "${env:A", "b": "${env:ok}"}, "stages") == [
        "stages.a: '${env:A': a reference is not closed with '}'"
    ]


# --------------------------------------------------------------------------- the config keeps references


PIPELINE_YAML = """\
name: p
metadata: postgresql://ml:${env:PGPW}@db.internal:5432/raypipe
ray:
  runtime_env: {env_vars: {API_TOKEN: "${file:/run/secrets/t}"}}
stages:
  - name: a
    kind: python
    params: {function: "tests.unit.funcs:fit", args: {tag: "${env:PGPW}"}}
"""


def test_a_pipeline_keeps_its_references_in_what_runs_config_json_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE_YAML)
    cfg, source = read_config(path)
    assert cfg.metadata == "postgresql://ml:${env:PGPW}@db.internal:5432/raypipe"
    stored = stored_config_json(cfg, str(tmp_path / "store"))
    assert SECRET not in stored and SECRET not in cfg.model_dump_json()
    doc = json.loads(stored)
    assert doc["metadata"] == "postgresql://ml:${env:PGPW}@db.internal:5432/raypipe"
    assert doc["ray"]["runtime_env"] == {"env_vars": {"API_TOKEN": "${file:/run/secrets/t}"}}
    assert doc["stages"][0]["params"]["args"] == {"tag": "${env:PGPW}"}
    # what resume reads back plans the same pipeline, references still unresolved
    again = parse_config(doc, ConfigSource(path="<run>"))
    assert again.stages[0].params["args"]["tag"] == "${env:PGPW}"
    # the plan keeps them too (and so the cache key); the stage's task resolves them
    plan = build_plan(cfg, source)
    assert plan.stages["a"].kind.params.args == {"tag": "${env:PGPW}"}  # type: ignore[attr-defined]
    payload = {"kind": "python", "stage": "a", "params": plan.stages["a"].kind.params.model_dump(mode="json")}
    assert stage_kind(payload).params.args == {"tag": SECRET}  # type: ignore[attr-defined]
    monkeypatch.delenv("PGPW")  # not set where the task runs: the stage fails, naming the reference
    with pytest.raises(ConfigError, match=r"^stages.a.params.args.tag: \$\{env:PGPW\}: the environment variable"):
        stage_kind(payload)


def test_set_overrides_may_hold_references(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE_YAML)
    cfg, _ = read_config(path, ["metadata=postgresql://other:${env:PGPW}@h/db", "stages.a.params.args.tag=${env:X}"])
    assert cfg.metadata == "postgresql://other:${env:PGPW}@h/db"
    assert cfg.stages[0].params["args"]["tag"] == "${env:X}"


def test_a_literal_password_is_redacted_in_the_stored_config() -> None:
    cfg = PipelineConfig.model_validate(
        {
            "name": "p",
            "metadata": f"postgresql://ml:{SECRET}@db.internal/raypipe?sslpassword={SECRET}&sslmode=require",
            "stages": [{"name": "a", "kind": "python", "params": {"function": "json:dumps"}}],
        }
    )
    stored = json.loads(stored_config_json(cfg, "/store"))
    assert stored["metadata"] == "postgresql://ml:***@db.internal/raypipe?sslpassword=***&sslmode=require"
    assert stored["storage"] == "/store"
    assert cfg.metadata is not None and SECRET in cfg.metadata  # the run itself still connects with it


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("description: '${env:PGPW}'", "description"),
        ("storage: 's3://bucket/${env:PGPW}'", "storage"),
        ("ray: {address: '${env:PGPW}'}", "ray.address"),
        ("scheduler: {policy: '${env:PGPW}'}", "scheduler.policy"),
    ],
)
def test_a_reference_where_nothing_resolves_it_is_refused_at_load(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        PIPELINE_YAML.replace('ray:\n  runtime_env: {env_vars: {API_TOKEN: "${file:/run/secrets/t}"}}\n', "").replace(
            "name: p\n", f"name: p\n{line}\n"
        )
    )
    with pytest.raises(ConfigError) as e:
        read_config(path)
    assert str(e.value).startswith(
        f"{path}:2 {field}: ${{env:PGPW}}: a secret reference is resolved only in a pipeline's `metadata`, "
        "its stages' `params` (a deploy stage's: only its `auth` tokens, `force_variant.token` and `secret`), "
        "`tracking` and `ray.runtime_env`"
    )


def test_credentials_in_a_storage_uri_are_refused() -> None:
    with pytest.raises(ConfigError, match="credentials in a storage URI would be written into every artifact"):
        parse_config(
            {"name": "p", "storage": f"s3://AKIAXX:{SECRET}@bucket/root", "stages": [{"name": "a", "kind": "python"}]},
            ConfigSource(path="p.yaml"),
        )


def test_a_serve_spec_holds_no_references(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("app: a\nmodel: m\nsalt: ${env:PGPW}\nvariants: [{version: 1, weight: 100}]\n")
    with pytest.raises(ConfigError, match=r"app.yaml:3 salt: \$\{env:PGPW\}: a secret reference is resolved only"):
        load_spec(path)


# --------------------------------------------------------------------------- the metadata store


def test_the_metadata_store_resolves_references_to_connect_and_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_FILE", str(tmp_path / "m.db"))
    meta = MetadataStore("sqlite:///${env:DB_FILE}")
    assert meta.url == str(tmp_path / "m.db")  # a SQLite path is no secret: the file's path
    meta.close()
    monkeypatch.setenv("RAYPIPE_DB", "${env:DB_FILE}")
    open_existing().close()
    with pytest.raises(ConfigError) as e:
        MetadataStore("postgresql://ml:${env:NOT_SET_ANYWHERE}@127.0.0.1:1/db")
    assert str(e.value) == (
        "metadata store URL: ${env:NOT_SET_ANYWHERE}: the environment variable NOT_SET_ANYWHERE is not set"
    )


# --------------------------------------------------------------------------- the closed loop

RETRAIN_PIPELINE = {
    "name": "loop",
    "storage": "/tmp/store",
    "metadata": f"postgresql://ml:{SECRET}@db/raypipe",
    "stages": [
        {"name": "gen", "kind": "python", "params": {"function": "m:f", "args": {"token": "${env:PGPW}"}}},
        {"name": "profile", "kind": "data.profile", "inputs": {"data": "gen.data"}},
        {"name": "train", "kind": "train", "inputs": {"train": "gen.data"}},
        {
            "name": "register",
            "kind": "register",
            "inputs": {"model": "train.model", "profile": "profile.profile"},
            "params": {"name": "sensors"},
        },
        {"name": "deploy", "kind": "deploy", "depends_on": ["register"], "params": {"app": "s", "model": "sensors"}},
    ],
}


def test_the_retraining_yaml_holds_no_secret() -> None:
    doc = retraining_pipeline(RETRAIN_PIPELINE, RetrainSpec(), "s", "sensors")
    assert doc["metadata"] == "postgresql://ml:***@db/raypipe"
    text = retraining_yaml(doc, app="s", cycle_id="c1", drift={"kind": "data", "variant": "v1"})
    assert SECRET not in text
    assert "postgresql://ml:***@db/raypipe" in text and "${env:PGPW}" in text
    referenced = retraining_pipeline(
        {**RETRAIN_PIPELINE, "metadata": "postgresql://ml:${env:PGPW}@db/r"}, RetrainSpec(), "s", "sensors"
    )
    assert referenced["metadata"] == "postgresql://ml:${env:PGPW}@db/r"


def _spec() -> ServeSpec:
    return ServeSpec.model_validate(
        {"app": "s", "model": "sensors", "variants": [{"version": 1, "weight": 100}], "monitor": {}, "retrain": {}}
    )


def test_the_loops_kv_config_holds_no_secret(tmp_path: Path) -> None:
    db = f"postgresql://ml:{SECRET}@db/raypipe"
    config = loop_config(_spec(), RETRAIN_PIPELINE, db=db, storage="/tmp/store", workdir=str(tmp_path))
    text = json.dumps(config)
    assert SECRET not in text
    assert config["db"] == "postgresql://ml:***@db/raypipe"
    assert config["pipeline"]["metadata"] == "postgresql://ml:***@db/raypipe"
    assert config["pipeline"]["stages"][0]["params"]["args"]["token"] == "${env:PGPW}"
    assert config["loopdir"] == os.path.join("/tmp/store", "loops", "s")
    # the controller gets the real URL in its environment, and opens that store
    env = actor_env(db)
    assert env == {"RAYPIPE_DB": db}
    assert actor_url(config["db"], env) == db
    with pytest.raises(RaypipeError, match=r"RAYPIPE_DB in this actor's environment does not name that store"):
        actor_url(config["db"], {})
    with pytest.raises(RaypipeError):
        actor_url(config["db"], {"RAYPIPE_DB": "postgresql://ml:x@other/raypipe"})
    # references and SQLite paths are kept as they are, and nothing goes to the environment
    ref = "postgresql://ml:${env:PGPW}@db/raypipe"
    assert loop_config(_spec(), RETRAIN_PIPELINE, db=ref, storage="/s", workdir="/w")["db"] == ref
    assert actor_env(ref) is None and actor_env("/tmp/x.db") is None
    assert actor_url(ref, {}) == ref


def test_the_retraining_drivers_command_line_holds_no_database_url() -> None:
    db = f"postgresql://ml:{SECRET}@db/raypipe"
    for args in (run_args("/s/loops/s/c1.yaml", "loop-retrain-c1"), resume_args("loop-retrain-c1")):
        argv = runner_command(sys.executable, args, "10.0.0.1:6379")
        assert argv[:3] == [sys.executable, "-m", "raypipe.runner"]
        assert "--db" not in argv and not any("postgresql" in a or SECRET in a for a in argv)
    assert resume_args("r") == ["resume", "r"]
    env = runner_env({"PATH": "/bin", "PGPW": SECRET}, address="10.0.0.1:6379", db=db)
    assert env["RAYPIPE_DB"] == db and env["RAY_ADDRESS"] == "10.0.0.1:6379" and env["PATH"] == "/bin"


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
        ("s3://AKIAEXAMPLE:wJalr/K7MDENG+bPx@bucket/root", "s3://AKIAEXAMPLE:***@bucket/root"),
        ("https://user:tok@example.com/x?token=abc#frag", "https://user:***@example.com/x?token=***#frag"),
        ("http://u:pw@h/x", "http://u:***@h/x"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db?passwd=pw", "postgresql://u@h/db?passwd=***"),
        (
            "postgresql://u@h/db?sslpassword=x&application_name=a",
            "postgresql://u@h/db?sslpassword=***&application_name=a",
        ),
        (
            "https://h/x?secret=s&token=t&client_secret=c&page=2",
            "https://h/x?secret=***&token=***&client_secret=***&page=2",
        ),
        ("host=h port=5432 user=u password=pw dbname=d", "host=h port=5432 user=u password=*** dbname=d"),
        ("host=h password='a b\\' c' dbname=d", "host=h password=*** dbname=d"),
        ("host=h passwd = pw sslpassword=k", "host=h passwd = *** sslpassword=***"),
        ("cannot open postgresql://u:pw@h/db: refused", "cannot open postgresql://u:***@h/db: refused"),
        # kept: no password, references only, already redacted, ports and '@' in paths
        ("postgresql://postgres@127.0.0.1:5432/db", "postgresql://postgres@127.0.0.1:5432/db"),
        ("postgresql://u:${env:PGPW}@h/db", "postgresql://u:${env:PGPW}@h/db"),
        ("postgresql://u@h/db?password=${file:/run/pw}", "postgresql://u@h/db?password=${file:/run/pw}"),
        ("postgresql://u:x${env:PGPW}@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:***@h/db", "postgresql://u:***@h/db"),
        ("http://h:8080/x@y", "http://h:8080/x@y"),
        ("s3://bucket/path@v1", "s3://bucket/path@v1"),
        ("/tmp/raypipe.db", "/tmp/raypipe.db"),
        ("sqlite:///tmp/raypipe.db", "sqlite:///tmp/raypipe.db"),
        ("host=h dbname=d", "host=h dbname=d"),
    ],
)
def test_redact_covers_every_url_form(text: str, redacted: str) -> None:
    assert redact(text) == redacted
    assert redact(redacted) == redacted
    assert sql_redact is redact  # the store's callers import it from there


def test_a_deploy_stage_holds_references_only_where_it_takes_secrets() -> None:
    doc = {
        "name": "p",
        "stages": [
            {
                "name": "deploy",
                "kind": "deploy",
                "params": {
                    "app": "a",
                    "model": "m",
                    "salt": "${env:PGPW}",
                    "variants": [{"version": 1, "weight": 100}],
                },
            }
        ],
    }
    cfg = parse_config(doc, ConfigSource(path="p.yaml"))  # stage params may hold references...
    with pytest.raises(ConfigError, match=r"stages\[0\]\.params\.salt: \$\{env:PGPW\}: a secret reference is resolved"):
        build_plan(cfg, ConfigSource(path="p.yaml"))  # ... a serve spec's only where it takes secrets (auth)
