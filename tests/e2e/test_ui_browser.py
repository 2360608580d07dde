"""``raypipe ui`` in a real browser (Debian's chromium, driven by Playwright for Python) on the
store of a real pipeline run (local Ray): find the run, open its DAG, click the train stage,
read its log (what the stage printed in its Ray worker), see a report and a PNG, open the
model, its training curves and its lineage, follow the lineage to the dataset's head; the
apps page; log in and move an alias as an admin, be refused as a user who is not one.

Screenshots of each page go to the test's folder and to /work/ui-shots/ when that folder
can be made (for people to look at).  Without chromium the test is skipped, except in CI
(``CI`` set), where it fails: CI installs it (.ci/run)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import raypipe
from raypipe.ui import UiSettings, create_app
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(os.environ.get("RAYPIPE_UI_SHOTS", "/work/ui-shots"))
F = "tests.e2e.ui_funcs"


ALICE, BOB = "alice-browser-token-0123456789", "bob-browser-token-0123456789"


def with_users(db: str) -> None:
    """A platform config in ``db``: alice an admin, bob not."""
    from raypipe import identity
    from raypipe.config.platform import PlatformConfig
    from raypipe.principal import Principal, acting_as
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.platform import PlatformStore

    users = {"alice": (ALICE, True), "bob": (BOB, False)}
    cfg = PlatformConfig.model_validate(
        {"users": {n: {"token_sha256": identity.token_sha256(t), "admin": a} for n, (t, a) in users.items()}}
    )
    meta = MetadataStore(db)
    try:
        with acting_as(Principal("root", admin=True)):
            PlatformStore(meta).apply(cfg, expected=None)
    finally:
        meta.close()


def need_browser() -> Any:
    """Playwright's sync API, or a skip (locally) or failure (CI) saying what is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install playwright)"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


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


@pytest.fixture()
def served(tmp_path: Path, ray_local: str) -> Iterator[tuple[str, str]]:
    """The UI on a free 127.0.0.1 port over the store of one real run, its /scheduler on the
    run's cluster: (base URL, run id)."""
    import uvicorn

    need_browser()  # before the run: no browser, nothing to run it for
    result = raypipe.run(pipeline(tmp_path))
    assert result.ok, result.errors
    db = str(tmp_path / "store" / "raypipe.db")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(UiSettings(db=db, address=ray_local)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the UI server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", result.run_id
    server.should_exit = True
    thread.join(timeout=10)


def test_find_a_run_read_its_train_log_and_follow_the_model_to_its_data(
    served: tuple[str, str], tmp_path: Path
) -> None:
    sync_playwright = need_browser()
    base, run_id = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        page.on("request", lambda r: None if r.url.startswith(base) else problems.append(f"outside: {r.url}"))

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

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

        # actions behind identities: alice (an admin) moves an alias, bob (no admin) is refused
        with_users(str(tmp_path / "store" / "raypipe.db"))

        def login(token: str) -> None:
            page.goto(base + "/login")
            page.locator("#login input[name=token]").fill(token)
            page.locator("#login button").click()
            page.wait_for_url("**/runs")

        def move_alias(alias: str) -> None:
            page.goto(base + "/models/ui-demo")
            form = page.locator("#alias-form")
            form.locator("input[name=alias]").fill(alias)
            form.locator("input[name=version]").fill("1")
            form.locator("input[name=reason]").fill("from the browser")
            form.locator("button").click()

        move_alias("production")
        assert "401" in page.locator("h1").inner_text() and "log in at /login" in page.locator("p.error").inner_text()
        login(ALICE)
        move_alias("production")
        page.wait_for_url("**/models/ui-demo")
        assert "production → v1" in page.locator("p.meta").inner_text()
        assert "from the browser" in page.locator("main").inner_text()  # the alias history's reason
        shot("09-alias-moved-by-admin")
        page.goto(base + "/login")
        with page.expect_navigation(url="**/login"):  # the logout's redirect, before the next page
            page.get_by_role("button", name="log out").click()
        login(BOB)
        move_alias("staging")
        assert "403" in page.locator("h1").inner_text()
        assert "bob is not an admin" in page.locator("p.error").inner_text()
        shot("10-alias-refused")
        browser.close()
    refused = "Failed to load resource: the server responded with a status of {}"
    assert problems == [refused.format("401 (Unauthorized)"), refused.format("403 (Forbidden)")]  # the refusals
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        for f in shots.iterdir():
            shutil.copy(f, SHOTS / f.name)
    except OSError:
        pass  # a machine without /work: the screenshots stay in the test's folder
