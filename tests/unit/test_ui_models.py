"""``raypipe ui``'s model pages beyond one version, on a real SQLite store (no Ray): two
versions compared (metrics with their difference, params, what each was trained on, the run
and who ran it; unknown versions a 404), and a sweep's trials (a ``tune`` stage's ``trials``
output) as a sortable table and parallel coordinates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient

from raypipe.store.artifacts import ArtifactRef, ArtifactStore
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from raypipe.ui import UiSettings, create_app
from raypipe.ui.graphs import axis_of, parallel_coordinates
from tests.unit.ui_store import EVIL, DemoStore, build

SWEEP = "demo-20260103-000000-cccccc"
#: The sweep's trials as a tune stage writes them: a NaN metric for the trial that errored.
TRIALS = pd.DataFrame(
    {
        "trial_id": ["t0", "t1", "t2", "t3", "t4"],
        "config/lr": [0.0001, 0.001, 0.01, 0.1, 0.003],
        "config/optimizer": ["sgd", "adam", "adam", "sgd", EVIL],
        "config/layers": [1, 2, 3, 2, 1],
        "status": ["TERMINATED", "TERMINATED", "TERMINATED", "ERROR", "TERMINATED"],
        "iterations": [5, 5, 5, 1, 3],
        "val_accuracy_last": [0.71, 0.90, 0.88, float("nan"), 0.80],
        "val_accuracy_best": [0.72, 0.93, 0.89, float("nan"), 0.81],
        "stopped_early": [False, False, False, False, True],
        "error": [None, None, None, "boom", None],
    }
)


def add_sweep(demo: DemoStore) -> None:
    """A run whose ``tune`` stage (on the demo's ``prepare.table``) outputs the trials and a
    model, registered as version 2 of ``demo-model`` by ``carol``."""
    art = ArtifactStore(demo.root)
    meta = MetadataStore(demo.db)
    try:
        trials = art.put_value(TRIALS)
        model = ArtifactRef(
            uri=str(Path(demo.root) / "objects" / "cd" / "model.tar"),
            sha256="cd" * 32,
            size=23_456,
            format="model",
            schema={
                "task": "classification",
                "label": "y",
                "features": ["x", "z"],
                "params": {"lr": 0.001, "optimizer": "adam", "model": {"layers": 2}},
                "code": "c0de2",
            },
        )
        stages = [
            {
                "name": "sweep",
                "kind": "tune",
                "inputs": {"table": "prepare.table"},
                "params": {"metric": "val_accuracy", "mode": "max", "space": {"lr": {"loguniform": [1e-4, 0.1]}}},
            }
        ]
        config = json.dumps({"name": "demo", "storage": demo.root, "stages": stages})
        meta.create_run(SWEEP, "demo", config, "pipeline.yaml", demo.root, actor="carol")
        sid = meta.start_stage(SWEEP, "sweep", 1, "key-sweep")
        meta.succeed_stage(sid, {"table": demo.refs["table"]}, {"model": model, "trials": trials})
        ModelRegistry(meta).register(
            "demo-model", model, SWEEP, "sweep", sid, metrics={"accuracy": 0.95, "val_accuracy": 0.93, "loss": 0.2}
        )
        meta.finish_run(SWEEP, "succeeded")
    finally:
        meta.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    demo = build(tmp_path_factory.mktemp("ui-models"))
    add_sweep(demo)
    return TestClient(create_app(UiSettings(db=demo.db)))


def get(client: TestClient, path: str, status: int = 200) -> Any:
    r = client.get(path)
    assert r.status_code == status, r.text
    return r.json() if r.headers["content-type"].startswith("application/json") else r.text


def test_two_versions_compared_metrics_params_inputs_and_who(client: TestClient) -> None:
    doc = get(client, "/api/models/demo-model/compare?a=1&b=2")
    metrics = {m["name"]: m for m in doc["metrics"]}
    assert metrics["accuracy"]["a"] == 0.9 and metrics["accuracy"]["b"] == 0.95
    assert metrics["accuracy"]["diff"] == pytest.approx(0.05)
    assert metrics["f1"] == {"name": "f1", "a": 0.875, "b": None, "diff": None}
    assert metrics["loss"]["a"] is None and metrics["loss"]["diff"] is None
    params = {p["name"]: p for p in doc["params"]}
    assert params["model.layers"] == {"name": "model.layers", "a": None, "b": 2, "same": False}
    assert params["optimizer"]["b"] == "adam" and not params["optimizer"]["same"]
    a, b = doc["a"], doc["b"]
    assert (a["actor"], a["run_id"], a["stage"]) == ("alice", "demo-20260101-000000-aaaaaa", "train")
    assert (b["actor"], b["run_id"], b["stage"]) == ("carol", SWEEP, "sweep")
    assert b["run"]["pipeline"] == "demo" and b["aliases"] == [] and "production" in a["aliases"]
    # both were trained on the same prepared table, made from the same raw file
    made = {n["stage"]: n for n in a["inputs"]}
    assert (made["prepare"]["output"], made["prepare"]["format"]) == ("table", "parquet") and "ingest" in made
    assert [n["stage"] for n in b["inputs"]] == ["prepare", "ingest"]
    assert (
        [s["uri"].rsplit("/", 1)[-1] for s in a["sources"]]
        == ["raw.csv"]
        == [s["uri"].rsplit("/", 1)[-1] for s in b["sources"]]
    )
    shared = {n["sha256"] for n in b["inputs"] + b["sources"]}
    assert len(shared) == 3 and set(doc["shared_inputs"]) == shared
    assert doc["same_artifact"] is False

    html = get(client, "/models/demo-model/compare?a=1&b=2")
    assert 'id="compare-metrics"' in html and "+0.05" in html and "carol" in html and "alice" in html
    assert 'class="differs"' in html and "raw.csv" in html and ">prepare</a>.table" in html
    # the model page offers the form: the two newest versions filled in
    model = get(client, "/models/demo-model")
    form = re.search(r'<form class="action" id="compare-form".*?</form>', model, re.S)
    assert form and 'action="/models/demo-model/compare"' in form.group(0)
    assert 'name="a" size="4" value="1"' in form.group(0) and 'name="b" size="4" value="2"' in form.group(0)


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("a=1&b=7", 404, "has no version 7"),
        ("a=9&b=1", 404, "has no version 9"),
        ("b=2", 400, "query parameter a"),
        ("a=1&b=x", 400, "b='x'"),
    ],
)
def test_compare_refuses_unknown_versions_and_bad_parameters(
    client: TestClient, query: str, status: int, message: str
) -> None:
    doc = get(client, f"/api/models/demo-model/compare?{query}", status)
    assert doc["status"] == status and message in doc["error"]
    html = get(client, f"/models/demo-model/compare?{query}", status)
    assert message in html.replace("&#39;", "'")
    assert "no model 'nope'" in get(client, "/api/models/nope/compare?a=1&b=2", 404)["error"]


def test_a_sweeps_trials_sorted_with_the_best_and_parallel_coordinates(client: TestClient) -> None:
    doc = get(client, "/api/models/demo-model/trials?version=2")
    assert (doc["metric"], doc["mode"], doc["best_trial"], doc["num_rows"]) == ("val_accuracy", "max", "t1", 5)
    assert doc["params"] == ["config/lr", "config/optimizer", "config/layers"]
    # by default best first; the errored trial (no metric) last
    assert [r["trial_id"] for r in doc["rows"]] == ["t1", "t2", "t4", "t0", "t3"]
    assert doc["rows"][-1]["val_accuracy_best"] is None and doc["rows"][-1]["error"] == "boom"
    by_lr = get(client, "/api/models/demo-model/trials?version=2&sort=config/lr&order=desc")["rows"]
    assert [r["trial_id"] for r in by_lr] == ["t3", "t2", "t4", "t1", "t0"]
    by_opt = get(client, "/api/models/demo-model/trials?version=2&sort=config/optimizer")["rows"]
    assert [r["config/optimizer"] for r in by_opt] == [EVIL, "adam", "adam", "sgd", "sgd"]
    assert "sort='nope'" in get(client, "/api/models/demo-model/trials?version=2&sort=nope", 400)["error"]
    assert "order='up'" in get(client, "/api/models/demo-model/trials?version=2&order=up", 400)["error"]
    # a version not trained by a sweep has none
    assert "not trained by a sweep" in get(client, "/api/models/demo-model/trials?version=1", 404)["error"]
    assert "has no version 9" in get(client, "/api/models/demo-model/trials?version=9", 404)["error"]
    assert "no model 'nope'" in get(client, "/api/models/nope/trials", 404)["error"]
    assert get(client, "/api/models/demo-model?version=1")["selected"]["trials"] is None
    assert get(client, "/api/models/demo-model")["selected"]["trials"]["best_trial"] == "t1"

    html = get(client, "/models/demo-model?version=2")
    table = re.search(r'<table class="list" id="trials-table">.*?</table>', html, re.S)
    assert table is not None
    body = table.group(0)
    assert body.index(">t1<") < body.index(">t2<") < body.index(">t0<") < body.index(">t3<")
    assert '<tr class="best"><td>t1</td>' in body
    # each header sorts by its column (twice: the other way)
    assert 'href="/models/demo-model?version=2&amp;sort=config%2Flr&amp;order=asc#trials"' in body
    html = get(client, "/models/demo-model?version=2&sort=config/lr&order=asc")
    assert 'sort=config%2Flr&amp;order=desc#trials">lr ▲' in html
    svg = re.search(r'<div class="scroll" id="parcoords">(<svg.*?</svg>)', html, re.S)
    assert svg is not None
    fig = svg.group(1)
    # one polyline per trial (the errored one stops before its missing metric), the best drawn last
    assert fig.count('<g class="trial') == 5 and fig.count('<g class="trial best">') == 1
    assert fig.rindex('<g class="trial') == fig.index('<g class="trial best">')
    assert "<title>t1: lr=0.001, optimizer=adam, layers=2, val_accuracy_best=0.93</title>" in fig
    assert "(log)" in fig and ">adam<" in fig and ">sgd<" in fig  # lr spans 1000x; optimizer ordered ticks
    assert EVIL not in html and "&lt;script&gt;" in fig
    assert get(client, "/models/demo-model?version=1").count('id="trials-table"') == 0


def test_parallel_coordinates_axes() -> None:
    lr = axis_of("lr", [0.1, 0.0001, None, float("nan")])
    assert lr.log and (lr.lo, lr.hi) == (0.0001, 0.1) and not lr.categorical
    layers = axis_of("layers", [1, 2, 3])
    assert not layers.log and (layers.lo, layers.hi) == (1.0, 3.0)
    opt = axis_of("opt", ["sgd", "adam", None, "adam"])
    assert opt.ticks == ("adam", "sgd")
    mixed = axis_of("act", [10, "relu", 2])
    assert mixed.ticks == ("2", "10", "relu")
    svg = parallel_coordinates(
        [lr, opt], [("a", [0.1, "sgd"]), ("b", [0.0001, "adam"]), ("c", [None, "adam"])], best="b"
    )
    # a: top right to top; b: bottom to bottom; c: a lone point on the opt axis (its lr is missing)
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1
    top, bottom = re.findall(r'<polyline points="([^"]+)"', svg)
    assert top.split()[0].split(",")[1] == top.split()[1].split(",")[1]
    assert '<g class="trial best"><title>b: lr=0.0001, opt=adam</title>' in svg
