"""The daemon as a real process: schedules, faults, shutdown, systemd, secrets."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from reconciler.db import Database
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.helpers import insert_job, job, scalar


@pytest.fixture
def daemon_env(pg_url: str, db: Database, tmp_path: Path) -> dict[str, str]:
    return {
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": db.schema,
        "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path)),
    }


Start = Callable[..., DaemonProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[DaemonProcess] = []

    def _start(env: dict[str, str], name: str = "daemon") -> DaemonProcess:
        process = DaemonProcess(tmp_path, env, name)
        started.append(process)
        return process

    yield _start
    for process in started:
        process.close()


def _stale_candidate(db: Database, db_now: datetime) -> int:
    return insert_job(
        db, status="running", attempt=1, max_attempts=1, heartbeat_at=db_now - timedelta(hours=1)
    )


def _open_runs(db: Database) -> int:
    return int(scalar(db, "SELECT count(*) FROM runs WHERE status = 'running'"))


def test_daemon_moves_jobs_on_schedule_and_exits_0_on_sigterm(
    db: Database, db_now: datetime, daemon_env: dict[str, str], start: Start, tmp_path: Path
) -> None:
    """READY and watchdog pings to systemd, one task.finished per run, SIGTERM -> STOPPING, 0."""
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(10)
    job_id = _stale_candidate(db, db_now)

    daemon = start({**daemon_env, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    try:
        assert listener.recv(4096).decode().startswith("READY=1")
        assert listener.recv(4096) == b"WATCHDOG=1"
        eventually(lambda: job(db, job_id)["status"] == "dead", what="running -> stale -> dead")
        stale = daemon.wait_event(
            "task.finished", lambda e: e["transitions"] == {"running->stale": 1}
        )
        assert stale["task"] == "mark-stale" and stale["level"] == "info"
        assert isinstance(stale["run_id"], int) and stale["batches"] == 1
        assert isinstance(stale["duration_ms"], int)

        assert daemon.stop() == 0
        messages: list[bytes] = []
        while b"STOPPING=1" not in b"".join(messages):
            messages.append(listener.recv(4096))
    finally:
        listener.close()
    assert daemon.events("daemon.stopped")[0]["clean"] is True
    assert _open_runs(db) == 0


def test_daemon_survives_pg_terminate_backend(
    db: Database, db_now: datetime, daemon_env: dict[str, str], start: Start
) -> None:
    """Its connections killed again and again, the daemon stays up and the next run works."""
    daemon = start(daemon_env)
    kill = text(
        "SELECT statement_timestamp(), count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = :app"
    )
    recorded_since = "SELECT count(*) FROM runs WHERE started_at > :t AND finished_at IS NOT NULL"
    killed = 0
    for _ in range(5):
        with db.transaction() as conn:
            at, count = conn.execute(kill, {"app": f"reconciler daemon {daemon.pid}"}).one()
        killed += count

        def recorded(since: datetime = at) -> bool:
            return bool(scalar(db, recorded_since, t=since))

        eventually(recorded, what="a run recorded after the kill")
    assert killed > 0

    job_id = _stale_candidate(db, db_now)
    eventually(lambda: job(db, job_id)["status"] == "dead", what="a run after the kills")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert _open_runs(db) == 0


def test_sigterm_mid_batch_finishes_that_batch_and_no_other(
    db: Database, db_now: datetime, daemon_env: dict[str, str], start: Start, tmp_path: Path
) -> None:
    """The batch in flight at SIGTERM commits whole, the run is recorded, no next batch."""
    for _ in range(30):
        _stale_candidate(db, db_now)
    schedule = fast_schedule(
        tmp_path, '[mark-stale]\nevery = "1s"\n[mark-stale.params]\nbatch_size = 10\n'
    )
    env = {
        **daemon_env,
        "RECONCILER_SCHEDULE_FILE": str(schedule),
        "RECONCILER_LOCK_TIMEOUT": "30s",
        "RECONCILER_STATEMENT_TIMEOUT": "30s",
        "RECONCILER_LEASE_TTL": "60s",
    }
    blocker = db.engine.connect()
    tx = blocker.begin()
    # Events cannot be written until we let go: the first batch waits inside its statement.
    blocker.exec_driver_sql(f"LOCK TABLE {db.qualified_schema}.job_events IN EXCLUSIVE MODE")
    daemon = start(env)
    try:
        _waiting_on_lock(db, daemon)
        daemon.signal(signal.SIGTERM)
        daemon.wait_event("daemon.stopping")
    finally:
        tx.commit()
        blocker.close()
    assert daemon.wait() == 0

    with db.transaction() as conn:
        stale = conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'stale'")).scalar_one()
        events = conn.execute(text("SELECT count(*) FROM job_events")).scalar_one()
        run = conn.execute(text("SELECT * FROM runs")).one()
    assert stale == events == 10
    assert run.status == "ok" and run.batches == 1
    assert run.transitions == {"running->stale": 10}
    finished = daemon.events("task.finished")
    assert [(e["stopped"], e["changed"]) for e in finished] == [("shutdown", 10)]


def test_no_secret_is_ever_logged(
    db: Database, daemon_env: dict[str, str], start: Start, pg_url: str
) -> None:
    """A password in the URL and a Sentry DSN: neither appears in any output, even at debug."""
    password = "Hunter2-Sup3rSecret"
    sentry_key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    # Both test servers trust local connections, so the password is sent and ignored.
    url = make_url(pg_url).set(password=password).render_as_string(hide_password=False)
    assert password in url
    daemon = start(
        {
            **daemon_env,
            "RECONCILER_DATABASE_URL": url,
            "RECONCILER_LOG_LEVEL": "debug",
            # Nothing listens on port 9: every check-in fails to send, and says so.
            "RECONCILER_SENTRY_DSN": f"http://{sentry_key}@127.0.0.1:9/42",
        }
    )
    daemon.wait_event("task.finished", lambda e: e["task"] == "vacuum-analyze")
    assert daemon.stop() == 0
    output = daemon.output()
    assert "daemon.started" in output and "sqlalchemy" in output
    assert password not in output
    assert sentry_key not in output


def _blocked_batch(
    db: Database, db_now: datetime, daemon_env: dict[str, str], tmp_path: Path
) -> tuple[dict[str, str], Any, Any]:
    """Stale candidates, a schedule that runs mark-stale, and a held lock its batch waits on."""
    for _ in range(5):
        _stale_candidate(db, db_now)
    schedule = fast_schedule(tmp_path, '[mark-stale]\nevery = "1s"\n')
    env = {
        **daemon_env,
        "RECONCILER_SCHEDULE_FILE": str(schedule),
        "RECONCILER_LOCK_TIMEOUT": "60s",
        "RECONCILER_STATEMENT_TIMEOUT": "60s",
        "RECONCILER_LEASE_TTL": "120s",
        "RECONCILER_SHUTDOWN_GRACE": "60s",
    }
    blocker = db.engine.connect()
    tx = blocker.begin()
    blocker.exec_driver_sql(f"LOCK TABLE {db.qualified_schema}.job_events IN EXCLUSIVE MODE")
    return env, blocker, tx


def _waiting_on_lock(db: Database, daemon: DaemonProcess) -> None:
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app "
        "AND wait_event_type = 'Lock'"
    )
    eventually(
        lambda: scalar(db, waiting, app=f"reconciler daemon {daemon.pid}"),
        what="the batch to wait on the lock",
    )


def test_a_second_signal_during_shutdown_exits_at_once_with_1(
    db: Database, db_now: datetime, daemon_env: dict[str, str], start: Start, tmp_path: Path
) -> None:
    """SIGTERM while a batch is stuck: the daemon waits (grace 60 s); a second signal ends it
    at once, exit 1, daemon.forced_exit logged; the stuck batch rolls back whole."""
    env, blocker, tx = _blocked_batch(db, db_now, daemon_env, tmp_path)
    daemon = start(env)
    try:
        _waiting_on_lock(db, daemon)
        daemon.signal(signal.SIGTERM)
        daemon.wait_event("daemon.stopping")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 1  # well inside the 60 s grace: it did not wait
    finally:
        tx.commit()
        blocker.close()
    (forced,) = daemon.events("daemon.forced_exit")
    assert forced["signal"] == "SIGTERM"
    eventually(
        lambda: scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a",
                       a=f"reconciler daemon {daemon.pid}") == 0,
        what="the killed daemon's connections to go",
    )  # fmt: skip
    assert scalar(db, "SELECT count(*) FROM jobs WHERE status = 'stale'") == 0
    assert scalar(db, "SELECT count(*) FROM job_events") == 0


def test_sigint_stops_the_daemon_like_sigterm(
    db: Database, db_now: datetime, daemon_env: dict[str, str], start: Start
) -> None:
    """Ctrl-C (SIGINT) in a terminal: the same clean stop as SIGTERM, exit 0, runs closed."""
    job_id = _stale_candidate(db, db_now)
    daemon = start(daemon_env)
    eventually(lambda: job(db, job_id)["status"] != "running", what="mark-stale to run")
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0
    (stopped,) = daemon.events("daemon.stopped")
    assert stopped["clean"] is True
    assert daemon.events("daemon.forced_exit") == []
    assert _open_runs(db) == 0


def test_default_schedule_retries_a_critical_job_within_2s_of_its_backoff(
    pg_url: str, db: Database, start: Start
) -> None:
    """With the shipped schedule (requeue every 1 s), a failed critical job (500 ms backoff)
    is back in the queue within 2 s of its retry time, by the recorded times."""
    daemon = start({"RECONCILER_DATABASE_URL": pg_url, "RECONCILER_SCHEMA": db.schema})
    eventually(
        lambda: scalar(db, "SELECT count(*) FROM runs WHERE task = 'requeue' AND status = 'ok'"),
        what="a first requeue run",
    )
    job_id = scalar(db, "SELECT enqueue('charge', priority => 0)")
    token = scalar(db, "SELECT claim_token FROM claim('w1')")
    assert scalar(db, "SELECT fail(:id, :t)", id=job_id, t=token) is True
    failed_at = job(db, job_id)["finished_at"]

    eventually(lambda: job(db, job_id)["status"] == "queued", what="failed -> queued")

    event = scalar(
        db,
        "SELECT jsonb_build_object('at', at, 'actor', actor, 'backoff_s', reason->'backoff_s')"
        " FROM job_events WHERE job_id = :id AND to_status = 'queued' AND from_status = 'failed'",
        id=job_id,
    )
    assert event["actor"] == "reconciler:requeue" and event["backoff_s"] == 0.5
    requeued_at = datetime.fromisoformat(event["at"])
    due = failed_at + timedelta(milliseconds=500)
    assert due <= requeued_at <= due + timedelta(seconds=2), (failed_at, requeued_at)
    assert daemon.stop() == 0
