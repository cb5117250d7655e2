"""``check``'s table health: autovacuum lag, table bloat and index bloat of the queue tables.

Each test switches autovacuum off for ``jobs`` (a reloption) so the server's own
autovacuum cannot clean up between the setup and the check: the finding must then
say so, and the test pins exactly the rows it made.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import psycopg
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.check import evaluate
from reconciler.schedule import load_schedule
from reconciler.settings import Settings
from tests.conftest import make_settings


def _by_name(db: Database, settings: Settings, now: datetime) -> dict[str, tuple[str, str]]:
    found = evaluate(db, settings, load_schedule(None), now=now)
    return {f.check: (f.level, f.message) for f in found}


def _churn(db: Database, rows: int, keep: int) -> None:
    """Insert ``rows`` jobs with autovacuum off for ``jobs``; delete all but the newest ``keep``
    (at the table's end, so VACUUM cannot truncate the emptied pages away)."""
    with db.transaction() as conn:
        conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
        conn.execute(
            text(
                "INSERT INTO jobs (kind, queue, status, payload, max_attempts)"
                " SELECT 'churn', 'q', 'queued', jsonb_build_object('pad', repeat('x', 200)), 3"
                " FROM generate_series(1, :n)"
            ),
            {"n": rows},
        )
    with db.transaction() as conn:
        conn.execute(
            text(
                "DELETE FROM jobs WHERE id NOT IN (SELECT id FROM jobs ORDER BY id DESC LIMIT :k)"
            ),
            {"k": keep},
        )
        conn.execute(text("SELECT pg_stat_force_next_flush()"))


def _dead_rows_seen(db: Database, at_least: int) -> None:
    """Wait (with a deadline) until the cumulative statistics show the deleted rows."""
    deadline = time.monotonic() + 60
    while True:
        with db.transaction() as conn:
            conn.execute(text("SELECT pg_stat_force_next_flush()"))
            dead = conn.execute(
                text(
                    "SELECT n_dead_tup FROM pg_stat_all_tables"
                    " WHERE relid = to_regclass(current_schema() || '.jobs')"
                )
            ).scalar_one()
        if dead >= at_least:
            return
        assert time.monotonic() < deadline, f"statistics still show {dead} dead rows"
        time.sleep(0.2)


def _vacuum(db: Database, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'VACUUM (ANALYZE) "{db.schema}".jobs')


def test_healthy_tables_are_ok(db: Database, settings: Settings, db_now: datetime) -> None:
    """A fresh schema: autovacuum lag, table bloat and index bloat are ok."""
    found = _by_name(db, settings, db_now)
    assert {k: found[k][0] for k in ("autovacuum_lag", "table_bloat", "index_bloat")} == {
        "autovacuum_lag": "ok",
        "table_bloat": "ok",
        "index_bloat": "ok",
    }


def test_never_vacuumed_with_dead_rows_is_a_warning(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """12,000 dead rows past the trigger of a table never vacuumed: a warning naming it."""
    _churn(db, 12_000, keep=0)
    _dead_rows_seen(db, 12_000)
    level, message = _by_name(db, settings, db_now)["autovacuum_lag"]
    assert level == "warning"
    assert "jobs: 12000 dead rows" in message
    assert "never vacuumed" in message and "autovacuum is off for this table" in message


def test_few_dead_rows_are_not_judged(
    db: Database, settings: Settings, db_now: datetime, pg_url: str
) -> None:
    """Below RECONCILER_CHECK_VACUUM_MIN_DEAD a table is not judged, whatever its trigger."""
    _churn(db, 2_000, keep=0)
    _dead_rows_seen(db, 2_000)
    assert _by_name(db, settings, db_now)["autovacuum_lag"][0] == "ok"
    low = make_settings(pg_url, db.schema, check_vacuum_min_dead=1)
    assert _by_name(db, low, db_now)["autovacuum_lag"][0] == "warning"


def test_lag_counts_from_the_last_vacuum(
    db: Database, settings: Settings, db_now: datetime, pg_url: str
) -> None:
    """Vacuumed just now: ok; the same dead rows seen more than the lag later: a warning."""
    _vacuum(db, pg_url)
    _churn(db, 12_000, keep=0)
    _dead_rows_seen(db, 12_000)
    assert _by_name(db, settings, db_now)["autovacuum_lag"][0] == "ok"
    later = db_now + settings.check_vacuum_lag + timedelta(minutes=5)
    level, message = _by_name(db, settings, later)["autovacuum_lag"]
    assert level == "warning" and "last vacuumed 1h" in message
    _vacuum(db, pg_url)
    assert _by_name(db, settings, later)["autovacuum_lag"][0] == "ok"


def test_table_and_index_bloat(
    db: Database, settings: Settings, db_now: datetime, pg_url: str
) -> None:
    """20,000 jobs inserted, all but 500 deleted, vacuumed: the table and its indexes are
    many times what 500 rows need; with the size floor at 0 both findings warn."""
    _churn(db, 20_000, keep=500)
    _vacuum(db, pg_url)
    found = _by_name(db, settings, db_now)
    # The default floor (8 MiB) is above this small table: not worth a warning.
    assert found["table_bloat"][0] == "ok"
    small = make_settings(pg_url, db.schema, check_bloat_min_bytes=0)
    found = _by_name(db, small, db_now)
    level, message = found["table_bloat"]
    assert level == "warning" and message.startswith("jobs ") and "its 500 rows" in message
    level, message = found["index_bloat"]
    assert level == "warning" and "jobs_pkey" in message and "reconciler run reindex" in message


def test_invalid_index_leftover(
    db: Database, settings: Settings, db_now: datetime, pg_url: str
) -> None:
    """An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index: a warning naming it."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, queue, status, max_attempts)"
                " VALUES ('a', 'q', 'queued', 3), ('b', 'q', 'queued', 3)"
            )
        )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        try:
            conn.execute(
                f'CREATE UNIQUE INDEX CONCURRENTLY jobs_leftover ON "{db.schema}".jobs (queue)'
            )
        except psycopg.errors.UniqueViolation:
            pass
        else:  # pragma: no cover - the duplicate queue above makes it fail
            raise AssertionError("the unique index should not have built")
    level, message = _by_name(db, settings, db_now)["index_bloat"]
    assert level == "warning" and "jobs_leftover is INVALID" in message
