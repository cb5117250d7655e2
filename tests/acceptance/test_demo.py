"""`reconciler demo`: the README's first command, in a non-terminal and as JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import dropped_after


@pytest.fixture
def demo_schema(pg_url: str) -> Iterator[str]:
    yield from dropped_after(pg_url, f"demo_{uuid.uuid4().hex[:10]}")


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "demo", "--duration", "5s", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_in_a_non_terminal_prints_progress_lines_and_accounts_for_every_job(
    pg_url: str, demo_schema: str
) -> None:
    """Plain lines while it runs (CI has no terminal), a summary, exit 0."""
    done = _demo({"RECONCILER_DATABASE_URL": pg_url}, "--schema", demo_schema)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("demo t=") and "queued=" in line for line in lines)
    assert any("jobs; every one is accounted for" in line for line in lines)
    assert any("crashed mid-job" in line for line in lines)


def test_demo_on_the_embedded_default_with_json() -> None:
    """No URL at all (a newcomer's machine): an embedded server, one JSON summary, exit 0."""
    data = Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    data.chmod(0o755)  # as root the server runs as its own user, which must reach its data
    try:
        done = _demo({"RECONCILER_EMBEDDED_DATA_DIR": str(data / "pgdata")}, "--json")
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["all_accounted_for"] is True
    assert summary["enqueued"] > 0
    assert sum(summary["jobs_by_status"].values()) == summary["enqueued"]
    assert summary["missing"] == [] and summary["history_mismatches"] == 0
    assert summary["database"].startswith("embedded PostgreSQL in ")
    assert summary["task_runs"]["mark-stale"] >= 1


def test_demo_refuses_a_schema_that_is_not_a_demo(pg_url: str) -> None:
    """It drops its schema: a name without 'demo' is a usage error, exit 2, one line."""
    done = _demo({"RECONCILER_DATABASE_URL": pg_url}, "--schema", "reconciler")
    assert done.returncode == 2
    assert done.stderr.startswith("reconciler: the demo drops and rebuilds its schema")
    assert len(done.stderr.splitlines()) == 1
