"""retry_at: decided when a job enters failed or stale, recomputed on a policy change,
backfilled for rows of the old schema; requeue and dead-letter stay exact complements."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.migrate import migrate
from reconciler.ops.policies import recompute_retry_times
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.sqlfiles import migration_files
from tests.helpers import insert_job, job
from tests.ops_data import CliRun

MS = timedelta(milliseconds=1)


def _one(db: Database, sql: str, **binds: Any) -> Any:
    with db.transaction() as conn:
        return conn.execute(text(sql), binds).one()


def _expected(db: Database, job_id: int) -> datetime:
    """The old requeue's rule, computed here from the job's row and its policy."""
    value = _one(
        db,
        "SELECT coalesce(j.finished_at, j.updated_at) + coalesce(("
        " SELECT backoff(j.attempt - j.attempt_base, p.initial_delay, p.max_delay,"
        "                p.multiplier, p.jitter, j.id)"
        " FROM policy_for(j.kind, j.priority) p), interval '0')"
        " FROM jobs j WHERE j.id = :id",
        id=job_id,
    )[0]
    assert isinstance(value, datetime)
    return value


def test_fail_decides_the_retry_time_from_the_policy(db: Database) -> None:
    """fail() on a critical job: retry_at is its finish time + 500 ms; claim clears it."""
    job_id = _one(db, "SELECT enqueue('mail', priority => 0)")[0]
    token = _one(db, "SELECT claim_token FROM claim('w1')")[0]
    assert _one(db, "SELECT fail(:id, :t)", id=job_id, t=token)[0] is True

    row = job(db, job_id)
    assert row["status"] == "failed"
    assert row["retry_at"] == row["finished_at"] + timedelta(milliseconds=500)


def test_mark_stale_decides_the_retry_time(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A job made stale at now, on its second attempt (default priority): due at now + 2 s."""
    job_id = insert_job(
        db,
        status="running",
        attempt=2,
        heartbeat_at=db_now - settings.heartbeat_timeout - timedelta(seconds=1),
    )
    run_task(db, settings, "mark-stale", now=db_now)

    row = job(db, job_id)
    assert row["status"] == "stale"
    assert row["retry_at"] == db_now + timedelta(seconds=2)


def test_retry_time_follows_the_job_and_is_null_outside_failed_and_stale(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """Requeued: NULL; an operator giving a fresh budget or a new priority: recomputed."""
    job_id = insert_job(db, status="failed", attempt=2, finished_at=db_now - timedelta(hours=1))
    assert job(db, job_id)["retry_at"] == db_now - timedelta(hours=1) + timedelta(seconds=2)

    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET attempt_base = attempt, priority = 0 WHERE id = :id"),
            {"id": job_id},
        )
    assert job(db, job_id)["retry_at"] == _expected(db, job_id)
    # critical now, attempts used 0: the policy's initial 500 ms
    assert job(db, job_id)["retry_at"] == db_now - timedelta(hours=1) + 500 * MS

    run_task(db, settings, "requeue", now=db_now)
    assert job(db, job_id)["status"] == "queued"
    assert job(db, job_id)["retry_at"] is None


def test_a_job_with_no_attempts_left_is_never_requeued_even_when_due(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """retry_at in the past does not matter without attempts left: dead-letter takes it."""
    spent = insert_job(db, status="failed", attempt=3, finished_at=db_now - timedelta(hours=1))
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET retry_at = CAST(:t AS timestamptz) WHERE id = :id"),
            {"t": db_now - timedelta(days=1), "id": spent},
        )

    assert run_task(db, settings, "requeue", now=db_now).transitions == {}
    assert run_task(db, settings, "dead-letter", now=db_now).transitions == {"failed->dead": 1}


def test_an_explicit_retry_time_is_kept_and_honoured(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """An operator setting retry_at alone (nothing else) moves the retry; requeue follows it."""
    job_id = insert_job(db, status="failed", attempt=1, finished_at=db_now)
    assert run_task(db, settings, "requeue", now=db_now).transitions == {}
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET retry_at = CAST(:t AS timestamptz) WHERE id = :id"),
            {"t": db_now - MS, "id": job_id},
        )
    assert run_task(db, settings, "requeue", now=db_now).transitions == {"failed->queued": 1}


def test_an_explicit_retry_time_survives_an_update_of_anything_else(
    db: Database, db_now: datetime
) -> None:
    """Since one trigger decides the guard and the retry time (202612041100) it sees every
    UPDATE of a waiting job, not only those naming the retry time's columns: an operator
    who moved a retry, then edits the payload or the error, keeps the moved retry."""
    job_id = insert_job(db, status="failed", attempt=1, finished_at=db_now)
    moved = db_now + timedelta(hours=6)
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET retry_at = CAST(:t AS timestamptz) WHERE id = :id"),
            {"t": moved, "id": job_id},
        )
        conn.execute(
            text(
                "UPDATE jobs SET payload = '{\"fixed\": true}',"
                ' last_error = \'{"message": "edited"}\' WHERE id = :id'
            ),
            {"id": job_id},
        )
    assert job(db, job_id)["retry_at"] == moved
    with db.transaction() as conn:  # what it depends on changes: decided again
        conn.execute(text("UPDATE jobs SET attempt_base = attempt WHERE id = :id"), {"id": job_id})
    assert job(db, job_id)["retry_at"] == _expected(db, job_id)


def test_policy_change_recomputes_the_jobs_already_waiting(
    cli: CliRun, db: Database, db_now: datetime
) -> None:
    """policies set --kind: every waiting job of that kind moves to the new backoff (across
    batches, with ties on finished_at); others and jobs with no attempts left keep theirs."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, status, attempt, max_attempts, finished_at)"
                " SELECT CASE WHEN g % 3 = 0 THEN 'other' ELSE 'mail' END, 'failed', 1, 3,"
                "        CAST(:now AS timestamptz) - (g % 7) * interval '1 second'"
                " FROM generate_series(1, 2500) g"
            ),
            {"now": db_now},
        )
    spent = insert_job(db, kind="mail", status="stale", attempt=3, finished_at=db_now)
    before_spent = job(db, spent)["retry_at"]
    cli.setenv("RECONCILER_BATCH_SIZE", "1000")

    shown = cli.json("policies", "set", "--kind", "mail", "--initial-delay", "60s")

    mail = 2500 - 2500 // 3
    assert shown["retry_times_changed"] == mail
    wrong = _one(
        db,
        "SELECT count(*) FILTER (WHERE kind = 'mail'"
        "                        AND retry_at <> finished_at + interval '60 s'),"
        "       count(*) FILTER (WHERE kind = 'other' AND retry_at <> finished_at + interval '1 s')"
        " FROM jobs WHERE id <> :spent",
        spent=spent,
    )
    assert tuple(wrong) == (0, 0)
    assert job(db, spent)["retry_at"] == before_spent

    # Dropping the kind's row falls back to its priority's: recomputed again.
    assert cli.json("policies", "delete", "--kind", "mail")["retry_times_changed"] == mail
    assert recompute_retry_times(db, batch_size=7) == 0  # nothing left to change


def test_rows_from_the_old_schema_are_backfilled_by_the_migration(
    pg_url: str, schema: str, settings: Settings
) -> None:
    """Failed and stale rows written before retry_at existed get the old requeue's time,
    across more than one backfill batch, including rows without a finish time."""
    from tests.conftest import connect

    db = connect(pg_url, schema, settings)
    try:
        migrate(db, files=migration_files()[:1])
        with db.transaction() as conn:
            now = conn.execute(text("SELECT date_trunc('second', now())")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO jobs (kind, priority, status, attempt, max_attempts, finished_at)"
                    " SELECT 'test', g % 5, CASE WHEN g % 2 = 0 THEN 'failed' ELSE 'stale' END,"
                    "        1 + g % 4, 3, CAST(:now AS timestamptz) - (g % 10) * interval '1 s'"
                    " FROM generate_series(1, 2100) g"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO jobs (kind, status, attempt, max_attempts)"
                    " VALUES ('test', 'failed', 1, 3)"
                )
            )
        waiting = (
            "SELECT id, {} FROM jobs WHERE status IN ('failed', 'stale')"
            " AND attempt - attempt_base < max_attempts ORDER BY id"
        )
        old_rule = (
            "coalesce(finished_at, updated_at) + coalesce((SELECT backoff(attempt - attempt_base,"
            " p.initial_delay, p.max_delay, p.multiplier, p.jitter, id)"
            " FROM policy_for(kind, priority) p), interval '0')"
        )
        with db.transaction() as conn:
            expected = conn.execute(text(waiting.format(old_rule))).all()
        migrate(db)
        with db.transaction() as conn:
            got = conn.execute(text(waiting.format("retry_at"))).all()
        assert len(expected) > 1000
        assert got == expected
    finally:
        db.dispose()


def _as_written_in(migration: str, name: str, new_name: str) -> str:
    """``name``'s CREATE FUNCTION as ``migration`` wrote it, renamed to ``new_name``."""
    (path,) = [p for _, _, p in migration_files() if p.name == migration]
    body = path.read_text()
    start = re.search(rf"CREATE (OR REPLACE )?FUNCTION {name}\(", body)
    assert start is not None, f"{name} is not in {migration}"
    end = body.index("$$;", body.index("AS $$", start.start())) + 3
    return body[start.start() : end].replace(f"FUNCTION {name}(", f"FUNCTION {new_name}(", 1)


def test_plpgsql_backoff_and_retry_time_give_what_the_sql_functions_gave(db: Database) -> None:
    """Migration 202612040100 rewrote backoff() and retry_time() in plpgsql for speed: over
    policies, attempts and edge values (NULLs, 2^31 - 1 attempts, a maximum under the
    initial delay, a zero initial delay, a jitter of 5e-324, a DST night) both versions
    agree to the microsecond."""
    with db.transaction() as conn:
        conn.execute(
            text(_as_written_in("202612031200_backoff_underflow.sql", "backoff", "backoff_sql"))
        )
        conn.execute(
            text(
                _as_written_in("202612031000_retry_at.sql", "retry_time", "retry_time_sql").replace(
                    "SELECT backoff(", "SELECT backoff_sql("
                )
            )
        )
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier, jitter) VALUES"
                " ('slow', 5, '2.5 seconds', '1 hour', 3, 0.3),"
                " ('instant', 5, '0 seconds', '1 hour', 3, 0.3),"
                " ('flat', 5, '1 day', '2 days', 1.0000001, 0.5),"
                " ('tiny-jitter', 5, '1 second', '1000 days', 2, 5e-324)"
            )
        )
        differ = conn.execute(
            text(
                "WITH cases AS ("
                " SELECT k, pr::smallint AS pr, a, id, iv, mx, m, jt"
                " FROM unnest(ARRAY['slow', 'instant', 'flat', 'tiny-jitter', 'no-such-kind']) k,"
                "      generate_series(0, 4) pr,"
                "      unnest(ARRAY[-1, 0, 1, 2, 3, 10, 60, 2000, 2147483647, NULL]) a,"
                "      generate_series(1, 12) id,"
                "      (VALUES ('1 second'::interval, '5 minutes'::interval, 2.0::float8,"
                "               0.1::float8),"
                "              ('0.5 seconds', '10 seconds', 1.5, 0),"
                "              ('0', '1 hour', 2, 0.5),"
                "              ('3 seconds', '1 second', 3, 0.9),"
                "              (NULL, NULL, NULL, NULL),"
                "              ('1 second', '1000 days', 2, 5e-324)) v (iv, mx, m, jt))"
                " SELECT count(*) FILTER (WHERE backoff(a, iv, mx, m, jt, id)"
                "                         IS DISTINCT FROM backoff_sql(a, iv, mx, m, jt, id)),"
                "        count(*) FILTER (WHERE"
                "            retry_time(k, pr, a, id, '2026-03-29 00:30:00+00') IS DISTINCT FROM"
                "            retry_time_sql(k, pr, a, id, '2026-03-29 00:30:00+00')),"
                "        count(*)"
                " FROM cases"
            )
        ).one()
    assert differ == (0, 0, 5 * 5 * 10 * 12 * 6)
