"""``raypipe ui --address`` on a real Serve app over HTTP (127.0.0.1): /apps lists it, its page
shows the live split with per-variant requests and latency and the A/B report, and the split
action changes the weights as the caller (the OS user from this machine, audited), refused
for a platform user who is not an admin.  Nothing here asserts on time."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from raypipe import identity
from raypipe.config.platform import PlatformConfig
from raypipe.monitoring.monitor import start_monitor, stop_monitor
from raypipe.principal import Principal, acting_as
from raypipe.serving import app as serve_app
from raypipe.serving.spec import ServeSpec
from raypipe.store.metadata import MetadataStore
from raypipe.store.platform import PlatformStore
from raypipe.ui import UiSettings, create_app
from tests.conftest import free_port, wait_for
from tests.integration.serve_funcs import drift_reference, register_digits, sample_rows

pytestmark = pytest.mark.slow

APP = "ui-shop"
LOCAL = ("127.0.0.1", 40000)
JSON_HEADERS = {"x-raypipe-request": "1"}
BOB = "bob-token-0123456789"


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(identity.TOKEN_ENV, raising=False)
    monkeypatch.delenv(identity.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def screenshots(settings: UiSettings, paths: list[str]) -> None:
    """Screenshots of ``paths`` to /work/ui-shots/ when chromium and Playwright are at hand
    (for people to look at; nothing is asserted on them)."""
    import os
    import threading
    import time

    import uvicorn

    shots = Path(os.environ.get("RAYPIPE_UI_SHOTS", "/work/ui-shots"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    if not os.path.exists("/usr/bin/chromium") or not shots.is_dir():
        return
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            for i, path in enumerate(paths):
                page.goto(f"http://127.0.0.1:{port}{path}")
                page.screenshot(path=str(shots / f"2{i}-apps{path.replace('/', '-')}.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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
    for row in sample_rows(60):
        req = urllib.request.Request(
            url + "/predict", data=json.dumps({"features": row}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
    yield {"db": db, "address": ray_local}
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
    screenshots(settings, ["/apps", f"/apps/{APP}"])
    # the split action, as the OS user from this machine: the weights change, audited
    r = client.post(f"/api/apps/{APP}/split", json={"weights": {"v1": 50, "v2": 50}}, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["weights"] == {"v1": 50.0, "v2": 50.0}
    meta = MetadataStore(env["db"])
    try:
        [row] = meta.audit_log(APP, 10, action="serve.split")
        assert row["actor"] == identity.os_user() and row["detail"]["weights"] == {"v1": 50.0, "v2": 50.0}
        cfg = PlatformConfig.model_validate(
            {
                "users": {
                    "bob": {"token_sha256": identity.token_sha256(BOB)},
                    "root": {"token_sha256": "0" * 64, "admin": True},
                }
            }
        )
        with acting_as(Principal("root", admin=True)):
            PlatformStore(meta).apply(cfg, expected=None)
    finally:
        meta.close()
    # with users: bob is no admin, refused; the weights stay
    r = client.post(
        f"/api/apps/{APP}/split",
        json={"weights": {"v1": 100, "v2": 0}},
        headers={**JSON_HEADERS, "authorization": f"Bearer {BOB}"},
    )
    assert r.status_code == 403 and "bob is not an admin" in r.json()["error"]
    assert client.get(f"/api/apps/{APP}").json()["status"]["weights"] == {"v1": 50.0, "v2": 50.0}
