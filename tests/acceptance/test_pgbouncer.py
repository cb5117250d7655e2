"""Behind PgBouncer in transaction pooling mode: the daemon and ad hoc runs work as direct.

Transaction pooling hands each transaction whatever server connection is free,
so anything kept per session (advisory locks, SET, prepared statements) leaks
between clients or vanishes. The pool here is smaller than the number of
clients, so server connections really are shared. Skipped where there is no
`pgbouncer` binary or no TCP PostgreSQL to put it in front of.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import make_url

from reconciler.db import Database
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.helpers import insert_job, scalar


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bouncer_url(pg_url: str) -> Iterator[str]:
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        pytest.skip("pgbouncer is not installed")
    url = make_url(pg_url)
    if not url.host or url.host.startswith("/"):
        pytest.skip("the test server has no TCP address to put PgBouncer in front of")
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="reconciler-pgbouncer-"))
    work.chmod(0o777)  # as root, pgbouncer drops to 'nobody', which must write its log here
    config = work / "pgbouncer.ini"
    config.write_text(
        f"""
[databases]
{url.database} = host={url.host} port={url.port or 5432} dbname={url.database} user={url.username}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {work}/pgbouncer.log
pidfile = {work}/pgbouncer.pid
""",
        encoding="utf-8",
    )
    config.chmod(0o644)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = work / "pgbouncer.log"
    proc = subprocess.Popen([binary, *user, str(config)])
    bounced = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    try:

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                assert proc.poll() is None, log.read_text() if log.exists() else "no log"
                return False
            return True

        eventually(accepting, timeout=10, what="pgbouncer to listen")
        yield bounced
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


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
