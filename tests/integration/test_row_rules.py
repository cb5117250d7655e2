"""The rules of a job row (jobs_row_valid, one CHECK calling one function): every rule of
the seven constraints it replaced still refuses what it refused, with one line naming the
job and the rule, whoever writes; and the migration to it keeps existing rows."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from reconciler.db import Database
from reconciler.migrate import migrate
from reconciler.settings import Settings
from reconciler.sqlfiles import migration_files
from tests.helpers import insert_job, job

# An UPDATE of a queued job (or a running one) that breaks one rule, and the line that
# refuses it. (An unknown status, or an attempt lowered, is refused first by the
# transition guard, and an updated_at is set by it: INSERTED below.)
BROKEN = {
    "priority below": ("queued", "priority = -1", "priority -1 is out of range"),
    "priority above": ("queued", "priority = 5", "priority 5 is out of range"),
    "attempt_base below zero": (
        "queued",
        "attempt_base = -1",
        "attempt 1 and attempt_base -1 are not 0 <= attempt_base <= attempt",
    ),
    "attempt_base above attempt": (
        "queued",
        "attempt_base = 5",
        "attempt 1 and attempt_base 5 are not 0 <= attempt_base <= attempt",
    ),
    "max_attempts zero": ("queued", "max_attempts = 0", "max_attempts 0 is out of range"),
    "max_attempts over 1000": (
        "queued",
        "max_attempts = 1001",
        "max_attempts 1001 is out of range",
    ),
    "an owner while queued": ("queued", "locked_by = 'w9'", "a queued job cannot have locked_by"),
    "running without an owner": ("running", "locked_by = NULL", "a running job needs locked_by"),
    "created_at infinity": ("queued", "created_at = 'infinity'", "created_at infinity is not"),
    "heartbeat_at -infinity": (
        "running",
        "heartbeat_at = '-infinity'",
        "heartbeat_at -infinity is not",
    ),
    "run_at infinity": ("queued", "run_at = 'infinity'", "run_at infinity is not"),
    "locked_at infinity": ("running", "locked_at = 'infinity'", "locked_at infinity is not"),
    "started_at infinity": ("queued", "started_at = 'infinity'", "started_at infinity is not"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_rule_refuses_its_row_with_one_line(db: Database, case: str) -> None:
    """Each broken rule raises check_violation naming the job and the rule; nothing is stored."""
    status, change, message = BROKEN[case]
    job_id = insert_job(
        db, status=status, attempt=1, locked_by="w1" if status == "running" else None
    )
    before = job(db, job_id)
    with pytest.raises(IntegrityError) as caught, db.transaction() as conn:
        conn.execute(text(f"UPDATE jobs SET {change} WHERE id = :id"), {"id": job_id})
    error = caught.value.orig
    assert getattr(error, "sqlstate", None) == "23514"
    diag = getattr(error, "diag", None)
    assert diag is not None
    assert diag.message_primary.startswith(f"job {job_id}: {message}")
    assert (diag.constraint_name, diag.table_name) == ("jobs_row_valid", "jobs")
    assert job(db, job_id) == before


# A row written whole (a restore, SQL typed into psql): no guard runs before the rules.
INSERTED = {
    "unknown status": ("status", "'nope'", "status nope is not a job status"),
    "attempt below zero": (
        "attempt",
        "-1",
        "attempt -1 and attempt_base 0 are not 0 <= attempt_base <= attempt",
    ),
    "updated_at -infinity": ("updated_at", "'-infinity'", "updated_at -infinity is not"),
}


@pytest.mark.parametrize("case", sorted(INSERTED))
def test_an_insert_is_held_to_the_same_rules(db: Database, case: str) -> None:
    """An INSERT that breaks a rule is refused with its line; nothing is stored."""
    column, value, message = INSERTED[case]
    with pytest.raises(IntegrityError, match=message), db.transaction() as conn:
        conn.execute(
            text(f"INSERT INTO jobs (kind, max_attempts, {column}) VALUES ('k', 3, {value})")
        )
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_null_times_and_every_status_with_its_owner_pass(db: Database) -> None:
    """NULL times pass (as in a CHECK), and every status is a row the rules keep."""
    for status in ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled"):
        job_id = insert_job(db, status=status, locked_by="w1" if status == "running" else None)
        with db.transaction() as conn:
            assert (
                conn.execute(
                    text(
                        "UPDATE jobs SET heartbeat_at = NULL, started_at = NULL,"
                        " finished_at = NULL, priority = 4, max_attempts = 1000 WHERE id = :id"
                    ),
                    {"id": job_id},
                ).rowcount
                == 1
            )


def test_one_constraint_and_it_is_validated(db: Database) -> None:
    """jobs has one CHECK, jobs_row_valid, validated: the seven it replaced are gone."""
    with db.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT conname, convalidated FROM pg_constraint"
                " WHERE conrelid = 'jobs'::regclass AND contype = 'c'"
            )
        ).all()
    assert [tuple(r) for r in rows] == [("jobs_row_valid", True)]


def test_rows_from_before_the_migration_are_kept_and_checked(
    pg_url: str, schema: str, settings: Settings
) -> None:
    """Rows written under the seven constraints pass the validation of the one that
    replaces them, in every status, and the next bad write is refused by it."""
    from tests.conftest import connect

    db = connect(pg_url, schema, settings)
    try:
        before = [f for f in migration_files() if f[0] < 202612041000]
        migrate(db, files=before)
        with db.transaction() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (kind, status, attempt, attempt_base, max_attempts,"
                    "                  locked_by, locked_at, finished_at)"
                    " SELECT 'k', s, 2, 1, 3, CASE WHEN s = 'running' THEN 'w1' END,"
                    "        CASE WHEN s = 'running' THEN now() END,"
                    "        CASE WHEN s NOT IN ('queued', 'running') THEN now() END"
                    " FROM unnest(ARRAY['queued', 'running', 'succeeded', 'failed', 'stale',"
                    "                   'dead', 'cancelled']) s, generate_series(1, 30)"
                )
            )
        assert len(migrate(db).applied) == len(migration_files()) - len(before)
        with db.transaction() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 210
            job_id = conn.execute(text("SELECT min(id) FROM jobs")).scalar_one()
        with (
            pytest.raises(IntegrityError, match="priority 9 is out of range"),
            db.transaction() as conn,
        ):
            conn.execute(text("UPDATE jobs SET priority = 9 WHERE id = :id"), {"id": job_id})
    finally:
        db.dispose()


def test_a_hostile_search_path_decides_nothing(db: Database, pg_url: str) -> None:
    """The row rules and the guard's WHEN take no SET search_path: a writer whose path puts
    a schema with a <> (text) and a < (integer) that always say false before pg_catalog
    still has a bad status refused and a lowered attempt sent to the guard. (Written with
    plain operators, both functions let both through: the status stored, the attempt
    lowered.)"""
    evil = f"{db.schema}_evil"
    job_id = insert_job(db, status="queued", attempt=3)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(evil)))
        try:
            conn.execute(
                sql.SQL("SET search_path = {}, pg_catalog, {}").format(
                    sql.Identifier(evil), sql.Identifier(db.schema)
                )
            )
            conn.execute(
                "CREATE FUNCTION never(text, text) RETURNS boolean LANGUAGE sql"
                " IMMUTABLE AS 'SELECT false';"
                " CREATE OPERATOR <> (LEFTARG = text, RIGHTARG = text, FUNCTION = never);"
                " CREATE FUNCTION never(integer, integer) RETURNS boolean LANGUAGE sql"
                " IMMUTABLE AS 'SELECT false';"
                " CREATE OPERATOR < (LEFTARG = integer, RIGHTARG = integer, FUNCTION = never)"
            )
            assert conn.execute("SELECT 'a' <> 'b', 2 < 3").fetchone() == (False, False)
            with pytest.raises(psycopg.errors.CheckViolation, match="jobs_row_valid"):
                conn.execute(
                    "INSERT INTO jobs (kind, status, max_attempts) VALUES ('k', 'bogus', 3)"
                )
            with pytest.raises(psycopg.errors.CheckViolation, match="cannot go down"):
                conn.execute(
                    "UPDATE jobs SET attempt = 1, updated_at = now() WHERE id = %s", [job_id]
                )
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(evil)))
    assert job(db, job_id)["attempt"] == 3
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1
