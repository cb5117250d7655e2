"""mark-stale: who becomes stale, at the boundary, with what record."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text

from reconciler.db import Database, normalise_url
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.conftest import make_settings
from tests.helpers import events_of, insert_job, job


def test_heartbeat_older_than_timeout_becomes_stale(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A job one second past the timeout is stale; one exactly at it is not."""
    timeout = settings.heartbeat_timeout
    old = insert_job(
        db, status="running", heartbeat_at=db_now - timeout - timedelta(seconds=1), attempt=1
    )
    edge = insert_job(db, status="running", heartbeat_at=db_now - timeout, attempt=1)
    fresh = insert_job(db, status="running", heartbeat_at=db_now - timedelta(seconds=5), attempt=1)

    result = run_task(db, settings, "mark-stale", now=db_now)

    assert result.status == "ok"
    assert result.transitions == {"running->stale": 1}
    assert job(db, old)["status"] == "stale"
    assert job(db, old)["locked_by"] is None
    assert job(db, edge)["status"] == "running"
    assert job(db, fresh)["status"] == "running"
    (event,) = events_of(db, old)
    assert event["actor"] == "reconciler:mark-stale"
    assert event["reason"]["worker"] == "w1"
    assert event["reason"]["heartbeat_age_s"] == timeout.total_seconds() + 1
    assert event["run_id"] == result.run_id


def _snapshot(db: Database) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables a task may write, to compare before and after."""
    with db.transaction() as conn:
        return {
            table: [
                dict(r._mapping)
                for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id")).all()
            ]
            for table in ("jobs", "job_events", "runs")
        }


# The claim token of the jobs these tests insert as running (claim() makes a random one).
TOKEN = UUID("00000000-0000-4000-8000-000000000001")


def _call(db: Database, function: str, job_id: int, token: UUID = TOKEN) -> bool:
    """A worker's call (heartbeat, complete, fail) in its own committed transaction."""
    with db.transaction() as conn:
        ok = conn.execute(
            text(f"SELECT {function}(job_id => :id, claim_token => :t)"),
            {"id": job_id, "t": token},
        ).scalar_one()
    assert isinstance(ok, bool)
    return ok


def test_locked_at_counts_when_no_heartbeat_yet(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """With heartbeat_at NULL, locked_at is the last sign of life, at the same boundary."""
    timeout = settings.heartbeat_timeout
    old = insert_job(
        db, status="running", attempt=1, locked_at=db_now - timeout - timedelta(seconds=1)
    )
    edge = insert_job(db, status="running", attempt=1, locked_at=db_now - timeout)

    result = run_task(db, settings, "mark-stale", now=db_now)

    assert result.transitions == {"running->stale": 1}
    assert job(db, old)["status"] == "stale"
    assert job(db, edge)["status"] == "running"
    (event,) = events_of(db, old)
    assert event["reason"]["heartbeat_age_s"] == timeout.total_seconds() + 1
    assert datetime.fromisoformat(event["reason"]["last_heartbeat_at"]) == (
        db_now - timeout - timedelta(seconds=1)
    )


def test_kind_override_wins_over_queue_override_and_default(
    pg_url: str, schema: str, db: Database, db_now: datetime
) -> None:
    """Timeouts come from the job's kind, else its queue, else the default, each at its edge."""
    settings = make_settings(
        pg_url,
        schema,
        heartbeat_timeout_overrides={
            "queue:media": timedelta(minutes=15),
            "kind:export": timedelta(hours=1),
            "kind:quick": timedelta(minutes=1),
        },
    )
    second = timedelta(seconds=1)

    def running(age: timedelta, **where: str) -> int:
        return insert_job(db, status="running", attempt=1, heartbeat_at=db_now - age, **where)

    expected = {
        # default 5m
        running(timedelta(minutes=5)): "running",
        running(timedelta(minutes=5) + second): "stale",
        # queue media: 15m
        running(timedelta(minutes=5) + second, queue="media"): "running",
        running(timedelta(minutes=15), queue="media"): "running",
        running(timedelta(minutes=15) + second, queue="media"): "stale",
        # kind export: 1h, also in queue media (the kind wins over the queue)
        running(timedelta(minutes=15) + second, queue="media", kind="export"): "running",
        running(timedelta(hours=1), queue="media", kind="export"): "running",
        running(timedelta(hours=1) + second, queue="media", kind="export"): "stale",
        # kind quick: 1m, shorter than its queue's 15m (the kind still wins)
        running(timedelta(minutes=1), queue="media", kind="quick"): "running",
        running(timedelta(minutes=1) + second, queue="media", kind="quick"): "stale",
    }

    result = run_task(db, settings, "mark-stale", now=db_now)

    assert result.transitions == {"running->stale": 4}
    assert {job_id: job(db, job_id)["status"] for job_id in expected} == expected
    timeouts = {
        job_id: events_of(db, job_id)[0]["reason"]["timeout_s"]
        for job_id, status in expected.items()
        if status == "stale"
    }
    assert sorted(timeouts.values()) == [60, 300, 900, 3600]


def test_second_run_changes_nothing(db: Database, settings: Settings, db_now: datetime) -> None:
    """Re-running mark-stale with the same clock finds nothing and writes no job or event."""
    for minutes in (1, 6, 7, 60):
        insert_job(
            db, status="running", attempt=1, heartbeat_at=db_now - timedelta(minutes=minutes)
        )
    first = run_task(db, settings, "mark-stale", now=db_now)
    before = _snapshot(db)

    second = run_task(db, settings, "mark-stale", now=db_now)

    assert first.transitions == {"running->stale": 3}
    assert second.status == "ok"
    assert second.transitions == {}
    assert second.sample_ids == ()
    after = _snapshot(db)
    assert after["jobs"] == before["jobs"]
    assert after["job_events"] == before["job_events"]


def test_dry_run_previews_exactly_and_writes_nothing(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A dry run reports the real run's counts and sample ids, and leaves every table as it was."""
    for i in range(12):
        insert_job(
            db,
            status="running",
            attempt=1,
            heartbeat_at=db_now - settings.heartbeat_timeout - timedelta(seconds=12 - i),
        )
    insert_job(db, status="running", attempt=1, heartbeat_at=db_now)
    before = _snapshot(db)

    preview = run_task(db, settings, "mark-stale", now=db_now, dry_run=True)

    assert _snapshot(db) == before
    assert preview.dry_run
    assert preview.run_id is None
    assert preview.transitions == {"running->stale": 12}
    assert len(preview.sample_ids) == 10

    real = run_task(db, settings, "mark-stale", now=db_now)

    assert real.transitions == preview.transitions
    assert real.sample_ids == preview.sample_ids


def test_heartbeat_committed_before_the_run_keeps_the_job(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A heartbeat from another connection that commits first makes the job fresh: not stale."""
    job_id = insert_job(
        db,
        status="running",
        attempt=1,
        heartbeat_at=db_now - timedelta(minutes=10),
        claim_token=TOKEN,
    )
    assert _call(db, "heartbeat", job_id)

    result = run_task(db, settings, "mark-stale", now=db_now)

    assert result.transitions == {}
    assert job(db, job_id)["status"] == "running"
    assert events_of(db, job_id) == []


@pytest.mark.parametrize("call", ["heartbeat", "complete"])
def test_row_held_by_a_worker_is_skipped_not_waited_for(
    db: Database, settings: Settings, db_now: datetime, call: str
) -> None:
    """A worker's open transaction on the row is skipped (SKIP LOCKED); its commit then wins."""
    job_id = insert_job(
        db,
        status="running",
        attempt=1,
        heartbeat_at=db_now - timedelta(minutes=10),
        claim_token=TOKEN,
    )
    other = insert_job(db, status="running", attempt=1, heartbeat_at=db_now - timedelta(minutes=10))

    with db.transaction() as worker:
        assert worker.execute(
            text(f"SELECT {call}(job_id => :id, claim_token => :t)"), {"id": job_id, "t": TOKEN}
        ).scalar_one()
        result = run_task(db, settings, "mark-stale", now=db_now)
        assert result.status == "ok"
        assert result.transitions == {"running->stale": 1}
        assert result.sample_ids == (other,)
    # the worker's transaction has committed

    assert job(db, job_id)["status"] == ("running" if call == "heartbeat" else "succeeded")
    assert [e["to_status"] for e in events_of(db, job_id)] == (
        [] if call == "heartbeat" else ["succeeded"]
    )
    rerun = run_task(db, settings, "mark-stale", now=db_now)
    assert rerun.transitions == {}
    assert job(db, job_id)["status"] == ("running" if call == "heartbeat" else "succeeded")


def _beat_after(start: threading.Barrier, db: Database, job_id: int, out: dict[int, bool]) -> None:
    start.wait()
    out[job_id] = _call(db, "heartbeat", job_id)


@pytest.fixture
def workers(pg_url: str, schema: str, settings: Settings) -> Iterator[Database]:
    """Connections of their own for worker threads, one each, so none waits for the pool."""
    database = Database.connect(
        normalise_url(pg_url),
        schema=schema,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
        application_name="reconciler-tests-workers",
        pool_size=8,
    )
    try:
        yield database
    finally:
        database.dispose()


def test_racing_heartbeats_and_mark_stale_never_lose_a_live_job(
    db: Database, workers: Database, settings: Settings, db_now: datetime
) -> None:
    """Heartbeats racing mark-stale: a beat returning true keeps its job; false finds it stale."""
    rounds, per_round = 20, 5
    for _ in range(rounds):
        ids = [
            insert_job(
                db,
                status="running",
                attempt=1,
                heartbeat_at=db_now - timedelta(minutes=10),
                claim_token=TOKEN,
            )
            for _ in range(per_round)
        ]
        start = threading.Barrier(per_round + 1)
        beats: dict[int, bool] = {}

        threads = [
            threading.Thread(target=_beat_after, args=(start, workers, job_id, beats))
            for job_id in ids
        ]
        for thread in threads:
            thread.start()
        start.wait()
        result = run_task(db, settings, "mark-stale", now=db_now)
        for thread in threads:
            thread.join()

        assert result.status == "ok"
        for job_id in ids:
            status = job(db, job_id)["status"]
            assert status == ("running" if beats[job_id] else "stale"), (job_id, beats)
        assert set(result.sample_ids) == {j for j in ids if not beats[j]}
        run_task(db, settings, "mark-stale", now=db_now)  # clears nothing that beat
        assert all(job(db, j)["status"] == "running" for j in ids if beats[j])
        with db.transaction() as conn:
            conn.execute(
                text(
                    "UPDATE jobs SET status = 'cancelled', locked_by = NULL"
                    " WHERE status = 'running'"
                )
            )


def test_late_worker_is_fenced_out_after_being_marked_stale(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A stale worker is fenced: heartbeat/complete/fail return false, also after a re-claim."""
    job_id = insert_job(
        db,
        status="running",
        attempt=1,
        heartbeat_at=db_now - timedelta(minutes=10),
        claim_token=TOKEN,
    )
    run_task(db, settings, "mark-stale", now=db_now)
    stale = job(db, job_id)
    events = events_of(db, job_id)

    assert not _call(db, "heartbeat", job_id)
    assert not _call(db, "complete", job_id)
    with db.transaction() as conn:
        assert not conn.execute(
            text("SELECT fail(job_id => :id, claim_token => :t, error => '{}')"),
            {"id": job_id, "t": TOKEN},
        ).scalar_one()
    assert job(db, job_id) == stale
    assert events_of(db, job_id) == events

    run_task(db, settings, "requeue", now=db_now + timedelta(hours=1))
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET run_at = now() - interval '1 s' WHERE id = :id"), {"id": job_id}
        )
        (claimed,) = conn.execute(
            text("SELECT id, attempt, claim_token FROM claim(worker => 'w2')")
        ).all()
    assert (claimed.id, claimed.attempt) == (job_id, 2)
    assert not _call(db, "heartbeat", job_id)
    assert not _call(db, "complete", job_id)
    assert job(db, job_id)["locked_by"] == "w2"
    assert _call(db, "complete", job_id, claimed.claim_token)
