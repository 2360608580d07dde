"""``raypipe ui --address`` on a real Serve app over HTTP (127.0.0.1): /apps lists it, its page
shows the live split with per-variant requests and latency and the A/B report, and the split
action changes the weights as the caller (the OS user from this machine, audited), refused
for a platform user who is not an admin.  The same app in a real browser (Playwright on Debian's
chromium, skipped without them as tests/e2e/test_ui_browser.py is): the A/B table's numbers
and the drift charts grow with more traffic (drifted rows among it), the split form acts for
an admin and refuses one who is not, the rollout and loop actions refuse an app without them,
two of the app's model versions compared.  Nothing here asserts on time."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from raypipe import identity
from raypipe.monitoring.monitor import start_monitor, stop_monitor
from raypipe.serving import app as serve_app
from raypipe.serving.spec import ServeSpec
from raypipe.store.metadata import MetadataStore
from raypipe.ui import UiSettings, create_app
from tests.conftest import free_port, wait_for
from tests.e2e.browser import ALICE, BOB, WatchedPage, keep_shots, login, logout, need_browser, ui_server, with_users
from tests.integration.serve_funcs import drift_reference, register_digits, sample_rows

pytestmark = pytest.mark.slow

APP = "ui-shop"
LOCAL = ("127.0.0.1", 40000)
JSON_HEADERS = {"x-raypipe-request": "1"}


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(identity.TOKEN_ENV, raising=False)
    monkeypatch.delenv(identity.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def send(url: str, rows: list[dict[str, float]]) -> None:
    for row in rows:
        req = urllib.request.Request(
            url + "/predict", data=json.dumps({"features": row}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()


@pytest.fixture(scope="module")
def env(ray_local: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui-apps")
    db = register_digits(root, versions=2)
    opts = {"num_cpus": 0.1}
    spec = ServeSpec.model_validate(
        {
            "app": APP,
            "model": "digits",
            "variants": [
                {"version": 1, "weight": 100, "ray_actor_options": opts},
                {"version": 2, "weight": 0, "ray_actor_options": opts},
            ],
            "port": free_port(),
            "ingress": {"ray_actor_options": {"num_cpus": 0.1}},
            "reserve": False,
        }
    )
    url = serve_app.deploy(spec, db=db).url
    profile, model_meta = drift_reference(db)
    start_monitor(APP, profile, model_meta, {"window_rows": 20, "min_window_rows": 20, "min_feature_rows": 20})
    send(url, sample_rows(60))
    yield {"db": db, "address": ray_local, "url": url}
    from ray import serve

    stop_monitor(APP)
    serve.shutdown()


def test_the_apps_pages_show_the_live_split_and_the_ab_report_and_split_acts(env: dict[str, Any]) -> None:
    settings = UiSettings(db=env["db"], address=env["address"], cluster_timeout_s=30.0)
    client = TestClient(create_app(settings), client=LOCAL)
    listed = client.get("/api/apps").json()
    assert listed["connected"] is True and [a["app"] for a in listed["apps"]] == [APP]

    def counted() -> Any:  # the replicas report their counts to the collector every few seconds
        doc = client.get(f"/api/apps/{APP}").json()
        by = {v["label"]: v for v in (doc["ab"] or {}).get("variants", [])}
        windows = [len(f["window"]) for f in doc["drift"].get("v1", {}).values()]
        return (doc, by) if by.get("v1", {}).get("requests") == 60 and windows and min(windows) >= 2 else None

    doc, by = wait_for(counted, what="the 60 requests in the A/B report, the monitor's windows")  # type: ignore[misc]
    assert doc["connected"] is True and doc["status"]["weights"] == {"v1": 100.0, "v2": 0.0}
    assert by["v1"]["requests"] == 60 and by["v1"]["errors"] == 0 and by["v1"]["p99_ms"] is not None
    assert "srm" in doc["ab"] and doc["notes"] == {}
    # the monitor's windows of 20 rows: each feature's statistic and threshold per window
    drift = doc["drift"]["v1"]
    assert len(drift) == 64 and all(len(f["window"]) == len(f["threshold"]) >= 2 for f in drift.values())
    html = client.get(f"/apps/{APP}").text
    assert 'id="split"' in html and 'id="ab"' in html and 'id="split-form"' in html
    drawable = sum(1 for f in drift.values() if any(v is not None for v in f["statistic"]))
    assert drawable > 0  # windows of 20 rows tested (min_feature_rows 20): statistics to draw
    assert html.count('<svg class="chart"') == min(12, drawable)
    assert ('id="drift-none"' in html) == (drawable == 0)
    # the split action, as the OS user from this machine: the weights change, audited
    r = client.post(f"/api/apps/{APP}/split", json={"weights": {"v1": 50, "v2": 50}}, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["weights"] == {"v1": 50.0, "v2": 50.0}
    meta = MetadataStore(env["db"])
    try:
        [row] = meta.audit_log(APP, 10, action="serve.split")
        assert row["actor"] == identity.os_user() and row["detail"]["weights"] == {"v1": 50.0, "v2": 50.0}
    finally:
        meta.close()
    with_users(env["db"], {"bob": (BOB, False), "root": ("root-token-nobody-logs-in-with-0123", True)})
    # with users: bob is no admin, refused; the weights stay
    r = client.post(
        f"/api/apps/{APP}/split",
        json={"weights": {"v1": 100, "v2": 0}},
        headers={**JSON_HEADERS, "authorization": f"Bearer {BOB}"},
    )
    assert r.status_code == 403 and "bob is not an admin" in r.json()["error"]
    assert client.get(f"/api/apps/{APP}").json()["status"]["weights"] == {"v1": 50.0, "v2": 50.0}


def drifted_rows(n: int) -> list[dict[str, float]]:
    """Digits with their pixels inverted (16 - value): every window of them drifts."""
    return [{k: 16.0 - v for k, v in row.items()} for row in sample_rows(n, seed=1)]


def test_in_a_browser_the_ab_table_and_drift_charts_grow_and_the_actions_act_or_refuse(
    env: dict[str, Any], tmp_path: Path
) -> None:
    sync_playwright = need_browser()
    shots = tmp_path / "screenshots"
    settings = UiSettings(db=env["db"], address=env["address"], cluster_timeout_s=30.0)
    with ui_server(settings) as base, sync_playwright() as p:
        watched = WatchedPage(p, base, shots)
        browser, page, problems, shot = watched.browser, watched.page, watched.problems, watched.shot

        def split() -> dict[str, tuple[str, int]]:
            """Per variant of the split table: its weight and its requests (0 for none yet)."""
            out = {}
            for row in page.locator("#split tbody tr").all():
                cells = row.locator("td").all_inner_texts()
                out[cells[0].split()[0]] = (cells[2], int(cells[4]) if cells[4].isdigit() else 0)
            return out

        page.goto(base + "/apps")
        page.locator("main").get_by_role("link", name=APP).first.click()
        page.wait_for_url(f"**/apps/{APP}")
        shot("20-apps-app")
        before = sum(n for _, n in split().values())
        assert before >= 60  # the fixture's traffic
        # more traffic, the inverted digits among it: the A/B numbers grow, a window drifts
        send(env["url"], sample_rows(20, seed=2) + drifted_rows(60))

        def grown() -> Any:
            page.reload()
            total = sum(n for _, n in split().values())
            charts = page.locator("#drift svg.chart")
            drifted = charts.filter(has_text="drifted (ringed) in").locator("circle.flag").count()
            return (total, charts) if total == before + 80 and drifted else None

        total, charts = wait_for(grown, timeout_s=90, every_s=1.0, what="80 more requests, a drifted window")  # type: ignore[misc]
        assert charts.count() > 0 and charts.first.locator("polyline.line").count() >= 1
        assert page.locator("#ab").is_visible() and "sample ratio" in page.locator("main").inner_text()
        shot("21-apps-app-grown")

        # actions behind identities: nobody logged in is asked to; alice (an admin) changes the
        # split; bob (no admin) is refused, and so are the rollout and loop actions
        with_users(env["db"])

        def change_split(weights: str) -> None:
            page.goto(f"{base}/apps/{APP}")
            form = page.locator("#split-form")
            form.locator("input[name=weights]").fill(weights)
            form.locator("button").click()

        change_split("v1=80 v2=20")
        assert "401" in page.locator("h1").inner_text()
        login(page, base, ALICE)
        change_split("v1=80 v2=20")
        page.wait_for_url(f"**/apps/{APP}")
        assert {k: w for k, (w, _) in split().items()} == {"v1": "80%", "v2": "20%"}
        audit = page.locator("#audit tbody tr", has_text="alice").inner_text()  # oldest first: root's, then hers
        assert "serve.split" in audit and "'v1': 80.0" in audit
        shot("22-apps-split-by-admin")
        headers = {"x-raypipe-request": "1", "content-type": "application/json"}
        api = f"{base}/api/apps/{APP}"
        r = page.request.post(f"{api}/rollout/abort", data={"reason": "from the browser"}, headers=headers)
        assert r.status == 400 and APP in r.json()["error"], r.text()  # none recorded: nothing to abort
        r = page.request.post(f"{api}/loop/stop", data={}, headers=headers)
        assert r.status == 400 and f"app {APP!r} has no closed loop running" in r.json()["error"], r.text()
        logout(page, base)
        login(page, base, BOB)
        change_split("v1=0 v2=100")
        assert "403" in page.locator("h1").inner_text()
        assert "bob is not an admin" in page.locator("p.error").inner_text()
        shot("23-apps-split-refused")
        for action in ("rollout/abort", "loop/stop"):
            r = page.request.post(f"{api}/{action}", data={}, headers=headers)
            assert r.status == 403 and "bob is not an admin" in r.json()["error"], r.text()
        page.goto(f"{base}/apps/{APP}")
        assert {k: w for k, (w, _) in split().items()} == {"v1": "80%", "v2": "20%"}

        # the served model's two versions compared, from its page's form
        page.goto(base + "/models/digits")
        form = page.locator("#compare-form")
        form.locator("button").click()
        page.wait_for_url("**/models/digits/compare?*")
        metrics = page.locator("#compare-metrics").inner_text()
        assert "train_accuracy" in metrics
        assert page.locator("#compare-params").is_visible()
        shot("24-model-compare")
        browser.close()
    refused = "Failed to load resource: the server responded with a status of {}"
    assert problems == [refused.format("401 (Unauthorized)"), refused.format("403 (Forbidden)")]  # the refusals
    keep_shots(shots)
