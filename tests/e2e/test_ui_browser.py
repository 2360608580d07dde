"""``raypipe ui`` in a real browser (Debian's chromium, driven by Playwright for Python) on the
store of a real pipeline run (local Ray): find the run, open its DAG, click the train stage,
read its log (what the stage printed in its Ray worker), see a report and a PNG, open the
model, its training curves and its lineage, follow the lineage to the dataset's head; the
apps page; a sweep's trials (sorted, in parallel coordinates) and two versions compared (the
sweep's version added through the store: no second run); log in and move an alias as an
admin, be refused as a user who is not one.

Screenshots of each page go to the test's folder and to /work/ui-shots/ when that folder
can be made (for people to look at).  Without chromium the test is skipped, except in CI
(``CI`` set), where it fails: CI installs it (.ci/run)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import raypipe
from raypipe.ui import UiSettings
from tests.e2e.browser import ALICE, BOB, WatchedPage, keep_shots, login, logout, need_browser, ui_server, with_users

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

F = "tests.e2e.ui_funcs"


def pipeline(tmp_path: Path) -> raypipe.PipelineConfig:
    csv = tmp_path / "points.csv"
    pd.DataFrame({"x": range(60), "y": [float(i % 7) for i in range(60)]}).to_csv(csv, index=False)
    stages: list[dict[str, Any]] = [
        {"name": "read", "kind": "data.read", "params": {"path": str(csv)}},
        {"name": "train", "kind": "python", "inputs": {"data": "read.data"}, "params": {"function": f"{F}:train"}},
        {
            "name": "evaluate",
            "kind": "python",
            "inputs": {"model": "train.model"},
            "params": {"function": f"{F}:evaluate"},
        },
        {
            "name": "register",
            "kind": "register",
            "inputs": {"model": "train.model", "metrics": "evaluate.metrics"},
            "resources": {"cpu": 0},
            "params": {"name": "ui-demo", "aliases": ["candidate"], "description": "the browser test's model"},
        },
        {
            "name": "report",
            "kind": "python",
            "inputs": {"metrics": "evaluate.metrics"},
            "depends_on": ["register"],
            "params": {"function": f"{F}:report"},
        },
    ]
    return raypipe.PipelineConfig(
        name="ui-e2e", storage=str(tmp_path / "store"), stages=[raypipe.StageConfig(**s) for s in stages]
    )


def add_sweep(db: str, run_id: str) -> str:
    """Without a second Ray run: a run whose ``tune`` stage (on the real run's ``read.data``)
    kept four trials and a model, registered as ``ui-demo`` v2 through the store's API; its id."""
    from raypipe.store.artifacts import ArtifactStore
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.registry import ModelRegistry

    sweep = f"{run_id}-sweep"
    meta = MetadataStore(db)
    try:
        [read] = [s for s in meta.stage_runs(run_id) if s.stage == "read"]
        data = meta.io_of(read.id)["data"]
        art = ArtifactStore(str(Path(db).parent))
        trials = art.put_value(
            pd.DataFrame(
                {
                    "trial_id": ["t0", "t1", "t2", "t3"],
                    "config/lr": [0.0001, 0.003, 0.01, 0.1],
                    "config/optimizer": ["sgd", "adam", "adam", "sgd"],
                    "status": ["TERMINATED", "TERMINATED", "TERMINATED", "ERROR"],
                    "iterations": [5, 5, 5, 1],
                    "val_accuracy_last": [0.71, 0.90, 0.84, float("nan")],
                    "val_accuracy_best": [0.72, 0.93, 0.86, float("nan")],
                    "stopped_early": [False, False, True, False],
                    "error": [None, None, None, "diverged"],
                }
            )
        )
        model = art.put_value({"weights": [0.5, 0.25]})  # the sweep's best model, as the stage stored it
        model = dataclasses.replace(model, format="model", schema={"params": {"lr": 0.003}})
        stages = [
            {
                "name": "sweep",
                "kind": "tune",
                "inputs": {"data": "read.data"},
                "params": {"metric": "val_accuracy", "mode": "max"},
            }
        ]
        config = json.dumps({"name": "ui-e2e", "storage": str(Path(db).parent), "stages": stages})
        meta.create_run(sweep, "ui-e2e", config, "pipeline.yaml", str(Path(db).parent), actor="carol")
        sid = meta.start_stage(sweep, "sweep", 1, "key-sweep")
        meta.succeed_stage(sid, {"data": data}, {"model": model, "trials": trials})
        ModelRegistry(meta).register(
            "ui-demo", model, sweep, "sweep", sid, metrics={"accuracy": 0.95, "val_accuracy": 0.93}
        )
        meta.finish_run(sweep, "succeeded")
    finally:
        meta.close()
    return sweep


@pytest.fixture()
def served(tmp_path: Path, ray_local: str) -> Iterator[tuple[str, str]]:
    """The UI on a free 127.0.0.1 port over the store of one real run, its /scheduler on the
    run's cluster: (base URL, run id)."""
    need_browser()  # before the run: no browser, nothing to run it for
    result = raypipe.run(pipeline(tmp_path))
    assert result.ok, result.errors
    db = str(tmp_path / "store" / "raypipe.db")
    with ui_server(UiSettings(db=db, address=ray_local)) as base:
        yield base, result.run_id


def test_find_a_run_read_its_train_log_and_follow_the_model_to_its_data(
    served: tuple[str, str], tmp_path: Path
) -> None:
    sync_playwright = need_browser()
    base, run_id = served
    shots = tmp_path / "screenshots"
    with sync_playwright() as p:
        watched = WatchedPage(p, base, shots)
        browser, page, problems, shot = watched.browser, watched.page, watched.problems, watched.shot

        page.goto(base + "/")
        assert page.url == base + "/runs"
        row = page.locator("#runs tbody tr", has_text=run_id)
        assert "succeeded" in row.inner_text()
        shot("01-runs")
        row.get_by_role("link", name=run_id).click()
        page.wait_for_url(f"**/runs/{run_id}")
        dag = page.locator("svg.dag")
        assert dag.is_visible()
        assert dag.locator("g.node.st-ok").count() == 5
        shot("02-run")

        dag.locator(f'a[href="/runs/{run_id}/stages/train"]').click()
        page.wait_for_url("**/stages/train")
        log = page.locator("#log-text").inner_text()
        assert "epoch 6 loss=0.0467 val_accuracy=0.9767" in log  # printed in the stage's Ray worker
        assert "INFO raypipe.stage.train: trained on 60 rows" in log
        assert page.locator("svg.chart").count() == 2  # the history's loss and accuracy
        shot("03-stage-train")

        page.goto(f"{base}/runs/{run_id}/stages/report")
        assert page.locator(".md h1").inner_text() == "ui e2e report"
        image = page.locator("img.artifact")
        assert image.evaluate("img => img.complete && img.naturalWidth > 100")
        shot("04-stage-report")

        page.get_by_role("navigation").get_by_role("link", name="Models").click()
        page.locator("#models").get_by_role("link", name="ui-demo").click()
        page.wait_for_url("**/models/ui-demo")
        assert "v1" in page.locator("#versions").inner_text()
        lineage = page.locator("#lineage svg")
        text = lineage.text_content() or ""
        assert "points.csv" in text and "read.data" in text
        assert page.locator("svg.chart").count() == 2
        shot("05-model")

        lineage.locator(f'a[href="/runs/{run_id}/stages/read"]').click()
        page.wait_for_url("**/stages/read")
        head = page.locator("table.data").first
        assert head.locator("th").all_inner_texts() == ["x", "y"]
        assert head.locator("tbody tr").count() == 20
        shot("06-stage-read")

        page.get_by_role("navigation").get_by_role("link", name="Scheduler").click()
        page.wait_for_url("**/scheduler")
        assert "policy " in page.locator("p.meta").inner_text()  # the controller the run used answered
        assert page.locator("#jobs").is_visible()
        shot("07-scheduler")

        page.get_by_role("navigation").get_by_role("link", name="Apps").click()
        page.wait_for_url("**/apps")
        assert "No app deployed" in page.locator("main").inner_text()
        shot("08-apps")

        # a sweep's trials and two versions compared (v2 from a tune stage, added through the store)
        add_sweep(str(tmp_path / "store" / "raypipe.db"), run_id)
        page.goto(base + "/models/ui-demo")
        trials = page.locator("#trials-table tbody tr")
        assert trials.count() == 4 and trials.first.inner_text().startswith("t1")  # the best first
        assert "best trial t1" in page.locator("#version p.meta", has_text="trials of stage").inner_text()
        assert page.locator("#parcoords svg.parcoords polyline").count() == 4  # one line per trial
        shot("09-model-sweep")
        page.locator("#trials-table thead a", has_text="lr").click()
        page.wait_for_url(lambda url: "sort=config%2Flr&order=asc" in url)
        assert trials.first.inner_text().startswith("t0")  # the smallest learning rate first
        page.locator("#compare-form button").click()
        page.wait_for_url("**/models/ui-demo/compare?a=1&b=2")
        metrics = page.locator("#compare-metrics tbody tr", has_text="accuracy").first.inner_text()
        assert metrics.split() == ["accuracy", "0.93", "0.95", "+0.02"]  # v1's evaluate, the sweep's
        inputs = page.locator("#compare-inputs").inner_text()
        assert "read.data" in inputs and "both" in inputs  # both trained on the run's data
        shot("10-model-compare")

        # actions behind identities: alice (an admin) moves an alias, bob (no admin) is refused
        with_users(str(tmp_path / "store" / "raypipe.db"))

        def move_alias(alias: str) -> None:
            page.goto(base + "/models/ui-demo")
            form = page.locator("#alias-form")
            form.locator("input[name=alias]").fill(alias)
            form.locator("input[name=version]").fill("1")
            form.locator("input[name=reason]").fill("from the browser")
            form.locator("button").click()

        move_alias("production")
        assert "401" in page.locator("h1").inner_text() and "log in at /login" in page.locator("p.error").inner_text()
        login(page, base, ALICE)
        move_alias("production")
        page.wait_for_url("**/models/ui-demo")
        assert "production → v1" in page.locator("p.meta").first.inner_text()
        assert "from the browser" in page.locator("main").inner_text()  # the alias history's reason
        shot("11-alias-moved-by-admin")
        logout(page, base)
        login(page, base, BOB)
        move_alias("staging")
        assert "403" in page.locator("h1").inner_text()
        assert "bob is not an admin" in page.locator("p.error").inner_text()
        shot("12-alias-refused")
        browser.close()
    refused = "Failed to load resource: the server responded with a status of {}"
    assert problems == [refused.format("401 (Unauthorized)"), refused.format("403 (Forbidden)")]  # the refusals
    keep_shots(shots)
