"""run_task: batches, the time budget, the runs record, dry runs, and failing batches."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from reconciler.db import Database, quote_ident
from reconciler.migrate import migrate
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.tasks import TASKS
from tests.conftest import connect, make_settings
from tests.helpers import insert_job, job, jobs_by_status


def _stale_candidates(db: Database, now: datetime, count: int) -> list[int]:
    """``count`` running jobs past the heartbeat timeout, oldest first."""
    return [
        insert_job(
            db, status="running", attempt=1, heartbeat_at=now - timedelta(minutes=10, seconds=i)
        )
        for i in range(count, 0, -1)
    ]


def _runs(db: Database) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM runs ORDER BY id"))]


@pytest.fixture
def fail_on_job(db: Database) -> Callable[[int, str], None]:
    """Makes the update of one chosen job fail (raise, or sleep past the statement timeout)."""

    def arm(job_id: int, action: str) -> None:
        with db.transaction() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql AS $$"
                    " BEGIN IF NEW.id = CAST(TG_ARGV[0] AS bigint) THEN"
                    f" {action}; END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER test_fail BEFORE UPDATE ON jobs FOR EACH ROW"
                    f" EXECUTE FUNCTION test_fail('{int(job_id)}')"
                )
            )

    return arm


def test_batches_until_a_short_one(db: Database, settings: Settings, db_now: datetime) -> None:
    """25 eligible rows with batch_size 10: batches of 10, 10 and 5, each its own transaction."""
    _stale_candidates(db, db_now, 25)

    result = run_task(db, settings, "mark-stale", now=db_now, batch_size=10)

    assert (result.status, result.stopped) == ("ok", "done")
    assert result.batches == 3
    assert result.transitions == {"running->stale": 25}
    with db.transaction() as conn:
        transactions = conn.execute(text("SELECT count(DISTINCT xmin::text) FROM jobs")).scalar()
    assert transactions == 3


def test_a_full_last_batch_is_followed_by_an_empty_one(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """20 rows with batch_size 10: a third, empty batch tells the loop it is done."""
    _stale_candidates(db, db_now, 20)

    result = run_task(db, settings, "mark-stale", now=db_now, batch_size=10)

    assert result.batches == 3
    assert result.transitions == {"running->stale": 20}


def test_time_budget_stops_after_a_batch(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A spent time budget stops the run after its batch; the next run finishes the rest."""
    ids = _stale_candidates(db, db_now, 25)

    first = run_task(
        db, settings, "mark-stale", now=db_now, batch_size=10, time_budget=timedelta(microseconds=1)
    )

    assert (first.status, first.stopped, first.batches) == ("ok", "time_budget", 1)
    assert first.transitions == {"running->stale": 10}
    assert first.sample_ids == tuple(ids[:10])
    assert jobs_by_status(db) == {"stale": 10, "running": 15}

    rest = run_task(db, settings, "mark-stale", now=db_now, batch_size=10)

    assert (rest.stopped, rest.batches) == ("done", 2)
    assert rest.transitions == {"running->stale": 15}
    assert jobs_by_status(db) == {"stale": 25}


def test_a_run_is_recorded(db: Database, settings: Settings, db_now: datetime) -> None:
    """Each run writes one runs row: task, status, transitions, batches, host, pid, actor, times."""
    _stale_candidates(db, db_now, 3)

    result = run_task(db, settings, "mark-stale", now=db_now, actor="cli:alice")

    (run,) = _runs(db)
    assert run["id"] == result.run_id
    assert (run["task"], run["status"], run["error"]) == ("mark-stale", "ok", None)
    assert run["transitions"] == {"running->stale": 3}
    assert run["batches"] == result.batches == 1
    assert (run["host"], run["pid"], run["actor"]) == (
        socket.gethostname(),
        os.getpid(),
        "cli:alice",
    )
    assert run["finished_at"] is not None
    assert run["started_at"] <= run["finished_at"]
    with db.transaction() as conn:
        actors = conn.execute(text("SELECT DISTINCT actor, run_id FROM job_events")).all()
    assert [tuple(a) for a in actors] == [("cli:alice", result.run_id)]


def test_default_actor_and_clock(db: Database, settings: Settings) -> None:
    """Without actor or now, the actor is reconciler:<task> and now is read from the database."""
    before = db.now()
    result = run_task(db, settings, "dead-letter")
    after = db.now()

    assert before <= result.now <= after
    (run,) = _runs(db)
    assert run["actor"] == "reconciler:dead-letter"
    assert json.loads(json.dumps(result.to_dict()))["task"] == "dead-letter"


@pytest.mark.parametrize("task", list(TASKS))
def test_dry_run_writes_no_run_record(
    db: Database, settings: Settings, db_now: datetime, task: str
) -> None:
    """A dry run of any task leaves no runs row and has no run id."""
    _stale_candidates(db, db_now, 2)

    result = run_task(db, settings, task, now=db_now, dry_run=True)

    assert result.status == "ok", result.error
    assert result.run_id is None
    assert _runs(db) == []


def test_a_failing_batch_fails_the_run_and_keeps_earlier_batches(
    db: Database, settings: Settings, db_now: datetime, fail_on_job: Callable[[int, str], None]
) -> None:
    """An error in batch 2 ends the run as failed; batch 1 stays committed and counted."""
    ids = _stale_candidates(db, db_now, 25)
    fail_on_job(ids[14], "RAISE EXCEPTION 'boom in batch two'")

    result = run_task(db, settings, "mark-stale", now=db_now, batch_size=10)

    assert (result.status, result.stopped) == ("failed", "error")
    assert result.error is not None
    assert "boom in batch two" in result.error
    assert result.transitions == {"running->stale": 10}
    assert result.batches == 1
    assert jobs_by_status(db) == {"stale": 10, "running": 15}
    (run,) = _runs(db)
    assert (run["status"], run["error"]) == ("failed", result.error)
    assert run["transitions"] == {"running->stale": 10}
    assert run["finished_at"] is not None


def test_statement_timeout_applies_to_each_batch(
    db: Database, settings: Settings, db_now: datetime, fail_on_job: Callable[[int, str], None]
) -> None:
    """A batch slower than statement_timeout is cancelled and the run fails, batch 1 kept."""
    ids = _stale_candidates(db, db_now, 15)
    fail_on_job(ids[12], "PERFORM pg_sleep(30)")
    quick = dataclasses.replace(db, statement_timeout=timedelta(milliseconds=100))

    result = run_task(quick, settings, "mark-stale", now=db_now, batch_size=10)

    assert result.status == "failed"
    assert result.error is not None
    assert "statement timeout" in result.error
    assert result.transitions == {"running->stale": 10}
    assert _runs(db)[0]["status"] == "failed"


def test_a_table_lock_trips_lock_timeout(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """With jobs locked ACCESS EXCLUSIVE elsewhere, the batch gives up after lock_timeout."""
    _stale_candidates(db, db_now, 3)
    impatient = dataclasses.replace(db, lock_timeout=timedelta(milliseconds=50))

    with db.transaction() as other:
        other.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
        result = run_task(impatient, settings, "mark-stale", now=db_now)

    assert (result.status, result.stopped, result.batches) == ("failed", "error", 0)
    assert result.error is not None
    assert "lock timeout" in result.error
    assert jobs_by_status(db) == {"running": 3}
    (run,) = _runs(db)
    assert (run["status"], run["error"]) == ("failed", result.error)


def test_unknown_task_raises_key_error_listing_the_tasks(db: Database, settings: Settings) -> None:
    """An unknown task name is a KeyError that names every known task, and records nothing."""
    with pytest.raises(KeyError) as raised:
        run_task(db, settings, "mark-fresh")

    message = str(raised.value)
    assert "mark-fresh" in message
    for name in ("mark-stale", "requeue", "dead-letter", "purge", "vacuum-analyze"):
        assert name in message
    assert _runs(db) == []


def test_every_task_runs_in_a_schema_with_quotes_and_spaces(pg_url: str, db_now: datetime) -> None:
    """Schema names are quoted by the driver: every task works in 'odd "queue" schema'."""
    name = f'odd "queue" schema {uuid.uuid4().hex[:6]}'
    settings = make_settings(pg_url, name)
    odd = connect(pg_url, name, settings)
    try:
        migrate(odd)
        _stale_candidates(odd, db_now, 2)
        results = {task: run_task(odd, settings, task, now=db_now) for task in TASKS}
        assert {task: r.status for task, r in results.items()} == dict.fromkeys(TASKS, "ok")
        assert results["mark-stale"].transitions == {"running->stale": 2}
        assert results["vacuum-analyze"].batches == 3
        assert len(_runs(odd)) == len(TASKS)
    finally:
        with odd.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
        odd.dispose()


def test_a_result_says_whether_it_did_work_and_renders_its_own_notes(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """Work that is not a transition counts: vacuum-analyze and a purge of old run records
    did work, with their own notes; an idle mark-stale did none."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO runs (task, started_at, finished_at, status, host, pid, actor)"
                " VALUES ('requeue', :old, :old, 'ok', 'h', 1, 'test')"
            ),
            {"old": db_now - timedelta(days=60)},
        )

    idle = run_task(db, settings, "mark-stale", now=db_now)
    purge = run_task(db, settings, "purge", now=db_now)
    vacuum = run_task(db, settings, "vacuum-analyze", now=db_now)

    assert (idle.did_work, idle.notes) == (False, ())
    assert (purge.changed, purge.did_work) == (0, True)
    assert purge.notes == ("old run records deleted: 1",)
    assert vacuum.did_work and vacuum.other_work == 3
    assert [n.split()[0] for n in vacuum.notes] == ["jobs", "job_events", "runs"]
    assert json.loads(json.dumps(vacuum.to_dict()))["did_work"] is True


_FAIL_FINISH = """
CREATE SEQUENCE finish_faults;
CREATE FUNCTION fail_finish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- nextval is not rolled back: count every attempt to close a run.
    IF nextval('finish_faults') <= {times} THEN
        RAISE EXCEPTION 'injected: cannot record the run now';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_finish BEFORE UPDATE ON runs FOR EACH ROW
    WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL)
    EXECUTE FUNCTION fail_finish();
"""


@pytest.mark.parametrize("times", [1, 2])
def test_the_run_record_is_closed_on_a_second_try_and_only_then_given_up(
    db: Database, settings: Settings, db_now: datetime, times: int
) -> None:
    """Closing the run fails once: closed on the second try, run ok, lease free. Fails
    twice: the work stands, the run says it could not be recorded, the lease waits out
    its TTL. (A real fault in the database: a trigger refusing the closing UPDATE.)"""
    job_id = insert_job(db, status="running", attempt=1, heartbeat_at=db_now - timedelta(hours=1))
    with db.transaction() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute(_FAIL_FINISH.replace("{times}", str(times)))
    result = run_task(db, settings, "mark-stale", now=db_now)
    assert job(db, job_id)["status"] == "stale"
    assert result.transitions == {"running->stale": 1}
    with db.transaction() as conn:
        run = conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": result.run_id}).one()
        lease = conn.execute(text("SELECT * FROM task_leases WHERE task = 'mark-stale'")).one()
        tries = conn.execute(text("SELECT last_value FROM finish_faults")).scalar_one()
    if times == 1:
        assert tries == 2
        assert result.status == "ok" and result.error is None
        assert run.status == "ok" and run.finished_at is not None
        assert lease.run_id is None  # released: free from now on
    else:
        assert tries == 2
        assert result.status == "failed"
        assert "could not record the run" in (result.error or "")
        assert run.finished_at is None
        assert lease.run_id == result.run_id  # still held: it lapses after the TTL
