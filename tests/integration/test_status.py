"""`reconciler status` from the real runs and task_leases tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from reconciler.db import Database
from reconciler.leases import acquire
from reconciler.runner import run_task
from reconciler.schedule import load_schedule, parse_schedule
from reconciler.settings import Settings
from reconciler.status import collect


def test_collect_reports_last_run_lease_and_overdue(db: Database, settings: Settings) -> None:
    """Last run per task, a running task shown with its holder, an old run overdue."""
    done = run_task(db, settings, "requeue")
    with db.transaction() as conn:
        acquire(conn, "purge", "elsewhere:1:ab", timedelta(minutes=1))
        conn.execute(
            text(
                "INSERT INTO runs (task, started_at, finished_at, status, host, pid, actor) "
                "VALUES ('dead-letter', statement_timestamp() - interval '1 hour', "
                "statement_timestamp() - interval '1 hour', 'ok', 'h', 1, 'test')"
            )
        )
    schedule = load_schedule()

    now, statuses = collect(db, schedule)

    by_task = {s.task: s for s in statuses}
    assert list(by_task) == [
        "mark-stale",
        "requeue",
        "dead-letter",
        "purge",
        "partitions",
        "vacuum-analyze",
        "reindex",
    ]
    requeue = by_task["requeue"]
    assert requeue.last_run is not None and requeue.last_run.id == done.run_id
    assert requeue.next_run == requeue.last_run.started_at + timedelta(seconds=1)
    assert requeue.overdue is False
    assert by_task["dead-letter"].overdue is True
    assert by_task["purge"].running is not None
    assert by_task["purge"].running.holder == "elsewhere:1:ab"
    assert by_task["mark-stale"].overdue is None  # never ran
    assert now >= requeue.last_run.started_at


def test_status_json_command(db: Database, settings: Settings, pg_url: str, tmp_path: Path) -> None:
    """`reconciler status --json`: one object; a task the file leaves out is not scheduled."""
    run_task(db, settings, "mark-stale")
    schedule_file = tmp_path / "s.toml"
    schedule_file.write_text('[mark-stale]\nevery = "30s"\n')
    assert parse_schedule(schedule_file.read_text(), schedule_file).entries
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "status", "--json"],
        env={
            **clean,
            "RECONCILER_DATABASE_URL": pg_url,
            "RECONCILER_SCHEMA": db.schema,
            "RECONCILER_SCHEDULE_FILE": str(schedule_file),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    tasks = {t["task"]: t for t in json.loads(done.stdout)["tasks"]}
    assert tasks["mark-stale"]["last_run"]["status"] == "ok"
    assert tasks["mark-stale"]["overdue"] is False
    assert tasks["requeue"]["enabled"] is False and tasks["requeue"]["schedule"] is None
