"""The daemon's start and stop edges: bad configuration, no database, a batch past the grace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

from reconciler.db import Database
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.conftest import connect
from tests.helpers import insert_job, scalar


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_schedule_file_exits_2_with_one_line(pg_url: str, tmp_path: Path) -> None:
    """The daemon and `schedule` refuse a bad file before doing anything: file, line, key."""
    bad = fast_schedule(tmp_path, '[requeue]\nevery = "15s"\nevry = "1m"\n')
    env = {"RECONCILER_DATABASE_URL": pg_url, "RECONCILER_SCHEDULE_FILE": str(bad)}
    for command in ("daemon", "schedule"):
        done = _cli(env, command)
        assert done.returncode == 2
        assert done.stderr == (
            f"reconciler: {bad}: line 3: [requeue] evry: unknown key; "
            "allowed: every, cron, enabled, jitter, params\n"
        )


def test_schedule_command_prints_every_task_and_its_next_run(tmp_path: Path) -> None:
    """`reconciler schedule --json` needs no database: the shipped schedule, with next runs."""
    done = _cli({}, "schedule", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["schedule_file"].endswith("default.toml")
    by_task = {t["task"]: t for t in payload["tasks"]}
    assert by_task["purge"]["cron"] == "17 3 * * *"
    assert by_task["requeue"]["every"] == "1s" and by_task["requeue"]["next_run"]


def test_schema_not_migrated_exits_2(pg_url: str, schema: str, tmp_path: Path) -> None:
    """A schema behind the code is a configuration error: say `reconciler migrate`, exit 2."""
    env = {
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": schema,
        "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path)),
    }
    done = _cli(env, "daemon")
    assert done.returncode == 2
    assert done.stderr.endswith("migration(s) pending); run: reconciler migrate\n")


def test_database_down_at_start_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """Nothing listens: it logs, keeps retrying with backoff, and still exits 0 on SIGTERM."""
    daemon = DaemonProcess(
        tmp_path,
        {
            "RECONCILER_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:9/none",
            "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path, '[requeue]\nevery = "1s"\n')),
        },
    )
    try:
        assert "Connection refused" in daemon.wait_event("db.unavailable")["error"]
        daemon.wait_event("task.error", lambda e: e["failures"] == 2 and e["retry_in_s"] == 2)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()


def test_batch_past_the_grace_period_rolls_back_whole(
    db: Database, db_now: datetime, pg_url: str, tmp_path: Path
) -> None:
    """A batch stuck past RECONCILER_SHUTDOWN_GRACE: exit 0 anyway, and none of it is written."""
    for _ in range(5):
        insert_job(db, status="running", attempt=1, heartbeat_at=db_now - timedelta(hours=1))
    env = {
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": db.schema,
        "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path, '[mark-stale]\nevery = "1s"\n')),
        "RECONCILER_LOCK_TIMEOUT": "60s",
        "RECONCILER_STATEMENT_TIMEOUT": "60s",
        "RECONCILER_LEASE_TTL": "120s",
        "RECONCILER_SHUTDOWN_GRACE": "1s",
    }
    blocker = connect(pg_url, db.schema)
    conn = blocker.engine.connect()
    tx = conn.begin()
    conn.exec_driver_sql(f"LOCK TABLE {db.qualified_schema}.job_events IN EXCLUSIVE MODE")
    daemon = DaemonProcess(tmp_path, env)
    try:
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app "
            "AND wait_event_type = 'Lock'"
        )
        eventually(
            lambda: scalar(db, waiting, app=f"reconciler daemon {daemon.pid}"),
            what="the batch to wait on the lock",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        tx.rollback()
        conn.close()
        blocker.dispose()
        daemon.close()
    assert daemon.events("daemon.stopped")[0]["clean"] is False
    assert scalar(db, "SELECT count(*) FROM jobs WHERE status = 'stale'") == 0
    assert scalar(db, "SELECT count(*) FROM job_events") == 0
