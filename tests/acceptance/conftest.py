"""Run the real CLI as a subprocess, with a clean environment of our choosing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CLI = Callable[..., subprocess.CompletedProcess[str]]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_LOG_FORMAT"] = "json"
    return env


@pytest.fixture
def cli(pg_url: str, schema: str, tmp_path: Path) -> CLI:
    """Run ``python -m reconciler ARGS`` against the test server and the test's schema."""

    def run(
        *args: str,
        env: Mapping[str, str | None] | None = None,
        stdin: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        merged: dict[str, str | None] = {
            **_base_env(),
            "RECONCILER_DATABASE_URL": pg_url,
            "RECONCILER_SCHEMA": schema,
            **(env or {}),
        }
        full_env = {k: v for k, v in merged.items() if v is not None}
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=full_env,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=cwd or tmp_path,
            timeout=120,
        )

    return run
