"""purge: which finished jobs, events and run records are deleted, at each retention's edge."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.conftest import make_settings
from tests.helpers import events_of, insert_job

MINUTE = timedelta(minutes=1)


def _finished(db: Database, status: str, finished_at: datetime) -> int:
    """A job in ``status`` that finished at ``finished_at``, with one event of its own."""
    job_id = insert_job(db, status=status, attempt=1, finished_at=finished_at)
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor)"
                " VALUES (:id, 'running', :status, :at, 'worker:w1')"
            ),
            {"id": job_id, "status": status, "at": finished_at},
        )
    return job_id


def _existing(db: Database, ids: list[int]) -> set[int]:
    with db.transaction() as conn:
        rows = conn.execute(text("SELECT id FROM jobs WHERE id = ANY(:ids)"), {"ids": ids}).all()
    return {r.id for r in rows}


def _run_record(db: Database, started_at: datetime, status: str = "ok") -> int:
    with db.transaction() as conn:
        run_id = conn.execute(
            text(
                "INSERT INTO runs (task, started_at, finished_at, status, host, pid, actor)"
                " VALUES ('mark-stale', :at, :at, :status, 'h', 1, 'test') RETURNING id"
            ),
            {"at": started_at, "status": status},
        ).scalar_one()
    assert isinstance(run_id, int)
    return run_id


def _runs(db: Database) -> set[int]:
    with db.transaction() as conn:
        return {r.id for r in conn.execute(text("SELECT id FROM runs")).all()}


@pytest.mark.parametrize(
    ("status", "retention"),
    [
        ("succeeded", timedelta(days=30)),
        ("cancelled", timedelta(days=30)),
        ("dead", timedelta(days=90)),
    ],
)
def test_default_retention_boundaries(
    db: Database, settings: Settings, db_now: datetime, status: str, retention: timedelta
) -> None:
    """A job finished a minute past its status's retention is deleted; at it or inside, kept."""
    old = _finished(db, status, db_now - retention - MINUTE)
    edge = _finished(db, status, db_now - retention)
    young = _finished(db, status, db_now - retention + MINUTE)

    result = run_task(db, settings, "purge", now=db_now)

    assert result.status == "ok"
    assert result.transitions == {f"{status}->purged": 1}
    assert result.sample_ids == (old,)
    assert _existing(db, [old, edge, young]) == {edge, young}


def test_events_of_purged_jobs_go_with_them(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A purged job's events are deleted in the same statement; other jobs' events stay."""
    gone = _finished(db, "succeeded", db_now - timedelta(days=31))
    kept = _finished(db, "succeeded", db_now - timedelta(days=29))
    failed = _finished(db, "failed", db_now - timedelta(days=400))

    run_task(db, settings, "purge", now=db_now)

    assert events_of(db, gone) == []
    assert len(events_of(db, kept)) == 1
    assert len(events_of(db, failed)) == 1


@pytest.mark.parametrize("status", ["queued", "running", "failed", "stale"])
def test_unfinished_jobs_are_never_purged(
    db: Database, settings: Settings, db_now: datetime, status: str
) -> None:
    """queued, running, failed and stale jobs stay, however old their finished_at."""
    job_id = _finished(db, status, db_now - timedelta(days=3000))

    result = run_task(db, settings, "purge", now=db_now)

    assert result.transitions == {}
    assert _existing(db, [job_id]) == {job_id}
    assert len(events_of(db, job_id)) == 1


def test_old_run_records_are_deleted(db: Database, settings: Settings, db_now: datetime) -> None:
    """Run records started a minute past retention_runs go; younger ones and open runs stay."""
    old = _run_record(db, db_now - timedelta(days=30) - MINUTE)
    young = _run_record(db, db_now - timedelta(days=30) + MINUTE)
    still_running = _run_record(db, db_now - timedelta(days=300), status="running")

    result = run_task(db, settings, "purge", now=db_now)

    assert result.details["runs_deleted"] == 1
    assert result.run_id is not None
    assert _runs(db) == {young, still_running, result.run_id}
    assert old not in _runs(db)


def test_retention_settings_are_respected(
    pg_url: str, schema: str, db: Database, db_now: datetime
) -> None:
    """RECONCILER_RETENTION_* move every boundary: here 1 d, 2 d, 3 d and 4 d."""
    settings = make_settings(
        pg_url,
        schema,
        retention_succeeded=timedelta(days=1),
        retention_cancelled=timedelta(days=2),
        retention_dead=timedelta(days=3),
        retention_runs=timedelta(days=4),
    )
    jobs = {
        _finished(db, "succeeded", db_now - timedelta(days=1) - MINUTE): False,
        _finished(db, "succeeded", db_now - timedelta(days=1) + MINUTE): True,
        _finished(db, "cancelled", db_now - timedelta(days=2) - MINUTE): False,
        _finished(db, "cancelled", db_now - timedelta(days=2) + MINUTE): True,
        _finished(db, "dead", db_now - timedelta(days=3) - MINUTE): False,
        _finished(db, "dead", db_now - timedelta(days=3) + MINUTE): True,
    }
    old_run = _run_record(db, db_now - timedelta(days=4) - MINUTE)
    young_run = _run_record(db, db_now - timedelta(days=4) + MINUTE)

    result = run_task(db, settings, "purge", now=db_now)

    assert result.transitions == {
        "succeeded->purged": 1,
        "cancelled->purged": 1,
        "dead->purged": 1,
    }
    assert _existing(db, list(jobs)) == {job_id for job_id, kept in jobs.items() if kept}
    assert young_run in _runs(db)
    assert old_run not in _runs(db)


def test_dry_run_counts_and_deletes_nothing(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A dry run reports what would go, and every job, event and run record stays."""
    ids = [_finished(db, "dead", db_now - timedelta(days=91)) for _ in range(3)]
    _run_record(db, db_now - timedelta(days=31))
    runs_before = _runs(db)

    preview = run_task(db, settings, "purge", now=db_now, dry_run=True)

    assert preview.transitions == {"dead->purged": 3}
    assert preview.details["runs_deleted"] == 1
    assert _existing(db, ids) == set(ids)
    assert all(len(events_of(db, job_id)) == 1 for job_id in ids)
    assert _runs(db) == runs_before
    assert run_task(db, settings, "purge", now=db_now).transitions == preview.transitions


def test_batches_walk_on_from_where_the_last_one_ended(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """The keyset: ties on finished_at are split by id, a row that finished after the last
    batch's rows is still found, and every expired job goes exactly once."""
    old = db_now - settings.retention_succeeded - timedelta(days=1)
    tied = [insert_job(db, status="succeeded", finished_at=old) for _ in range(25)]
    later = [
        insert_job(db, status="succeeded", finished_at=old + timedelta(seconds=i))
        for i in range(1, 8)
    ]
    young = insert_job(db, status="succeeded", finished_at=db_now)
    result = run_task(db, settings, "purge", now=db_now, batch_size=10)
    assert result.transitions == {"succeeded->purged": 32}
    assert result.batches >= 4  # 10, 10, 10, 2 for succeeded, then the other statuses
    with db.transaction() as conn:
        left = conn.execute(text("SELECT id FROM jobs")).scalars().all()
    assert left == [young]
    assert not set(left) & set(tied + later)


def test_batches_report_every_job_they_deleted_though_they_return_tallies(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A purge batch returns one row per status with its count, not a row per job: 25
    succeeded and 5 cancelled jobs in batches of 10 are counted whole, each batch starting
    after the last one's keyset (finished times shared, so the id decides), samples real."""
    at = db_now - timedelta(days=40)
    succeeded = [_finished(db, "succeeded", at + (n % 3) * MINUTE) for n in range(25)]
    cancelled = [_finished(db, "cancelled", at) for _ in range(5)]

    preview = run_task(db, settings, "purge", now=db_now, dry_run=True)
    result = run_task(db, settings, "purge", now=db_now, batch_size=10)

    expected = {"succeeded->purged": 25, "cancelled->purged": 5}
    assert preview.transitions == result.transitions == expected
    assert result.batches == 3 + 1 + 1  # 10, 10, 5 succeeded; 5 cancelled; none dead
    assert len(result.sample_ids) == 10
    assert set(result.sample_ids) <= set(succeeded)
    assert _existing(db, succeeded + cancelled) == set()
