"""Ctrl-C during a run closes its ``runs`` row as interrupted at once and frees its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reconciler.db import Database
from tests.acceptance.conftest import _base_env
from tests.helpers import insert_job, wait_until

HOLD_KEY = 731_001
COMMANDS = {
    # An operator's change: a preview first, then the change's run.
    "jobs-cancel": ("jobs", "cancel", "--queue", "q", "--yes"),
    # A task, which also holds its lease.
    "mark-stale": ("run", "mark-stale"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sigint_mid_batch_closes_the_run_as_interrupted(
    pg_url: str, schema: str, db: Database, db_now: datetime, tmp_path: Path, command: str
) -> None:
    """Interrupted while its batch waits on a lock: exit 130, its run is `interrupted` at once
    (not left `running` for the next lease holder), the lease is free, and the batch rolled
    back whole (the job is unchanged)."""
    if command == "mark-stale":
        job_id = insert_job(
            db,
            status="running",
            queue="q",
            attempt=1,
            locked_at=db_now - timedelta(hours=1),
            heartbeat_at=db_now - timedelta(hours=1),
        )
        before = "running"
    else:
        job_id = insert_job(db, status="queued", queue="q")
        before = "queued"
    env = {
        **_base_env(),
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": schema,
        "RECONCILER_LOCK_TIMEOUT": "5m",
        "RECONCILER_STATEMENT_TIMEOUT": "5m",
        "RECONCILER_LEASE_TTL": "10m",
    }
    jobs = sql.Identifier(schema, "jobs")
    # A witness that holds up the first event written by a recorded run (a preview, a dry
    # run, has no run id) until the test lets go of an advisory lock: the batch is then
    # surely under way, inside its transaction, when SIGINT arrives.
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute(
            sql.SQL(
                "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.run_id IS NOT NULL THEN PERFORM pg_advisory_xact_lock({key});"
                " END IF; RETURN NEW; END $$;"
                " CREATE TRIGGER hold_up BEFORE INSERT ON {events}"
                " FOR EACH ROW EXECUTE FUNCTION {fn}()"
            ).format(
                fn=sql.Identifier(schema, "hold_up"),
                key=sql.Literal(HOLD_KEY),
                events=sql.Identifier(schema, "job_events"),
            )
        )
    with (
        psycopg.connect(pg_url, autocommit=True) as holder,
        psycopg.connect(pg_url, autocommit=True) as watch,
    ):
        holder.execute("SELECT pg_advisory_lock(%s)", [HOLD_KEY])
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", *COMMANDS[command]],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: (
                    watch.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name LIKE 'reconciler%%' AND wait_event_type = 'Lock'"
                    ).fetchone()
                    != (0,)
                    or proc.poll() is not None
                ),
                "the change's batch waits on the lock",
            )
            assert proc.poll() is None, proc.communicate()
            os.kill(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            holder.execute("SELECT pg_advisory_unlock_all()")
        runs = sql.Identifier(schema, "runs")
        assert proc.returncode == 130, err
        assert "interrupted" in err
        row = watch.execute(
            sql.SQL("SELECT status, error, finished_at IS NOT NULL FROM {}").format(runs)
        ).fetchall()
        leases = watch.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE expires_at > now()").format(
                sql.Identifier(schema, "task_leases")
            )
        ).fetchone()
        status = watch.execute(
            sql.SQL("SELECT status FROM {} WHERE id = %s").format(jobs), [job_id]
        ).fetchone()
    assert row == [("interrupted", "interrupted by the operator (SIGINT)", True)]
    assert leases == (0,)
    assert status == (before,)
