"""Three daemons on one database, one of them SIGKILLed: never two runs of a task at once."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from reconciler.db import Database
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.helpers import insert_job, scalar

OVERLAPS = """
SELECT a.task, a.id, b.id FROM runs a
JOIN runs b ON a.task = b.task AND a.id < b.id
WHERE tstzrange(a.started_at, coalesce(a.finished_at, 'infinity'), '[]')
   && tstzrange(b.started_at, coalesce(b.finished_at, 'infinity'), '[]')
"""
# One cause = one (job, transition, attempt): the reconciler must never repeat one.
REPEATS = """
SELECT job_id, from_status, to_status, reason->>'attempt', count(*) FROM job_events
WHERE actor LIKE 'reconciler:%'
GROUP BY 1, 2, 3, 4 HAVING count(*) > 1
"""


def _work(db: Database, now: datetime, n: int) -> None:
    """Jobs for every task: dead workers, retryable and exhausted failures, old successes."""
    hour_ago = now - timedelta(hours=1)
    for _ in range(n):
        insert_job(db, status="running", attempt=1, max_attempts=3, heartbeat_at=hour_ago)
        insert_job(db, status="failed", attempt=1, max_attempts=3, finished_at=hour_ago)
        insert_job(db, status="failed", attempt=3, max_attempts=3, finished_at=hour_ago)
        insert_job(db, status="succeeded", finished_at=now - timedelta(days=40))


def test_three_replicas_one_killed_never_overlap_and_survivors_run_every_task(
    db: Database, db_now: datetime, pg_url: str, tmp_path: Path
) -> None:
    """No overlapping runs per task, no repeated transition, every task runs after the kill."""
    env = {
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": db.schema,
        "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path)),
        "RECONCILER_STATEMENT_TIMEOUT": "1s",
        "RECONCILER_LEASE_TTL": "2s",
        "RECONCILER_BATCH_SIZE": "5",
    }
    daemons = [DaemonProcess(tmp_path, env, f"replica{i}") for i in range(3)]
    try:
        _work(db, db_now, 20)
        for d in daemons:
            d.wait_event("daemon.started")
        eventually(
            lambda: scalar(db, "SELECT count(DISTINCT task) FROM runs WHERE status = 'ok'") == 5,
            what="every task to run once",
        )
        # Kill the replica that holds a lease right now, if one does (the worst case).
        holder = scalar(
            db,
            "SELECT coalesce(max(split_part(holder, ':', 2)::int), 0) FROM task_leases "
            "WHERE expires_at > clock_timestamp()",
        )
        victim = next((d for d in daemons if d.pid == holder), daemons[0])
        victim.kill()
        killed_at = scalar(db, "SELECT statement_timestamp()")
        _work(db, killed_at, 10)
        survivors = [d for d in daemons if d is not victim]
        eventually(
            lambda: (
                scalar(
                    db,
                    "SELECT count(DISTINCT task) FROM runs WHERE status = 'ok' AND started_at > :t",
                    t=killed_at + timedelta(seconds=2),  # past the victim's leases
                )
                == 5
            ),
            what="every task to run again after the kill",
            timeout=30,
        )
        eventually(
            lambda: scalar(
                db, "SELECT count(*) = 0 FROM jobs WHERE status IN ('running', 'failed', 'stale')"
            ),
            what="the survivors to settle every job",
        )
        for d in survivors:
            d.signal(signal.SIGTERM)
        assert [d.wait() for d in survivors] == [0, 0]
    finally:
        for d in daemons:
            d.close()

    with db.transaction() as conn:
        assert conn.execute(text(OVERLAPS)).all() == []
        assert conn.execute(text(REPEATS)).all() == []
        pids = conn.execute(text("SELECT count(DISTINCT pid) FROM runs")).scalar_one()
        # The victim's run in flight, if any, was closed by the next holder of its lease.
        open_runs = conn.execute(text("SELECT count(*) FROM runs WHERE status = 'running'"))
        assert open_runs.scalar_one() == 0
    assert pids >= 2
