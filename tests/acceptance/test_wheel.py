"""A non-editable install works: the wheel carries the SQL and finds it at run time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO


@pytest.mark.slow
def test_built_wheel_runs_migrate_and_a_task(pg_url: str, schema: str, tmp_path: Path) -> None:
    """Build the wheel, unpack it away from the checkout, and run migrate + a task from it."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("reconciler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "reconciler/sql/migrations/202612021900_initial.sql" in names
    assert "reconciler/sql/schema.sql" in names
    assert "reconciler/sql/tasks/mark_stale.sql" in names
    # The dashboard's own files: no CDN, every asset in the package.
    assert "reconciler/sql/web/runs.sql" in names
    assert "reconciler/web/static/dashboard.css" in names
    assert "reconciler/web/templates/overview.html" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(PYTHONPATH=str(site), RECONCILER_DATABASE_URL=pg_url, RECONCILER_SCHEMA=schema)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = run("-c", "import reconciler.sqlfiles as s; print(s.data_dir('sql'))")
    assert where.stdout.strip() == str(site / "reconciler" / "sql"), where.stderr
    assert run("-m", "reconciler", "migrate").returncode == 0
    result = run("-m", "reconciler", "run", "mark-stale", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ok"
