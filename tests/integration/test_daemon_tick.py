"""One firing of the daemon, in process: its log line, its Sentry check-ins and reports."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sentry_sdk
from apscheduler.events import EVENT_JOB_SUBMITTED
from pydantic import SecretStr
from sqlalchemy import text

from reconciler.daemon import Daemon
from reconciler.db import Database
from reconciler.schedule import Entry, Schedule
from reconciler.sentry import init_sentry, report_failure
from reconciler.settings import Settings
from tests.conftest import connect, make_settings
from tests.helpers import insert_job, wait_until
from tests.integration.conftest import DSN, Recorder, events

EVERY_30S = Entry("mark-stale", every=timedelta(seconds=30))


def _daemon(db: Database, settings: Settings, *, sentry_enabled: bool = False) -> Daemon:
    return Daemon(
        settings, Schedule(Path("test.toml"), (EVERY_30S,)), db, sentry_enabled=sentry_enabled
    )


def test_one_task_finished_line_per_run(
    db: Database, settings: Settings, db_now: datetime, log_lines: io.StringIO
) -> None:
    """A run that changed rows: one info line with task, run id, counts, batches, duration."""
    insert_job(db, status="running", attempt=1, heartbeat_at=db_now - timedelta(hours=1))
    result = _daemon(db, settings).tick(EVERY_30S)
    idle = _daemon(db, settings).tick(EVERY_30S)

    assert result is not None and idle is not None
    busy_line, idle_line = events(log_lines, "task.finished")
    assert busy_line["level"] == "info"
    assert {k: busy_line[k] for k in ("task", "run_id", "transitions", "batches", "status")} == {
        "task": "mark-stale",
        "run_id": result.run_id,
        "transitions": {"running->stale": 1},
        "batches": 1,
        "status": "ok",
    }
    assert isinstance(busy_line["duration_ms"], int)
    assert idle_line["level"] == "debug" and idle_line["run_id"] == idle.run_id


def test_run_checks_in_progress_then_ok_with_its_schedule(
    db: Database, settings: Settings, sentry: Recorder
) -> None:
    """Sentry Crons: in_progress once the run holds its lease, then ok with the duration."""
    _daemon(db, settings, sentry_enabled=True).tick(EVERY_30S)
    sentry_sdk.flush()

    started, finished = sentry.items("check_in")
    assert started["monitor_slug"] == finished["monitor_slug"] == "reconciler-mark-stale"
    assert (started["status"], finished["status"]) == ("in_progress", "ok")
    assert started["check_in_id"] == finished["check_in_id"]
    assert started["monitor_config"]["schedule"] == {
        "type": "interval",
        "value": 1,
        "unit": "minute",
    }
    assert finished["duration"] >= 0
    assert sentry.items("event") == []


def test_run_that_cannot_start_reports_error_tagged_with_its_task(
    pg_url: str, schema: str, sentry: Recorder, log_lines: io.StringIO
) -> None:
    """No schema (or no database): an error check-in, an event tagged task, a log line."""
    unmigrated = make_settings(pg_url, schema)
    db = connect(pg_url, schema, unmigrated)
    try:
        assert _daemon(db, unmigrated, sentry_enabled=True).tick(EVERY_30S) is None
    finally:
        db.dispose()
    sentry_sdk.flush()

    (check_in,) = sentry.items("check_in")
    assert check_in["status"] == "error"
    (event,) = sentry.items("event")
    assert event["tags"]["task"] == "mark-stale"
    assert "does not exist" in event["message"]
    assert "user" not in event  # send_default_pii is off
    (error,) = events(log_lines, "task.error")
    assert error["task"] == "mark-stale" and error["retry_in_s"] == 1.0
    assert sentry_sdk.get_client().should_send_default_pii() is False


def test_run_failing_mid_way_reports_error_with_its_run(
    db: Database, settings: Settings, pg_url: str, sentry: Recorder, log_lines: io.StringIO
) -> None:
    """A batch that cannot lock its table: error check-in, event tagged task and run_id."""
    impatient = settings.model_copy(update={"lock_timeout": timedelta(milliseconds=50)})
    holder = connect(pg_url, db.schema)
    conn = holder.engine.connect()
    tx = conn.begin()
    conn.exec_driver_sql(f"LOCK TABLE {db.qualified_schema}.jobs IN ACCESS EXCLUSIVE MODE")
    runner_db = connect(pg_url, db.schema, impatient)
    try:
        result = _daemon(runner_db, impatient, sentry_enabled=True).tick(EVERY_30S)
    finally:
        tx.rollback()
        conn.close()
        holder.dispose()
        runner_db.dispose()
    sentry_sdk.flush()

    assert result is not None and result.status == "failed"
    assert [c["status"] for c in sentry.items("check_in")] == ["in_progress", "error"]
    (event,) = sentry.items("event")
    assert event["tags"] == {"task": "mark-stale", "run_id": str(result.run_id)}
    assert "lock timeout" in event["message"]
    (line,) = events(log_lines, "task.finished")
    assert line["level"] == "error" and line["status"] == "failed"
    assert line["retry_in_s"] == 1.0 and "lock timeout" in line["error"]


def test_cron_task_retries_five_times_then_waits_for_its_schedule(
    pg_url: str, schema: str, log_lines: io.StringIO
) -> None:
    """1, 2, 4, 8, 16 s; then no retry: a daily task does not fail every minute all day."""
    unmigrated = make_settings(pg_url, schema)
    db = connect(pg_url, schema, unmigrated)
    daily = Entry("purge", cron="17 3 * * *")
    daemon = Daemon(unmigrated, Schedule(Path("t.toml"), (daily,)), db)
    try:
        for _ in range(6):
            daemon.tick(daily)
    finally:
        db.dispose()
    assert [e["retry_in_s"] for e in events(log_lines, "task.error")] == [
        1.0, 2.0, 4.0, 8.0, 16.0, None,
    ]  # fmt: skip


def test_sentry_events_never_carry_the_database_password(settings: Settings) -> None:
    """The redactor runs on every event: a password in a message is masked."""
    recorder = Recorder()
    secret = settings.model_copy(
        update={
            "sentry_dsn": SecretStr(DSN),
            "database_url": SecretStr("postgresql://app:Hunter2-Sup3rSecret@db/q"),
        }
    )
    assert init_sentry(secret, transport=recorder)
    try:
        report_failure("purge", "login failed with Hunter2-Sup3rSecret", run_id=7)
        sentry_sdk.flush()
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
    (event,) = recorder.items("event")
    assert event["message"] == "purge: login failed with ***"


def test_a_task_whose_lease_another_process_holds_is_skipped_at_debug(
    db: Database, settings: Settings, log_lines: io.StringIO
) -> None:
    """task.skipped (debug) names the holder and when its lease lapses; no run, no retry."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO task_leases (task, holder, acquired_at, expires_at)"
                " VALUES ('mark-stale', 'other-host:4242:abcd', now(), now() + interval '1 hour')"
            )
        )
    daemon = _daemon(db, settings)
    assert daemon.tick(EVERY_30S) is None
    (skipped,) = events(log_lines, "task.skipped")
    assert skipped["level"] == "debug"
    assert skipped["task"] == "mark-stale"
    assert skipped["holder"] == "other-host:4242:abcd"
    assert datetime.fromisoformat(skipped["lease_expires_at"]) > datetime.now(UTC)
    assert events(log_lines, "task.error") == [] and events(log_lines, "task.crashed") == []
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


def test_a_bug_in_a_task_is_task_crashed_with_its_traceback_and_the_daemon_goes_on(
    db: Database,
    settings: Settings,
    log_lines: io.StringIO,
    sentry: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception that is not the database's (a bug) is logged as task.crashed at error,
    with its traceback, reported to Sentry tagged with the task, and retried; the next
    firing runs normally."""

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in a task")

    daemon = _daemon(db, settings, sentry_enabled=True)
    with monkeypatch.context() as patch:
        patch.setattr("reconciler.daemon.run_task", bug)
        assert daemon.tick(EVERY_30S) is None
    (crashed,) = events(log_lines, "task.crashed")
    assert crashed["level"] == "error"
    assert crashed["task"] == "mark-stale"
    assert "RuntimeError: a bug in a task" in crashed["exception"]
    assert "Traceback" in crashed["exception"]
    sentry_sdk.flush()
    (event,) = sentry.items("event")
    assert event["tags"]["task"] == "mark-stale"
    result = daemon.tick(EVERY_30S)
    assert result is not None and result.status == "ok"


def test_missed_firings_fold_into_one(db: Database, settings: Settings) -> None:
    """The process held up past several firings (suspended, or the scheduler starved): on
    waking, the real scheduler submits the task once, for the last missed time, not once
    per missed firing (coalesce)."""
    entry = Entry("mark-stale", every=timedelta(seconds=1))
    daemon = Daemon(settings, Schedule(Path("t.toml"), (entry,)), db)
    submitted: list[int] = []
    daemon.scheduler.add_listener(
        lambda event: submitted.append(len(event.scheduled_run_times)), EVENT_JOB_SUBMITTED
    )

    def runs() -> int:
        with db.transaction() as conn:
            return int(conn.execute(text("SELECT count(*) FROM runs")).scalar_one())

    daemon.start()
    try:
        wait_until(lambda: runs() >= 1, "a first run")
        daemon.scheduler.pause()
        paused = time.monotonic()
        before = len(submitted)
        # Not an assertion on timing: the scheduler must sleep through 3 firings.
        wait_until(lambda: time.monotonic() - paused >= 3.5, "three firings to be missed")
        daemon.scheduler.resume()
        wait_until(lambda: len(submitted) > before, "the first firing after waking")
        assert submitted[before] == 1
    finally:
        assert daemon.stop(timedelta(seconds=30))
