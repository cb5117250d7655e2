"""The job lifecycle: which status changes the trigger allows, and that each leaves one event."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import permutations
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import insert_job, job

STATUSES = ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")

# The lifecycle, written out by hand: the transitions table must say exactly this.
ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "stale"),
    ("running", "cancelled"),
    ("failed", "queued"),
    ("failed", "dead"),
    ("failed", "cancelled"),
    ("stale", "queued"),
    ("stale", "dead"),
    ("stale", "cancelled"),
    ("dead", "queued"),
    ("cancelled", "queued"),
    # Operators: replay a succeeded job (runbook 003), mark one succeeded by hand (001).
    ("succeeded", "queued"),
    ("queued", "succeeded"),
    ("failed", "succeeded"),
    ("stale", "succeeded"),
    ("dead", "succeeded"),
}


def test_transitions_table_lists_exactly_the_lifecycle(db: Database) -> None:
    """The transitions table holds the allowed pairs above, each with its meaning."""
    with db.transaction() as conn:
        rows = conn.execute(text("SELECT from_status, to_status, meaning FROM transitions")).all()

    assert {(r.from_status, r.to_status) for r in rows} == ALLOWED
    assert all(r.meaning for r in rows)


@pytest.mark.parametrize(("from_status", "to_status"), list(permutations(STATUSES, 2)))
def test_every_status_change_is_allowed_exactly_when_listed(
    db: Database, from_status: str, to_status: str
) -> None:
    """UPDATE jobs SET status succeeds for a listed pair; any other raises 23514, row unchanged."""
    job_id = insert_job(db, status=from_status, attempt=1)
    before = job(db, job_id)
    change = text("UPDATE jobs SET status = :to, locked_by = :locked_by WHERE id = :id")
    values = {"to": to_status, "locked_by": "w1" if to_status == "running" else None, "id": job_id}

    if (from_status, to_status) in ALLOWED:
        with db.transaction() as conn:
            assert conn.execute(change, values).rowcount == 1
        assert job(db, job_id)["status"] == to_status
        return

    with pytest.raises(IntegrityError) as caught, db.transaction() as conn:
        conn.execute(change, values)
    error = caught.value.orig
    assert isinstance(error, psycopg.errors.CheckViolation)
    assert error.sqlstate == "23514"
    assert error.diag.message_primary == (
        f"illegal job transition {from_status} -> {to_status} (job {job_id})"
    )
    assert job(db, job_id) == before


@pytest.mark.parametrize(
    ("from_status", "to_status"),
    [pair for pair in permutations(STATUSES, 2) if pair not in ALLOWED],
)
def test_no_illegal_change_slips_past_the_guard_by_setting_updated_at(
    db: Database, from_status: str, to_status: str
) -> None:
    """The guard's WHEN lets a writer that sets updated_at = now() itself skip the call
    (the workers' functions do): still, every unlisted status change raises 23514."""
    job_id = insert_job(db, status=from_status, attempt=1)
    with pytest.raises(IntegrityError) as caught, db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = :to, locked_by = :locked_by, updated_at = now()"
                " WHERE id = :id"
            ),
            {"to": to_status, "locked_by": "w1" if to_status == "running" else None, "id": job_id},
        )
    assert isinstance(caught.value.orig, psycopg.errors.CheckViolation)
    assert job(db, job_id)["status"] == from_status


def test_the_guard_still_acts_for_a_writer_that_sets_updated_at(db: Database) -> None:
    """updated_at = now() set by the writer skips none of the rest: an attempt lowered
    raises, a token left on a finished job is cleared, and an updated_at other than now()
    becomes now()."""
    job_id = insert_job(db, status="running", attempt=3, locked_by="w1")
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET claim_token_hash = '\\x01' WHERE id = :id"), {"id": job_id}
        )
    with pytest.raises(IntegrityError), db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET attempt = 2, updated_at = now() WHERE id = :id"), {"id": job_id}
        )
    with db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'succeeded', locked_by = NULL, finished_at = now(),"
                " updated_at = now() WHERE id = :id"
            ),
            {"id": job_id},
        )
        row = conn.execute(
            text("SELECT claim_token_hash, updated_at = now() AS fresh FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).one()
    assert (row.claim_token_hash, row.fresh) == (None, True)
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET updated_at = '2000-01-01' WHERE id = :id"), {"id": job_id}
        )
        fresh = conn.execute(
            text("SELECT updated_at = now() FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    assert fresh is True


def test_the_workers_functions_skip_the_guard_and_keep_its_rules(db: Database) -> None:
    """claim(), heartbeat() and complete() make no call of the guard (they set what it
    would), and leave what it would have left: updated_at now(), no token once finished."""
    insert_job(db, status="queued")
    with db.transaction() as conn:
        conn.execute(text("SET LOCAL track_functions = 'pl'"))
        claimed = conn.execute(
            text("SELECT id, claim_token FROM claim(worker => 'w1', n => 1)")
        ).one()
        assert conn.execute(
            text("SELECT heartbeat(:id, :t)"), {"id": claimed.id, "t": claimed.claim_token}
        ).scalar_one()
        assert conn.execute(
            text("SELECT complete(:id, :t)"), {"id": claimed.id, "t": claimed.claim_token}
        ).scalar_one()
        calls = conn.execute(
            text(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
                " WHERE funcname = 'jobs_before_update'"
            )
        ).scalar_one()
        row = conn.execute(
            text(
                "SELECT status, claim_token_hash, updated_at = now() AS fresh FROM jobs"
                " WHERE id = :id"
            ),
            {"id": claimed.id},
        ).one()
    assert calls == 0
    assert (row.status, row.claim_token_hash, row.fresh) == ("succeeded", None, True)


@pytest.mark.parametrize("status", STATUSES)
def test_an_update_that_keeps_the_status_is_not_a_transition(db: Database, status: str) -> None:
    """Changing other columns of a job in any status is allowed; only status changes are checked."""
    job_id = insert_job(db, status=status, attempt=1)

    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET status = status, payload = '{\"edited\": 1}' WHERE id = :id"),
            {"id": job_id},
        )

    assert job(db, job_id)["status"] == status
    assert job(db, job_id)["payload"] == {"edited": 1}


# --- one event per transition, written by the statement that made it -------------------


def _stamp(db: Database, job_id: int) -> tuple[str, tuple[str, str], list[dict[str, Any]]]:
    """The job's status, the (transaction, command) that wrote its row, and its events."""
    with db.transaction() as conn:
        row = conn.execute(
            text("SELECT status, xmin::text AS xid, cmin::text AS cid FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).one()
        events = conn.execute(
            text(
                "SELECT from_status, to_status, xmin::text AS xid, cmin::text AS cid"
                " FROM job_events WHERE job_id = :id ORDER BY id"
            ),
            {"id": job_id},
        ).all()
    return row.status, (row.xid, row.cid), [dict(e._mapping) for e in events]


def _assert_one_event_same_statement(
    db: Database, job_id: int, before: list[dict[str, Any]], from_status: str | None, to: str
) -> None:
    status, written_by, events = _stamp(db, job_id)
    assert status == to
    assert events[: len(before)] == before
    (new,) = events[len(before) :]
    assert (new["from_status"], new["to_status"]) == (from_status, to)
    # Same transaction id and same command id: the very statement that changed the job.
    assert (new["xid"], new["cid"]) == written_by


def test_sql_api_transitions_write_one_event_in_the_same_statement(db: Database) -> None:
    """enqueue, claim, complete and fail each write one job_events row, in their statement."""

    def api(statement: str, **values: Any) -> Any:
        with db.transaction() as conn:
            return conn.execute(text(statement), values).scalar_one()

    done = api("SELECT enqueue(kind => 'x')")
    _assert_one_event_same_statement(db, done, [], None, "queued")
    failing = api("SELECT enqueue(kind => 'x', priority => 0)")

    tokens = {}
    for job_id in (failing, done):  # claim() takes the critical job first
        events = _stamp(db, job_id)[2]
        with db.transaction() as conn:
            claimed = conn.execute(text("SELECT id, claim_token FROM claim(worker => 'w1')")).one()
        assert claimed.id == job_id
        tokens[job_id] = claimed.claim_token
        _assert_one_event_same_statement(db, job_id, events, "queued", "running")

    events = _stamp(db, done)[2]
    assert api("SELECT complete(job_id => :id, claim_token => :t)", id=done, t=tokens[done])
    _assert_one_event_same_statement(db, done, events, "running", "succeeded")

    events = _stamp(db, failing)[2]
    assert api(
        "SELECT fail(job_id => :id, claim_token => :t, error => '{\"e\": 1}')",
        id=failing,
        t=tokens[failing],
    )
    _assert_one_event_same_statement(db, failing, events, "running", "failed")


@pytest.mark.parametrize(
    ("task", "placed", "to_status"),
    [
        ("mark-stale", {"status": "running", "attempt": 1, "heartbeat_minutes": 60}, "stale"),
        ("requeue", {"status": "failed", "attempt": 1}, "queued"),
        ("requeue", {"status": "stale", "attempt": 1}, "queued"),
        ("dead-letter", {"status": "failed", "attempt": 3}, "dead"),
        ("dead-letter", {"status": "stale", "attempt": 3}, "dead"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["status"],
)
def test_task_transitions_write_one_event_in_the_same_statement(
    db: Database,
    settings: Settings,
    db_now: datetime,
    task: str,
    placed: dict[str, Any],
    to_status: str,
) -> None:
    """mark-stale, requeue and dead-letter write one job_events row per job, in their statement."""
    hour_ago = db_now - timedelta(hours=1)
    values = dict(placed)
    if values.pop("heartbeat_minutes", None):
        values["heartbeat_at"] = hour_ago
    else:
        values["finished_at"] = hour_ago
    ids = [insert_job(db, max_attempts=3, **values) for _ in range(3)]

    result = run_task(db, settings, task, now=db_now)

    assert result.transitions == {f"{placed['status']}->{to_status}": 3}
    for job_id in ids:
        _assert_one_event_same_statement(db, job_id, [], placed["status"], to_status)
