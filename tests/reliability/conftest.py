"""Fixtures of the reliability suite: no advisory lock may outlive a test."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest


@pytest.fixture(autouse=True)
def _no_advisory_lock_left_behind(pg_url: str) -> Iterator[None]:
    """After each test, no connection of this suite (application_name rel-*) holds one.

    Only this suite's connections in this database are looked at: other test
    runs may share the server (in another database, or this one), and their
    locks are theirs.
    """
    yield
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.application_name, l.pid, l.objid FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND a.application_name LIKE 'rel-%'"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    assert rows == [], f"advisory locks left behind: {rows}"
