"""`reconciler run TASK --dry-run` with eligible rows: the real run's counts, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from reconciler.db import Database
from tests.helpers import insert_job
from tests.ops_data import CliRun

TABLES = ("jobs", "job_events", "runs", "task_leases")


def _snapshot(db: Database) -> dict[str, list[tuple[object, ...]]]:
    with db.transaction() as conn:
        return {
            t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))]
            for t in TABLES
        }


def _stale(db: Database, now: datetime) -> None:
    for _ in range(3):
        insert_job(db, status="running", attempt=1, heartbeat_at=now - timedelta(hours=1))


def _backed_off(db: Database, now: datetime) -> None:
    for status in ("failed", "stale", "failed"):
        insert_job(db, status=status, attempt=1, finished_at=now - timedelta(hours=1))


def _exhausted(db: Database, now: datetime) -> None:
    for status in ("failed", "stale"):
        insert_job(
            db, status=status, attempt=3, max_attempts=3, finished_at=now - timedelta(hours=1)
        )


def _expired(db: Database, now: datetime) -> None:
    for status in ("succeeded", "cancelled"):
        insert_job(db, status=status, attempt=1, finished_at=now - timedelta(days=400))


@pytest.mark.parametrize(
    ("task", "seed", "expected"),
    [
        ("mark-stale", _stale, {"running->stale": 3}),
        ("requeue", _backed_off, {"failed->queued": 2, "stale->queued": 1}),
        ("dead-letter", _exhausted, {"failed->dead": 1, "stale->dead": 1}),
        ("purge", _expired, {"succeeded->purged": 1, "cancelled->purged": 1}),
    ],
)
def test_a_dry_run_with_eligible_rows_previews_the_real_run_and_writes_nothing(
    cli: CliRun,
    db: Database,
    db_now: datetime,
    task: str,
    seed: Callable[[Database, datetime], None],
    expected: dict[str, int],
) -> None:
    """Counts and sample ids as the real run then has them; jobs, events, runs and leases
    exactly as they were (no run record, no lease)."""
    seed(db, db_now)
    before = _snapshot(db)
    code, out, err = cli("run", task, "--dry-run", "--json")
    assert code == 0, err
    preview = json.loads(out)
    assert _snapshot(db) == before
    assert preview["dry_run"] is True
    assert preview["transitions"] == expected
    assert preview["sample_ids"]
    code, out, err = cli("run", task, "--json")
    assert code == 0, err
    real = json.loads(out)
    assert real["transitions"] == preview["transitions"]
    assert sorted(real["sample_ids"]) == sorted(preview["sample_ids"])
    assert _snapshot(db) != before
