"""``python -m reconciler web`` as a subprocess: it serves, and warns when exposed."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from reconciler.db import Database
from tests.helpers import wait_until
from tests.pgbouncer import free_port


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return None


@pytest.fixture
def web(pg_url: str, db: Database) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``reconciler web`` on 0.0.0.0 with no token, on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(RECONCILER_DATABASE_URL=pg_url, RECONCILER_SCHEMA=db.schema)
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "web", "--addr", f"0.0.0.0:{port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def test_serves_the_dashboard_and_warns(web: tuple[subprocess.Popen[str], int]) -> None:
    """Every page answers 200; the first line says it is exposed without a token."""
    process, port = web
    wait_until(lambda: _status(f"http://127.0.0.1:{port}/") == 200, "the dashboard to answer")
    for path in ("/jobs", "/dead-letter", "/runs", "/static/dashboard.css"):
        assert _status(f"http://127.0.0.1:{port}{path}") == 200, path
    assert process.stderr is not None
    first = process.stderr.readline()
    assert first.startswith(f"reconciler web: warning: serving on 0.0.0.0:{port}")
    assert "without RECONCILER_WEB_TOKEN" in first
