"""A real headless Chromium (Debian's chromium + chromium-driver) on a served dashboard.

Skipped when the browser is missing, unless RECONCILER_TEST_REQUIRE_BROWSER=1
(.ci/run sets it, after installing the packages): then a missing browser fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette

from tests.helpers import wait_until

__all__ = ["REQUIRE_ENV", "artifacts", "chrome", "none_of", "serve"]

REQUIRE_ENV = "RECONCILER_TEST_REQUIRE_BROWSER"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chrome() -> Iterator[object]:
    """A headless Chromium driven by Selenium through the system chromedriver."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = f"no {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{message}; {REQUIRE_ENV} is set")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # find_element polls for up to this long: a page loading after a click is waited for.
    driver.implicitly_wait(30)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port; its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the dashboard to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: RECONCILER_TEST_ARTIFACTS, else the test's tmp dir."""
    folder = Path(os.environ.get("RECONCILER_TEST_ARTIFACTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def none_of(driver: Any, css: str) -> bool:
    """True when the loaded page has no element matching ``css`` (asked without the
    implicit wait, which would otherwise wait its whole length for an absence)."""
    from selenium.webdriver.common.by import By

    driver.implicitly_wait(0)
    try:
        return not driver.find_elements(By.CSS_SELECTOR, css)
    finally:
        driver.implicitly_wait(30)
