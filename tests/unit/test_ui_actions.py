"""``raypipe ui``'s actions behind identities, on a real SQLite store (no Ray): moving a model's
alias as an admin (audited with its name), refused for a user without the right (403) and
without a token (401); CSRF for forms and JSON; the login cookie; the single user acting only
from this machine.  And the /apps pages on what the store keeps, a cluster that does not
answer, the drift series."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from raypipe import identity
from raypipe.config.platform import PlatformConfig
from raypipe.exceptions import RaypipeError
from raypipe.monitoring.monitor_core import MonitorCore
from raypipe.principal import Principal, acting_as
from raypipe.store.metadata import MetadataStore
from raypipe.store.platform import PlatformStore
from raypipe.store.registry import ModelRegistry
from raypipe.store.rollouts import LoopStore, RolloutStore
from raypipe.ui import UiSettings, create_app
from raypipe.ui.apps import Cluster, drift_charts, drift_notes, drift_series
from tests.unit.test_drift import FEATURES, make_profile, rows_of
from tests.unit.ui_store import DemoStore, build

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
LOCAL = ("127.0.0.1", 40000)
JSON_HEADERS = {"x-raypipe-request": "1"}


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The server process's own token must not count: none in the environment or the home."""
    monkeypatch.delenv(identity.TOKEN_ENV, raising=False)
    monkeypatch.delenv(identity.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def with_users(demo: DemoStore) -> None:
    cfg = PlatformConfig.model_validate(
        {
            "users": {
                "alice": {"token_sha256": identity.token_sha256(ALICE), "teams": ["research"], "admin": True},
                "bob": {"token_sha256": identity.token_sha256(BOB), "teams": ["research"]},
            },
            "teams": {"research": {"gpu": 1}},
        }
    )
    meta = MetadataStore(demo.db)
    try:
        with acting_as(Principal("root", admin=True)):
            PlatformStore(meta).apply(cfg, expected=None)
    finally:
        meta.close()


@pytest.fixture
def demo(tmp_path: Path) -> DemoStore:
    return build(tmp_path)


@pytest.fixture
def users(demo: DemoStore) -> DemoStore:
    with_users(demo)
    return demo


def alias_of(demo: DemoStore, alias: str) -> int | None:
    meta = MetadataStore(demo.db)
    try:
        return ModelRegistry(meta).aliases("demo-model").get(alias)
    finally:
        meta.close()


def audit(demo: DemoStore, target: str) -> list[dict[str, Any]]:
    meta = MetadataStore(demo.db)
    try:
        return meta.audit_log(target, 100)
    finally:
        meta.close()


def move(client: TestClient, token: str | None, alias: str = "staging", **headers: str) -> Any:
    h = {**JSON_HEADERS, **headers}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    return client.post("/api/models/demo-model/alias", json={"alias": alias, "version": 1, "reason": "ok"}, headers=h)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def test_an_admin_moves_an_alias_audited_with_its_name(users: DemoStore) -> None:
    client = TestClient(create_app(UiSettings(db=users.db)))
    r = move(client, ALICE)
    assert r.status_code == 200, r.text
    assert r.json()["actor"] == "alice" and r.json()["result"]["new_version"] == 1
    assert alias_of(users, "staging") == 1
    [row] = audit(users, "demo-model@staging")
    assert (row["action"], row["actor"]) == ("alias.set", "alice") and row["detail"]["reason"] == "ok"


def test_a_user_without_the_right_is_refused_403_and_no_token_401(users: DemoStore) -> None:
    client = TestClient(create_app(UiSettings(db=users.db)))
    r = move(client, BOB)
    assert r.status_code == 403 and "bob is not an admin" in r.json()["error"]
    r = move(client, None)
    assert r.status_code == 401 and "/login" in r.json()["error"]
    r = move(client, "a-token-nobody-has")
    assert r.status_code == 401 and "no user's" in r.json()["error"]
    csrf = csrf_of(client.get("/models/demo-model").text)
    html = client.post("/models/demo-model/alias", data={"alias": "staging", "version": "1", "csrf": csrf})
    assert html.status_code == 401 and "text/html" in html.headers["content-type"] and "Log in" in html.text
    assert alias_of(users, "staging") is None and audit(users, "demo-model@staging") == []
    # --actions users: every user acts, as the CLI lets them
    r = move(TestClient(create_app(UiSettings(db=users.db, actions="users"))), BOB)
    assert r.status_code == 200 and r.json()["actor"] == "bob"
    assert [row["actor"] for row in audit(users, "demo-model@staging")] == ["bob"]
    r = move(TestClient(create_app(UiSettings(db=users.db, actions="none"))), ALICE, alias="x")
    assert r.status_code == 403 and "read-only" in r.json()["error"]


def test_forms_need_their_sessions_csrf_token_and_json_its_header(users: DemoStore) -> None:
    client = TestClient(create_app(UiSettings(db=users.db)), follow_redirects=False)
    # no header on JSON, a foreign Origin: refused before anyone is asked for a token
    r = client.post("/api/models/demo-model/alias", json={"alias": "staging", "version": 1})
    assert r.status_code == 403 and "x-raypipe-request" in r.json()["error"]
    r = move(client, ALICE, origin="https://evil.example")
    assert r.status_code == 403 and "another site" in r.json()["error"]
    # log in with the form: an HttpOnly SameSite=Strict cookie
    login = client.get("/login")
    bad = client.post("/login", data={"token": BOB, "csrf": "0" * 64})
    assert bad.status_code == 403
    r = client.post("/login", data={"token": ALICE, "csrf": csrf_of(login.text), "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "Logged in as <b>alice</b>" in client.get("/login").text
    assert "signed in · log out" in client.get("/runs").text  # the header knows
    # a form without the CSRF token, or with another session's, is refused
    form = {"alias": "staging", "version": "1", "reason": "from the page"}
    r = client.post("/models/demo-model/alias", data=form)
    assert r.status_code == 403 and "CSRF" in r.text
    assert '<a href="/models/demo-model">Back to the page</a>' in r.text  # where the form was
    page = client.get("/models/demo-model")
    assert 'id="alias-form"' in page.text
    r = client.post("/models/demo-model/alias", data={**form, "csrf": csrf_of(login.text)})
    assert r.status_code == 403
    r = client.post("/models/demo-model/alias", data={**form, "csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/models/demo-model"
    assert alias_of(users, "staging") == 1
    assert audit(users, "demo-model@staging")[-1]["actor"] == "alice"
    # logged out: no cookie, no principal
    r = client.post("/logout", data={"csrf": csrf_of(client.get("/login").text)})
    assert r.status_code == 303
    client.cookies.clear()
    assert move(client, None, alias="other").status_code == 401
    assert ">log in<" in client.get("/runs").text


def test_without_users_only_this_machine_acts_as_the_os_user(demo: DemoStore) -> None:
    remote = TestClient(create_app(UiSettings(db=demo.db)))
    r = move(remote, None)
    assert r.status_code == 403 and "only requests from this machine" in r.json()["error"]
    local = TestClient(create_app(UiSettings(db=demo.db)), client=LOCAL)
    r = move(local, None)
    assert r.status_code == 200 and r.json()["actor"] == identity.os_user()
    assert audit(demo, "demo-model@staging")[-1]["actor"] == identity.os_user()
    assert "No users are configured" in local.get("/login").text
    # a bad request names the field; an unknown model is a 404
    r = local.post("/api/models/demo-model/alias", json={"alias": "staging", "version": "v0"}, headers=JSON_HEADERS)
    assert r.status_code == 400 and "version" in r.json()["error"]
    r = local.post("/api/models/nope/alias", json={"alias": "staging", "version": 1}, headers=JSON_HEADERS)
    assert r.status_code == 404
    r = local.post("/api/apps/shop/split", json={"weights": {"v1": 100}}, headers=JSON_HEADERS)
    assert r.status_code == 409 and "--address" in r.json()["error"]


def test_an_apps_page_shows_its_rollout_timeline_and_loop_without_a_cluster(demo: DemoStore) -> None:
    meta = MetadataStore(demo.db)
    try:
        rollouts = RolloutStore(meta)
        rollouts.record("shop", "r1", "started", {"candidate": "v2", "steps": [10, 50, 100]})
        rollouts.record("shop", "r1", "step", {"weight": 10})
        rollouts.record("shop", "r1", "aborted", {"reason": "<b>too slow</b>"})
        LoopStore(meta).record("shop", "c1", "drift", {"feature": "x"})
    finally:
        meta.close()
    client = TestClient(create_app(UiSettings(db=demo.db)))
    assert "shop" in client.get("/api/apps").json()["recorded"]
    assert 'href="/apps/shop"' in client.get("/apps").text
    doc = client.get("/api/apps/shop").json()
    assert doc["connected"] is False and "--address" in doc["note"]
    assert [e["event"] for e in doc["rollout_events"]] == ["started", "step", "aborted"]
    assert [e["event"] for e in doc["loop_events"]] == ["drift"]
    html = client.get("/apps/shop").text
    assert "connect with --address" in html and 'id="rollout"' in html and 'id="loop"' in html
    assert "<b>too slow</b>" not in html and "&lt;b&gt;too slow" in html


def test_a_cluster_that_does_not_answer_is_a_note_not_a_hang() -> None:
    cluster = Cluster("10.0.0.1:6379", timeout_s=0.2)
    gate = threading.Event()
    try:
        value, note = cluster.read(lambda: gate.wait(60))
        assert value is None and note is not None and "cluster unreachable" in note and "10.0.0.1:6379" in note
        value, note = cluster.read(lambda: 1 / 0)
        assert value is None and note is not None and "ZeroDivisionError" in note
        assert cluster.read(lambda: 7) == (7, None)
        with pytest.raises(RaypipeError, match="did not answer"):
            cluster.call(lambda: gate.wait(60), 0.1)
    finally:
        gate.set()
        cluster.close()


def test_drift_series_per_variant_and_feature_and_their_charts() -> None:
    def window(i: int, stat: float) -> dict[str, Any]:
        feats = {
            "y": {"statistic": None},  # a constant feature: no statistic
            "x": {"statistic": stat, "threshold": 0.2, "drifted": stat > 0.2},
            "z": {"statistic": stat / 10, "threshold": 0.2, "drifted": False},
        }
        return {"window_id": i, "closed_at": 100.0 + i, "features": feats}

    monitor = {
        "variants": {"v1": {"windows_brief": [window(1, 0.1), window(2, 0.3)], "features": {"x": {"method": "psi"}}}}
    }
    monitor["variants"]["v2"] = {}
    series = drift_series(monitor)
    assert series["v1"]["x"] == {
        "method": "psi",
        "decides_by": "statistic",
        "window": [1, 2],
        "statistic": [0.1, 0.3],
        "p_value": [None, None],
        "threshold": [0.2, 0.2],
        "drifted": [False, True],
        "note": [None, None],
    }
    assert series["v1"]["y"]["statistic"] == [None, None] and series["v2"] == {}
    charts = drift_charts(series)
    assert len(charts) == 2 and all(str(c).startswith("<svg") for c in charts)
    # the drifted feature first, then the other with a statistic; the constant one has no chart
    assert ["v1 · x" in str(charts[0]), "v1 · z" in str(charts[1])] == [True] * 2
    assert "threshold" in str(charts[0]) and len(drift_charts(series, per_variant=1)) == 1
    # the window that drifted is ringed and counted; the other chart has no ring
    assert str(charts[0]).count('class="flag"') == 1 and "drifted (ringed) in 1 of 2" in str(charts[0])
    assert 'class="flag"' not in str(charts[1]) and "drifted" not in str(charts[1])
    assert drift_series(None) == {}
    # variants and features in natural order (px2 before px10), whatever order the monitor gave
    stat = {"statistic": 0.1, "threshold": 0.2, "drifted": False}
    brief = [{"window_id": 1, "features": {"px10": stat, "px2": stat}}]
    two = drift_series({"variants": {"v10": {"windows_brief": brief}, "v2": {"windows_brief": brief}}})
    titles = [re.search(r'aria-label="([^"]*)"', str(c)).group(1) for c in drift_charts(two)]  # type: ignore[union-attr]
    assert titles == ["v2 · px2", "v2 · px10", "v10 · px2", "v10 · px10"]


def normal_profile(rows: int = 4000) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    return make_profile(pd.DataFrame(rng.normal(size=(rows, 5)), columns=FEATURES))


def test_a_monitor_with_windows_too_small_to_test_is_refused() -> None:
    """Windows of 20 rows were never tested (a feature needs ``min_feature_rows``, 30): the
    drift chart stayed empty.  Such a spec is refused, naming both settings."""
    with pytest.raises(ValidationError, match=r"min_window_rows \(10\) < min_feature_rows \(30\)"):
        MonitorCore("app", normal_profile(), {"window_rows": 20, "min_window_rows": 10})


def test_drift_series_of_a_real_monitor_has_points_per_window() -> None:
    """Windows of 20 rows closed by a real monitor core (real KS tests against a real profile):
    every feature has a statistic, a p-value and a threshold per window, and its chart draws
    the p-value against the threshold; a shifted window drifts."""
    spec = {"window_rows": 20, "min_window_rows": 20, "min_feature_rows": 20, "consecutive": 1}
    core = MonitorCore("app", normal_profile(), spec, clock=lambda: 1000.0)
    rng = np.random.default_rng(7)
    core.log("v1", rows_of(rng.normal(size=(40, 5))))
    shifted = rng.normal(size=(20, 5))
    shifted[:, 0] += 4.0
    core.log("v1", rows_of(shifted))
    series = drift_series(core.status())["v1"]
    assert sorted(series) == FEATURES
    for f, s in series.items():
        assert s["window"] == [1, 2, 3] and s["method"] == "ks" and s["decides_by"] == "p_value", f
        assert all(isinstance(v, float) for v in s["statistic"] + s["p_value"] + s["threshold"]), f
        assert s["note"] == [None, None, None]
    assert series["f0"]["drifted"][2] is True and series["f0"]["p_value"][2] < series["f0"]["threshold"][2]
    charts = drift_charts({"v1": series})
    assert len(charts) == 5 and "v1 · f0 (ks)" in str(charts[0])  # the drifted feature first
    assert all(str(c).count('<polyline class="line') == 2 and "p-value" in str(c) for c in charts)
    assert drift_notes({"v1": series}) == []
    # a window of fewer rows than the spec's min_feature_rows, flushed: no statistic, and the note why
    core.log("v1", rows_of(rng.normal(size=(5, 5))))
    core.flush(force=True)
    series = drift_series(core.status())["v1"]
    assert series["f1"]["statistic"][-1] is None and len(series["f1"]["window"]) == 4
    assert drift_notes({"v1": series}) == ["insufficient data: 5 values (needs 20) (5 features)"]


def test_the_cli_refuses_an_unknown_actions_setting(demo: DemoStore) -> None:
    from typer.testing import CliRunner

    from raypipe.cli import app as cli

    r = CliRunner().invoke(cli, ["ui", "--db", demo.db, "--actions", "everyone"])
    assert r.exit_code == 2 and "--actions 'everyone': expected one of admins, users, none" in r.output


def test_a_principal_established_by_the_server_is_the_one_the_api_acts_as(
    users: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = MetadataStore(users.db)
    try:
        monkeypatch.setenv(identity.TOKEN_ENV, ALICE)  # the server process's own token...
        assert identity.principal_of(meta).name == "alice"
        bob = Principal("bob", ("default",), admin=False, source="token")
        with identity.established(bob):  # ...does not count for a request bob made
            assert identity.principal_of(meta) is bob
            with identity.acting_for(meta) as who:
                assert who is bob and meta.record_audit("test.act", "t") > 0
        assert identity.principal_of(meta).name == "alice"
        assert [r["actor"] for r in meta.audit_log("t", 10)] == ["bob"]
    finally:
        meta.close()


def test_the_header_says_signed_in_only_with_a_login_cookie() -> None:
    from raypipe.ui.auth import COOKIE, has_login_cookie

    assert has_login_cookie([(b"cookie", f"a=1; {COOKIE}=tok".encode())])
    assert not has_login_cookie([(b"cookie", f"a=1; {COOKIE}=".encode())])  # cleared by log out
    assert not has_login_cookie([(b"cookie", b"other=1"), (b"host", b"x")])
    assert not has_login_cookie([])
