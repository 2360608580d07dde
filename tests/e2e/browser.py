"""What the browser tests share: Playwright for Python on Debian's chromium (a skip without
them, a failure in CI), the UI served on a free 127.0.0.1 port, logging in and out, platform
users (an admin and one who is not) and the screenshots kept for people to look at."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from raypipe.ui import UiSettings, create_app
from tests.conftest import free_port

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
ALICE, BOB = "alice-browser-token-0123456789", "bob-browser-token-0123456789"


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


class WatchedPage:
    """Chromium and one page on the UI at ``base``: console errors and warnings, failed
    requests and any request outside ``base`` are kept in ``problems``; ``shot(name)`` saves a
    full-page screenshot in ``shots``."""

    def __init__(self, playwright: Any, base: str, shots: Path) -> None:
        shots.mkdir(parents=True, exist_ok=True)
        self.shots = shots
        self.problems: list[str] = []
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        self.page = self.browser.new_page(viewport={"width": 1300, "height": 900})
        problems = self.problems
        self.page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: None if r.url.startswith(base) else problems.append(f"outside: {r.url}"))

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def with_users(db: str, users: dict[str, tuple[str, bool]] | None = None) -> None:
    """The platform config in ``db`` (the next version): ``users`` (name -> token, admin),
    by default alice an admin and bob not."""
    from raypipe import identity
    from raypipe.config.platform import PlatformConfig
    from raypipe.principal import Principal, acting_as
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.platform import PlatformStore

    users = users or {"alice": (ALICE, True), "bob": (BOB, False)}
    cfg = PlatformConfig.model_validate(
        {"users": {n: {"token_sha256": identity.token_sha256(t), "admin": a} for n, (t, a) in users.items()}}
    )
    meta = MetadataStore(db)
    try:
        platform = PlatformStore(meta)
        latest = platform.latest()
        with acting_as(Principal("root", admin=True)):
            platform.apply(cfg, expected=None if latest is None else latest.version)
    finally:
        meta.close()


@contextmanager
def ui_server(settings: UiSettings) -> Iterator[str]:
    """``raypipe ui`` (uvicorn in a thread) on a free 127.0.0.1 port: its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the UI server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def login(page: Any, base: str, token: str) -> None:
    page.goto(base + "/login")
    page.locator("#login input[name=token]").fill(token)
    page.locator("#login button").click()
    page.wait_for_url("**/runs")


def logout(page: Any, base: str) -> None:
    page.goto(base + "/login")
    with page.expect_navigation(url="**/login"):  # the logout's redirect, before the next page
        page.get_by_role("button", name="log out").click()


def keep_shots(folder: Path) -> None:
    """Copy the screenshots in ``folder`` to /work/ui-shots/ (``$RAYPIPE_UI_SHOTS``) when that
    folder can be made; elsewhere they stay in the test's folder."""
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            shutil.copy(f, SHOTS / f.name)
    except OSError:
        pass
