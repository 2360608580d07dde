"""A table like users' tables, from raw CSV files to a served model, on a local Ray with real
Serve over HTTP (127.0.0.1): configs/tabular.yaml on a generated loans table (an integer
id, a uint64 reference above 2**63, numbers with missing values, text categories with rare
levels, ISO dates with nulls, true/false, free text, ~2% broken rows) spread over three
files, plus a deploy stage:

read -> validate (quarantine: exactly the broken rows) -> split -> profile -> train
(categorical and date features, ids and free text left out) -> evaluate (ROC AUC gate) ->
register -> deploy; then requests with the original fields: an unseen category (200,
counted), a left-out optional value (200), a bad date and a number for a category (422
naming the field).  The same rows in another order and file layout have the same version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from raypipe import api
from raypipe.config import PipelineConfig, parse_yaml
from raypipe.examples.tabular import broken_rows, make_loans, write_csv
from raypipe.serving import app as serving
from raypipe.serving.metrics import get_collector
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from tests.conftest import REPO, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

APP = "loans_e2e"
ROWS = 1800


def write_layout(df: Any, folder: Path, parts: int, seed: int) -> Path:
    """``df``'s rows, shuffled with ``seed``, as ``parts`` CSV files in ``folder``."""
    order = np.random.default_rng(seed).permutation(len(df))
    for k, chunk in enumerate(np.array_split(order, parts)):
        write_csv(df.iloc[chunk], folder / f"part-{k}.csv")
    return folder


def pipeline(root: Path, src: Path, port: int) -> dict[str, Any]:
    data, _ = parse_yaml((Path(REPO) / "configs" / "tabular.yaml").read_text(), "tabular.yaml")
    data["storage"] = str(root / "store")
    data["ray"] = {}
    stages = {s["name"]: s for s in data["stages"]}
    stages["read"]["params"] = {"path": str(src)}
    stages["train"]["params"].update(epochs=4, batch_size=128)
    stages["evaluate"]["params"]["gate"] = {"min": {"roc_auc": 0.62}}
    opts = {"num_cpus": 0.2}
    data["stages"].append(
        {
            "name": "deploy",
            "kind": "deploy",
            "inputs": {},
            "depends_on": ["register"],
            "resources": {"cpu": 0},
            "params": {
                "app": APP,
                "model": "loans",
                "variants": [{"version": "@candidate", "weight": 100, "ray_actor_options": opts}],
                "port": port,
                "ingress": {"ray_actor_options": opts},
            },
        }
    )
    return data


@pytest.fixture(scope="module")
def served(ray_local: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("tabular")
    df = make_loans(rows=ROWS, seed=11)
    src = write_layout(df, root / "csv", parts=3, seed=0)
    cfg = pipeline(root, src, free_port())
    result = api.run(PipelineConfig.model_validate(cfg))
    assert result.ok, result.errors
    yield {"df": df, "root": root, "cfg": cfg, "result": result, "url": serving.url(APP)}
    for name in serving.apps():
        serving.shutdown(name)
    from ray import serve

    serve.shutdown()


def value(served: dict[str, Any], ref: Any) -> Any:
    return api.read_artifact(ref.sha256, db=str(served["root"] / "store" / "raypipe.db"))


def test_broken_rows_are_quarantined_exactly_and_types_come_out_right(served: dict[str, Any]) -> None:
    res = served["result"]
    read = res.outputs["read"]["data"].schema["columns"]
    assert read["applicant_ref"] == "uint64", read  # not float64: every digit kept
    assert read["applied"] == "string" and read["region"] == "string" and read["employed"] == "bool"
    report = value(served, res.outputs["validate"]["report"])
    assert report["rows_checked"] == ROWS
    assert report["rows_quarantined"] == int(broken_rows(served["df"]).sum()) > 0.015 * ROWS
    assert "applied" in report["converted"]
    data = res.outputs["validate"]["data"].schema["columns"]
    assert data["applied"] == "date32[day]"
    quarantine = res.outputs["validate"]["quarantine"].schema
    assert quarantine["columns"]["applied"] == "string"  # the bad rows keep their original text


def test_model_learns_categories_and_dates_and_leaves_ids_and_text_out(served: dict[str, Any]) -> None:
    meta = MetadataStore(str(served["root"] / "store" / "raypipe.db"))
    try:
        m = ModelRegistry(meta).get("loans@candidate").model
    finally:
        meta.close()
    kinds = {f["name"]: f["kind"] for f in m["preprocessing"]["features"]}
    assert kinds["region"] == kinds["channel"] == kinds["employed"] == "category"
    assert kinds["applied"] == "datetime" and kinds["income"] == "numeric"
    assert set(m["excluded"]) == {"loan_id", "applicant_ref", "notes"}
    optional = {f["name"] for f in m["preprocessing"]["features"] if f["missing"]}
    assert {"income", "applied", "credit_score"} <= optional
    metrics = value(served, served["result"].outputs["evaluate"]["metrics"])
    assert metrics["roc_auc"] >= 0.62 and metrics["pr_auc"] is not None
    assert value(served, served["result"].outputs["evaluate"]["confusion_matrix"])["labels"] == [0, 1]


def _row(**over: Any) -> dict[str, Any]:
    row = {
        "amount": 12000.0,
        "income": 48000.0,
        "age": 41.0,
        "term_months": 36.0,
        "debt_ratio": 0.31,
        "credit_score": 690.0,
        "region": "north",
        "channel": "web",
        "applied": "2024-03-01",
        "employed": True,
    }
    row.update(over)
    return {k: v for k, v in row.items() if v is not ...}


def test_served_model_takes_the_original_fields(served: dict[str, Any]) -> None:
    url = served["url"]
    meta = requests.get(f"{url}/metadata", timeout=30).json()
    inputs = {i["name"]: i for i in next(iter(meta["variants"].values()))["inputs"]}
    assert inputs["region"]["kind"] == "category" and "north" in inputs["region"]["categories"]
    assert inputs["applied"]["kind"] == "datetime" and inputs["applied"]["dtype"] == "date32[day]"
    assert inputs["income"]["optional"] and not inputs["amount"]["optional"]

    ok = requests.post(f"{url}/predict", json={"features": _row()}, timeout=60)
    assert ok.status_code == 200, ok.text
    assert ok.json()["prediction"] in (0, 1)
    unseen = requests.post(f"{url}/predict", json={"features": _row(region="atlantis")}, timeout=60)
    assert unseen.status_code == 200, unseen.text
    left_out = requests.post(f"{url}/predict", json={"features": _row(income=..., applied=None)}, timeout=60)
    assert left_out.status_code == 200, left_out.text
    batch = requests.post(
        f"{url}/predict", json={"instances": [_row(), _row(channel="carrier pigeon", region="mars")]}, timeout=60
    )
    assert batch.status_code == 200 and len(batch.json()["predictions"]) == 2

    bad_date = requests.post(f"{url}/predict", json={"features": _row(applied="2024-02-30")}, timeout=60)
    assert bad_date.status_code == 422
    assert bad_date.json()["errors"][0]["field"] == "features.applied"
    assert "ISO date" in bad_date.json()["errors"][0]["reason"]
    number = requests.post(f"{url}/predict", json={"features": _row(region=3)}, timeout=60)
    assert number.status_code == 422 and number.json()["errors"][0]["field"] == "features.region"
    required = requests.post(f"{url}/predict", json={"features": _row(amount=...)}, timeout=60)
    assert required.status_code == 422 and required.json()["errors"][0] == {
        "field": "features.amount",
        "reason": "missing field",
    }

    collector = get_collector(APP)

    def unseen_counted() -> bool:
        import ray

        snap = ray.get(collector.snapshot.remote())
        return sum(v.get("unseen_categories", 0) for v in snap.values()) == 3  # atlantis; carrier pigeon, mars

    wait_for(unseen_counted, timeout_s=30, what="unseen categories counted in the variant's metrics")


def test_same_rows_in_another_order_and_layout_have_one_version(served: dict[str, Any], tmp_path: Path) -> None:
    other = write_layout(served["df"], tmp_path / "csv", parts=5, seed=3)
    cfg = {**served["cfg"], "storage": str(tmp_path / "store")}
    cfg["stages"] = [
        {**s, "params": {"path": str(other)}} if s["name"] == "read" else s
        for s in cfg["stages"]
        if s["name"] in ("read", "validate")
    ]
    res = api.run(PipelineConfig.model_validate(cfg))
    assert res.ok, res.errors
    first = served["result"].outputs
    assert res.outputs["read"]["data"].sha256 == first["read"]["data"].sha256
    assert res.outputs["validate"]["data"].sha256 == first["validate"]["data"].sha256
