"""Behind PgBouncer in transaction pooling mode: the daemon and ad hoc runs work as direct.

Transaction pooling hands each transaction whatever server connection is free,
so anything kept per session (advisory locks, SET, prepared statements) leaks
between clients or vanishes. The pool here is smaller than the number of
clients, so server connections really are shared. Skipped where there is no
`pgbouncer` binary or no TCP PostgreSQL to put it in front of. The fixture
`bouncer_url` lives in ``tests/pgbouncer.py``, shared with the reliability suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

from reconciler.db import Database
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.helpers import insert_job, scalar


def test_daemon_and_ad_hoc_runs_through_transaction_pooling(
    db: Database, db_now: datetime, bouncer_url: str, tmp_path: Path
) -> None:
    """Many runs per task (past psycopg's prepare threshold), leases, an ad hoc run: no error."""
    hour_ago = db_now - timedelta(hours=1)
    for _ in range(10):
        insert_job(db, status="running", attempt=1, max_attempts=2, heartbeat_at=hour_ago)
    env = {
        "RECONCILER_DATABASE_URL": bouncer_url,
        "RECONCILER_SCHEMA": db.schema,
        "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path)),
    }
    daemon = DaemonProcess(tmp_path, env)
    try:
        eventually(
            lambda: scalar(
                db,
                "SELECT count(*) = 5 AND min(n) >= 4 "
                "FROM (SELECT count(*) AS n FROM runs GROUP BY task) r",
            ),
            timeout=30,
            what="four runs of every task",
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        for _ in range(3):
            adhoc = subprocess.run(
                [sys.executable, "-m", "reconciler", "run", "requeue"],
                env={**clean, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert adhoc.returncode in (0, 1), adhoc.stderr
            assert adhoc.returncode == 0 or "is running elsewhere" in adhoc.stderr
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()
    failures = [e for e in daemon.events() if e.get("level") in ("warning", "error")]
    assert failures == []
    assert scalar(db, "SELECT count(*) FROM runs WHERE status <> 'ok'") == 0
    assert scalar(db, "SELECT count(*) FROM jobs WHERE status = 'running'") == 0
