"""dead-letter: failed or stale jobs with no attempts left become dead, and only those."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import events_of, insert_job, job


@pytest.mark.parametrize("status", ["failed", "stale"])
def test_attempt_at_max_attempts_becomes_dead(
    db: Database, settings: Settings, db_now: datetime, status: str
) -> None:
    """attempt == max_attempts is dead, attempt == max_attempts - 1 is left for requeue."""
    last = insert_job(
        db,
        status=status,
        attempt=3,
        max_attempts=3,
        finished_at=db_now - timedelta(minutes=1),
        last_error='{"message": "boom"}',
    )
    one_left = insert_job(
        db, status=status, attempt=2, max_attempts=3, finished_at=db_now - timedelta(days=1)
    )

    result = run_task(db, settings, "dead-letter", now=db_now)

    assert result.status == "ok"
    assert result.transitions == {f"{status}->dead": 1}
    assert result.sample_ids == (last,)
    row = job(db, last)
    assert (row["status"], row["finished_at"], row["attempt"]) == ("dead", db_now, 3)
    (event,) = events_of(db, last)
    assert (event["from_status"], event["to_status"], event["at"], event["actor"]) == (
        status,
        "dead",
        db_now,
        "reconciler:dead-letter",
    )
    assert event["reason"] == {
        "attempt": 3,
        "attempts_used": 3,
        "max_attempts": 3,
        "last_error": {"message": "boom"},
    }
    assert event["run_id"] == result.run_id
    assert job(db, one_left)["status"] == status
    assert events_of(db, one_left) == []


def test_attempt_beyond_max_attempts_becomes_dead(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A job with more attempts than allowed (max lowered later) is dead too."""
    over = insert_job(db, status="failed", attempt=5, max_attempts=3, finished_at=db_now)

    run_task(db, settings, "dead-letter", now=db_now)

    assert job(db, over)["status"] == "dead"


@pytest.mark.parametrize("status", ["queued", "running", "succeeded", "cancelled", "dead"])
def test_other_statuses_are_never_dead_lettered(
    db: Database, settings: Settings, db_now: datetime, status: str
) -> None:
    """Only failed and stale jobs are dead-lettered, whatever the attempts."""
    job_id = insert_job(
        db, status=status, attempt=3, max_attempts=3, finished_at=db_now - timedelta(days=1)
    )

    result = run_task(db, settings, "dead-letter", now=db_now)

    assert result.transitions == {}
    assert job(db, job_id)["status"] == status


def test_second_run_changes_nothing(db: Database, settings: Settings, db_now: datetime) -> None:
    """A dead job no longer matches: the second run moves nothing."""
    insert_job(db, status="stale", attempt=1, max_attempts=1, finished_at=db_now)

    first = run_task(db, settings, "dead-letter", now=db_now)
    second = run_task(db, settings, "dead-letter", now=db_now)

    assert first.transitions == {"stale->dead": 1}
    assert second.transitions == {}


@pytest.mark.parametrize("order", [("requeue", "dead-letter"), ("dead-letter", "requeue")])
def test_every_failed_or_stale_job_has_exactly_one_way_out(
    db: Database, settings: Settings, db_now: datetime, order: tuple[str, str]
) -> None:
    """Requeue and dead-letter split a mixed population: each job ends queued or dead, once."""
    expected: dict[int, str] = {}
    for status in ("failed", "stale"):
        for max_attempts in (1, 3, 5):
            for attempt in range(max_attempts + 2):
                job_id = insert_job(
                    db,
                    status=status,
                    attempt=attempt,
                    max_attempts=max_attempts,
                    finished_at=db_now - timedelta(days=1),
                )
                expected[job_id] = "queued" if attempt < max_attempts else "dead"

    results = [run_task(db, settings, name, now=db_now) for name in order]
    for name in order:
        assert run_task(db, settings, name, now=db_now).transitions == {}

    assert {job_id: job(db, job_id)["status"] for job_id in expected} == expected
    for job_id, status in expected.items():
        assert [e["to_status"] for e in events_of(db, job_id)] == [status]
    moved = sum(r.changed for r in results)
    assert moved == len(expected)
