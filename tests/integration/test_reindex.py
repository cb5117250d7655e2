"""reindex: drops invalid leftovers of interrupted concurrent builds, rebuilds bloated
indexes of the queue tables, and does nothing while a build is under way."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import wait_until


def _session(pg_url: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(pg_url, autocommit=True)
    conn.execute(sql.SQL("SET search_path = {}, pg_temp").format(sql.Identifier(schema)))
    return conn


def _invalid(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND NOT i.indisvalid ORDER BY 1",
        [schema],
    ).fetchall()
    return [r[0] for r in rows]


def _interrupted_reindex(pg_url: str, schema: str, index: str) -> None:
    """REINDEX INDEX CONCURRENTLY that gives up (lock_timeout) while an old snapshot
    is held: PostgreSQL leaves the half-built <index>_ccnew behind, INVALID."""
    with _session(pg_url, schema) as holder, _session(pg_url, schema) as builder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM jobs")  # a snapshot the build must wait for
        builder.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            builder.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(index)))
        holder.execute("ROLLBACK")


def test_an_interrupted_concurrent_reindex_is_cleaned_on_the_next_run(
    pg_url: str, schema: str, db: Database, settings: Settings
) -> None:
    """The invalid _ccnew index of an interrupted REINDEX CONCURRENTLY, and the invalid
    index of a failed CREATE UNIQUE INDEX CONCURRENTLY, are dropped; valid ones stay."""
    with _session(pg_url, schema) as conn:
        conn.execute("SELECT enqueue('same') FROM generate_series(1, 3)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY jobs_kind_once ON jobs (kind)")
        _interrupted_reindex(pg_url, schema, "jobs_finished_idx")
        assert _invalid(conn, schema) == ["jobs_finished_idx_ccnew", "jobs_kind_once"]

        dry = run_task(db, settings, "reindex", dry_run=True)
        assert set(dry.details["dropped"]) == {"jobs_kind_once", "jobs_finished_idx_ccnew"}
        assert _invalid(conn, schema) == ["jobs_finished_idx_ccnew", "jobs_kind_once"]

        result = run_task(db, settings, "reindex")
        assert result.status == "ok", result.error
        assert set(result.details["dropped"]) == {
            "jobs_kind_once",
            "jobs_finished_idx_ccnew",
        }
        assert _invalid(conn, schema) == []
        assert conn.execute("SELECT to_regclass('jobs_finished_idx')").fetchone() != (None,)


def test_a_bloated_index_is_rebuilt_and_reports_its_sizes(
    pg_url: str, schema: str, db: Database, settings: Settings
) -> None:
    """30,000 jobs, 90 % deleted, vacuumed: jobs_pkey is estimated over 2x bloated and
    rebuilt smaller; the same run a second time finds nothing to do."""
    with _session(pg_url, schema) as conn:
        conn.execute(
            "INSERT INTO jobs (kind, max_attempts) SELECT 'test', 3 FROM generate_series(1, 30000)"
        )
        conn.execute("DELETE FROM jobs WHERE id % 10 <> 0")
        conn.execute("VACUUM ANALYZE jobs")

    result = run_task(db, settings, "reindex", params={"min_bytes": 0})

    assert result.status == "ok", result.error
    rebuilt = result.details["reindexed"]
    assert "jobs_pkey" in rebuilt, result.details
    assert rebuilt["jobs_pkey"]["ratio"] >= 2.0
    assert rebuilt["jobs_pkey"]["bytes_after"] < rebuilt["jobs_pkey"]["bytes_before"] / 2
    with _session(pg_url, schema) as conn:
        assert _invalid(conn, schema) == []
        conn.execute("ANALYZE jobs")
    again = run_task(db, settings, "reindex", params={"min_bytes": 0})
    assert "jobs_pkey" not in again.details["reindexed"], again.details


def test_nothing_is_done_while_an_index_build_is_under_way(
    pg_url: str, schema: str, db: Database, settings: Settings
) -> None:
    """A REINDEX CONCURRENTLY of another session, waiting on an old snapshot, has an
    invalid index on purpose: the run leaves it alone and says why."""
    with (
        _session(pg_url, schema) as holder,
        _session(pg_url, schema) as builder,
        _session(pg_url, schema) as watch,
    ):
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM jobs")
        errors: list[BaseException] = []

        def build() -> None:
            try:
                builder.execute("REINDEX INDEX CONCURRENTLY jobs_finished_idx")
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=build)
        thread.start()
        try:
            wait_until(
                lambda: _invalid(watch, schema) == ["jobs_finished_idx_ccnew"],
                "the concurrent build's new index",
            )
            result = run_task(db, settings, "reindex", params={"min_bytes": 0})
            assert result.status == "ok", result.error
            assert result.details["skipped"] == "index build in progress"
            assert result.details["dropped"] == {}
            assert _invalid(watch, schema) == ["jobs_finished_idx_ccnew"]
        finally:
            holder.execute("ROLLBACK")
            thread.join(timeout=60)
        assert _invalid(watch, schema) == []
    assert errors == []
