"""``reconciler web`` beside ``reconciler demo`` on the embedded default (no URL at all).

Both processes join one embedded server in one data directory. The package
counts the processes that use it (a list of pids in the data directory,
under an inter-process lock) and only the last one to exit stops it: the demo
ending must not stop the server under the dashboard.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.daemons import eventually
from tests.pgbouncer import free_port


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _tiles(html: str) -> dict[str, int]:
    found = re.findall(r'data-status="(\w+)"><span class="count">(\d+)</span>', html)
    return {status: int(n) for status, n in found}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory of this test's own (not under pytest's root: as root the server
    runs as its own user, which must reach it)."""
    parent = Path(tempfile.mkdtemp(prefix="reconciler-beside-"))
    parent.chmod(0o755)
    try:
        yield parent / "pgdata"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_the_dashboard_shows_the_demo_live_and_outlives_it(data_dir: Path) -> None:
    """The overview shows the demo's jobs while it runs; once the demo has exited the
    server still serves the dashboard; when the dashboard exits, the server stops."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_EMBEDDED_DATA_DIR"] = str(data_dir)
    out = data_dir.parent / "demo.out"
    with out.open("w") as demo_out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "demo", "--duration", "20s"],
            env=env,
            stdout=demo_out,
            stderr=subprocess.STDOUT,
        )
    web: subprocess.Popen[bytes] | None = None
    try:
        # The demo's first progress line: its schema is built and its workers run.
        eventually(lambda: "demo t=" in out.read_text(), timeout=90, what="the demo to run")
        port = free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "web", "--addr", f"127.0.0.1:{port}"],
            env={**env, "RECONCILER_SCHEMA": "reconciler_demo"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        overview = f"http://127.0.0.1:{port}/"

        def showing_jobs() -> str | None:
            page = _get(overview)
            return page if page is not None and sum(_tiles(page).values()) > 0 else None

        live = eventually(showing_jobs, timeout=60, what="the overview to show the demo's jobs")
        assert sum(_tiles(live).values()) > 0
        assert demo.poll() is None, "the demo ended before the dashboard showed it"
        assert demo.wait(timeout=120) == 0, out.read_text()
        # The demo has exited: the server must still be up for the dashboard.
        after = _get(overview)
        assert after is not None, "the server stopped with the demo, under the dashboard"
        assert _tiles(after)["succeeded"] > 0
        assert (data_dir / "postmaster.pid").exists()
        web.send_signal(signal.SIGINT)
        assert web.wait(timeout=60) == 0
        # The last process out stops the server.
        eventually(
            lambda: not (data_dir / "postmaster.pid").exists(),
            timeout=60,
            what="the embedded server to stop after the last process",
        )
    finally:
        for process in (demo, web):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
