"""mark-stale: who becomes stale, at the boundary, with what record."""

from __future__ import annotations

from datetime import datetime, timedelta

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
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
