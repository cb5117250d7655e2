"""vacuum-analyze: dead rows before and after, and an honest report when they cannot go."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Connection, make_url, text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.conftest import make_settings, migrated
from tests.helpers import insert_job

# Below autovacuum's default threshold (50 dead rows), so only the task vacuums them.
ROWS = 40


@pytest.fixture
def own_url(pg_url: str) -> Iterator[str]:
    """A database of its own: an open transaction of another test (in another
    session on a shared server) holds back VACUUM in its own database only."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        try:
            yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def settings(own_url: str, schema: str) -> Settings:
    return make_settings(own_url, schema)


@pytest.fixture
def db(own_url: str, schema: str, settings: Settings) -> Iterator[Database]:
    yield from migrated(own_url, schema, settings)


def _insert(db: Database) -> None:
    for _ in range(ROWS):
        insert_job(db, status="succeeded", attempt=1)


def _delete_all(db: Database) -> None:
    """Delete every job, and make this backend publish its dead-row counts at once."""
    with db.transaction() as conn:
        conn.execute(text("DELETE FROM jobs"))
        conn.execute(text("SELECT pg_stat_force_next_flush()"))


def _vacuum_count(db: Database) -> int:
    with db.transaction() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        count = conn.execute(
            text(
                "SELECT vacuum_count FROM pg_stat_all_tables"
                " WHERE schemaname = :schema AND relname = 'jobs'"
            ),
            {"schema": db.schema},
        ).scalar_one()
    assert isinstance(count, int)
    return count


@contextmanager
def _old_snapshot(db: Database) -> Iterator[tuple[Connection, int]]:
    """A REPEATABLE READ transaction on another connection that has taken its snapshot."""
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            db.pin(conn)
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            assert isinstance(pid, int)
            yield conn, pid


def test_dead_rows_are_reclaimed(db: Database, settings: Settings) -> None:
    """After deletes, dead rows before > 0, after == 0, and the run says it reclaimed all."""
    _insert(db)
    _delete_all(db)

    result = run_task(db, settings, "vacuum-analyze")

    assert result.status == "ok", result.error
    assert result.batches == 3
    tables: dict[str, Any] = dict(result.details["tables"])
    assert set(tables) == {"jobs", "job_events", "runs"}
    jobs = tables["jobs"]
    assert jobs["dead_rows_before"] == ROWS
    assert jobs["dead_rows_after"] == 0
    assert jobs["not_removable"] == 0
    assert jobs["live_rows"] == 0
    assert result.details["reclaimed_all"] is True
    assert "xmin_holders" not in result.details
    assert _vacuum_count(db) == 1


def test_an_old_snapshot_is_reported_with_its_backend(db: Database, settings: Settings) -> None:
    """A REPEATABLE READ transaction older than the deletes: not reclaimed, and its pid named."""
    _insert(db)
    with _old_snapshot(db) as (holder, pid):
        assert holder.execute(text("SELECT count(*) FROM jobs")).scalar_one() == ROWS
        _delete_all(db)

        result = run_task(db, settings, "vacuum-analyze")

    assert result.status == "ok", result.error
    jobs = result.details["tables"]["jobs"]
    assert jobs["dead_rows_before"] == ROWS
    assert jobs["not_removable"] >= ROWS
    assert jobs["dead_rows_after"] == ROWS
    assert result.details["reclaimed_all"] is False
    holders = result.details["xmin_holders"]
    assert pid in [h["pid"] for h in holders]
    (mine,) = [h for h in holders if h["pid"] == pid]
    assert mine["state"] == "idle in transaction"
    assert mine["application_name"] == "reconciler-tests"

    # Once that transaction has ended, the next run reclaims everything.
    again = run_task(db, settings, "vacuum-analyze")
    assert again.details["reclaimed_all"] is True
    assert again.details["tables"]["jobs"]["dead_rows_after"] == 0


def test_dry_run_does_not_vacuum(db: Database, settings: Settings) -> None:
    """A dry run reports the dead rows it would reclaim, vacuums nothing and records no run."""
    _insert(db)
    _delete_all(db)

    preview = run_task(db, settings, "vacuum-analyze", dry_run=True)

    assert preview.status == "ok"
    assert preview.details["tables"]["jobs"] == {"dead_rows_before": ROWS}
    assert preview.batches == 0
    assert preview.run_id is None
    assert _vacuum_count(db) == 0
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


@pytest.mark.parametrize("tables", [("jobs",), ("job_events", "runs")])
def test_chosen_tables_only(db: Database, settings: Settings, tables: tuple[str, ...]) -> None:
    """The tables parameter limits the run to those tables."""
    result = run_task(db, settings, "vacuum-analyze", params={"tables": tables})

    assert result.status == "ok", result.error
    assert set(result.details["tables"]) == set(tables)
    assert result.batches == len(tables)


def test_snapshots_in_other_databases_are_not_named(
    pg_url: str, db: Database, settings: Settings
) -> None:
    """An old transaction in another database does not hold our rows back and is not named."""
    other_url = make_url(pg_url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(other_url.render_as_string(hide_password=False)) as other:
        other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        other_pid = other.execute("SELECT pg_backend_pid()").fetchone()
        _insert(db)
        with _old_snapshot(db) as (holder, pid):
            holder.execute(text("SELECT count(*) FROM jobs"))
            _delete_all(db)
            result = run_task(db, settings, "vacuum-analyze")
        other.rollback()

    assert other_pid is not None
    pids = [h["pid"] for h in result.details["xmin_holders"]]
    assert pid in pids
    assert other_pid[0] not in pids
