"""Fixtures of the operator's-command tests: the CLI in-process, and a seeded queue."""

from __future__ import annotations

from datetime import datetime

import pytest

from reconciler.db import Database
from tests.ops_data import CliRun, seed


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_url: str,
    schema: str,
    db: Database,
) -> CliRun:
    """``reconciler ...`` run in-process against the test's migrated schema."""
    return CliRun(monkeypatch, capsys, pg_url, schema)


@pytest.fixture
def ids(db: Database, db_now: datetime) -> dict[str, list[int]]:
    """The seeded queue of tests/ops_data.py: job ids by the role they play."""
    return seed(db, db_now)
