"""Batches that follow their target, shrink at once after a timeout, and rest between."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.sqlfiles import query
from reconciler.tasks.base import TaskContext
from tests.conftest import connect, make_settings
from tests.helpers import insert_job, job


def _silent_jobs(db: Database, now: datetime, n: int) -> list[int]:
    return [
        insert_job(db, status="running", attempt=1, heartbeat_at=now - timedelta(hours=1))
        for _ in range(n)
    ]


def test_batches_grow_toward_the_target_within_the_maximum(
    db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    """A target no batch reaches: each batch doubles, up to the maximum (10, 20, 40, 80...)."""
    settings = make_settings(
        pg_url, schema, batch_size=10, batch_min=10, batch_max=80, batch_target="1h", batch_pause=0
    )
    _silent_jobs(db, db_now, 500)
    result = run_task(db, settings, "mark-stale", now=db_now)
    assert result.changed == 500
    # 10 + 20 + 40 + 5 x 80 = 470, then a short batch of 30
    assert result.batches == 9


def test_batches_shrink_toward_the_target_no_lower_than_the_floor(
    db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    """A target every batch misses (each row costs 0.1 ms here, a test trigger, against a
    target of 1 ms): batches halve from 400 to RECONCILER_BATCH_MIN (100) and stay there."""
    settings = make_settings(
        pg_url, schema, batch_size=400, batch_min=100, batch_target="1ms", batch_pause=0
    )
    _silent_jobs(db, db_now, 1000)
    with db.transaction() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(0.0001); RETURN NEW; END $$;"
                " CREATE TRIGGER slow_row BEFORE UPDATE ON jobs"
                " FOR EACH ROW EXECUTE FUNCTION slow_row()"
            )
        )
    result = run_task(db, settings, "mark-stale", now=db_now)
    assert result.changed == 1000
    # 400 + 200 + 4 x 100 = 1000, then an empty batch of 100 ends the run
    assert result.batches == 7


def test_a_fixed_batch_size_stays_fixed(
    db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    settings = make_settings(pg_url, schema, batch_target="1h", batch_pause=0)
    _silent_jobs(db, db_now, 50)
    result = run_task(db, settings, "mark-stale", now=db_now, batch_size=10)
    assert (result.changed, result.batches) == (50, 6)


def test_a_batch_that_times_out_is_retried_smaller_at_once(
    db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    """Each changed row costs 5 ms here (a test trigger): a batch of 1,000 outlasts the 1 s
    statement timeout, rolls back, and is retried at 250, then 62: the run still succeeds."""
    settings = make_settings(pg_url, schema, statement_timeout="1s", batch_pause=0)
    ids = _silent_jobs(db, db_now, 300)
    with db.transaction() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$;"
                " CREATE TRIGGER slow_row BEFORE UPDATE ON jobs"
                " FOR EACH ROW EXECUTE FUNCTION slow_row()"
            )
        )
    timed = connect(pg_url, schema, settings)  # a pool with the 1 s statement timeout
    try:
        result = run_task(timed, settings, "mark-stale", now=db_now)
    finally:
        timed.dispose()
    assert result.status == "ok", result.error
    assert result.changed == 300
    assert all(job(db, i)["status"] == "stale" for i in ids)
    assert result.batches >= 300 // 62


def test_the_pause_between_batches_ends_at_shutdown(db: Database, pg_url: str) -> None:
    """A task resting between batches stops resting when the daemon shuts down."""
    stop = threading.Event()
    ctx = TaskContext(
        db=db,
        settings=make_settings(pg_url, db.schema),
        now=db.now(),
        dry_run=False,
        batch_size=10,
        time_budget=timedelta(hours=1),
        actor="test",
        run_id=None,
        should_stop=stop.is_set,
    )
    resting = threading.Thread(target=ctx._pause, args=(3600,))
    resting.start()
    stop.set()
    resting.join(timeout=60)
    assert not resting.is_alive()


def test_a_runs_own_batch_pause_overrides_the_setting(
    db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    """run_task(batch_pause=...) (a schedule entry's params) replaces RECONCILER_BATCH_PAUSE:
    0 rests not at all; 1 rests between batches, and the run's details say how long."""
    settings = make_settings(pg_url, schema, batch_pause=1)
    _silent_jobs(db, db_now, 30)
    result = run_task(db, settings, "mark-stale", now=db_now, batch_size=10, batch_pause=0)
    assert (result.changed, result.batches) == (30, 4)
    assert "paused_ms" not in result.details
    _silent_jobs(db, db_now, 30)
    settings = make_settings(pg_url, schema, batch_pause=0)
    result = run_task(db, settings, "mark-stale", now=db_now, batch_size=10, batch_pause=1)
    assert (result.changed, result.batches) == (30, 4)
    assert result.details["paused_ms"] > 0


def test_the_rest_counts_from_the_commit(db: Database, pg_url: str, db_now: datetime) -> None:
    """The time a task spends after a batch's commit saying what it changed (log lines,
    Sentry events) is rest for the database: a pause shorter than that adds none."""
    for _ in range(30):
        insert_job(
            db, status="failed", attempt=3, max_attempts=3, finished_at=db_now - timedelta(hours=1)
        )
    said: list[int] = []

    def slow_to_say(rows: Sequence[Any]) -> None:
        said.append(len(rows))
        # Far longer than the pause owed for a 10-row batch (its own duration, once).
        time.sleep(2)

    ctx = TaskContext(
        db=db,
        settings=make_settings(pg_url, db.schema),
        now=db_now,
        dry_run=False,
        batch_size=10,
        time_budget=timedelta(hours=1),
        actor="test",
        run_id=None,
        batch_pause=1,
    )
    ctx.run_batches(query("tasks/dead_letter", "apply"), {}, committed=slow_to_say)
    assert said == [10, 10, 10, 0]
    assert "paused_ms" not in ctx.progress.details
