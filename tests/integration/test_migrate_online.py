"""Migrations never stall workers: a lock timeout with retries, online forms, a deadline."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database
from reconciler.migrate import (
    NO_TRANSACTION,
    MigrationBlocked,
    MigrationResult,
    migrate,
    offline_forms,
)
from reconciler.sqlfiles import migration_files
from tests.helpers import wait_until

LATER = 209901010000


def _files(tmp_path: Path, *extra: tuple[str, str]) -> list[tuple[int, str, Path]]:
    """The shipped migrations and, after them, ``extra`` (name, body) as later versions."""
    files = list(migration_files())
    for offset, (name, body) in enumerate(extra):
        path = tmp_path / f"{LATER + offset}_{name}.sql"
        path.write_text(body, encoding="utf-8")
        files.append((LATER + offset, name, path))
    return files


@pytest.fixture
def holder(pg_url: str, db: Database) -> Iterator[psycopg.Connection[object]]:
    """A long transaction that wrote one job and stays open (a batch job, a forgotten psql)."""
    conn = psycopg.connect(pg_url)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.schema)))
    conn.execute("SELECT enqueue(kind => 'k')")
    conn.execute("UPDATE jobs SET priority = priority")
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


class Workers:
    """One worker in a thread: enqueue, claim, complete, over and over, counting claims."""

    def __init__(self, pg_url: str, schema: str) -> None:
        self.claims = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pg_url, schema), daemon=True)
        self._thread.start()

    def _run(self, pg_url: str, schema: str) -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                while not self._stop.is_set():
                    conn.execute("SELECT enqueue(kind => 'w', queue => 'online')")
                    row = conn.execute(
                        "SELECT id, claim_token FROM claim(worker => 'w', queues => '{online}')"
                    ).fetchone()
                    if row is not None:
                        conn.execute("SELECT complete(%s, %s)", row)
                        self.claims += 1
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self.errors, self.errors


def _in_thread(
    db: Database, files: list[tuple[int, str, Path]], **kw: object
) -> tuple[threading.Thread, list[MigrationResult | BaseException]]:
    out: list[MigrationResult | BaseException] = []

    def run() -> None:
        try:
            out.append(migrate(db, files=files, **kw))  # type: ignore[arg-type]
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _columns(db: Database) -> set[str]:
    with db.transaction() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = :s AND table_name = 'jobs'"
                ),
                {"s": db.schema},
            ).scalars()
        )


def test_workers_keep_claiming_while_a_migration_waits_for_a_held_lock(
    pg_url: str, db: Database, holder: psycopg.Connection[object], tmp_path: Path
) -> None:
    """ALTER TABLE jobs behind a long transaction: claims go on; it applies once freed.

    Without a lock timeout, the ALTER's queued ACCESS EXCLUSIVE request would stop every
    claim() until the long transaction ended: the workers' count would never move.
    """
    files = _files(tmp_path, ("add_note", "ALTER TABLE jobs ADD COLUMN note text;\n"))
    workers = Workers(pg_url, db.schema)
    thread, out = _in_thread(db, files, lock_timeout=timedelta(milliseconds=100))
    try:
        wait_until(lambda: workers.claims > 0, "the worker claims")
        start = workers.claims
        wait_until(
            lambda: workers.claims >= start + 200 and thread.is_alive(),
            "the worker claims 200 more jobs while the migration is still held up",
        )
        assert "note" not in _columns(db)
    finally:
        holder.rollback()
    thread.join(timeout=120)
    workers.stop()
    (result,) = out
    assert isinstance(result, MigrationResult), result
    assert result.applied == (f"{LATER}_add_note.sql",)
    assert result.current_version == LATER
    assert result.lock_retries > 0
    assert "note" in _columns(db)


def test_a_migration_past_its_deadline_stops_with_one_line_naming_the_holder(
    db: Database, holder: psycopg.Connection[object], tmp_path: Path
) -> None:
    """Held past RECONCILER_MIGRATE_DEADLINE: MigrationError naming the blocker; nothing applied."""
    files = _files(tmp_path, ("add_note", "ALTER TABLE jobs ADD COLUMN note text;\n"))
    holder_pid = holder.info.backend_pid
    with pytest.raises(MigrationBlocked) as err:  # the CLI: one line, exit 1
        migrate(
            db,
            files=files,
            lock_timeout=timedelta(milliseconds=50),
            deadline=timedelta(milliseconds=300),
        )
    message = str(err.value)
    assert "\n" not in message
    assert f"{LATER}_add_note.sql" in message
    assert "RECONCILER_MIGRATE_DEADLINE" in message
    assert f"pid {holder_pid}" in message
    assert "note" not in _columns(db)
    with db.transaction() as conn:
        versions = conn.execute(text("SELECT max(version) FROM schema_migrations")).scalar_one()
    assert versions == max(v for v, _, _ in migration_files())


def test_a_concurrent_index_behind_a_writer_retries_and_leaves_no_invalid_index(
    pg_url: str, db: Database, holder: psycopg.Connection[object], tmp_path: Path
) -> None:
    """CREATE INDEX CONCURRENTLY (a no-transaction migration) waits out a writer, valid at last.

    Each timed-out attempt leaves an INVALID index; the next attempt drops it first, so
    IF NOT EXISTS cannot record a broken index as applied.
    """
    body = (
        f"{NO_TRANSACTION}\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_kind_online ON jobs (kind);\n"
    )
    files = _files(tmp_path, ("kind_index", body))
    workers = Workers(pg_url, db.schema)
    thread, out = _in_thread(db, files, lock_timeout=timedelta(milliseconds=100))
    try:
        start_claims = workers.claims

        def invalid_seen() -> bool:
            with db.transaction() as conn:
                return bool(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_index i JOIN pg_class c"
                            " ON c.oid = i.indexrelid WHERE c.relname = 'jobs_kind_online'"
                            " AND c.relnamespace = CAST(:s AS regnamespace) AND NOT i.indisvalid"
                        ),
                        {"s": db.schema},
                    ).scalar_one()
                )

        wait_until(invalid_seen, "a timed-out attempt leaves an invalid index")
        wait_until(
            lambda: workers.claims >= start_claims + 100 and thread.is_alive(),
            "the worker keeps claiming while the index waits",
        )
    finally:
        holder.rollback()
    thread.join(timeout=120)
    workers.stop()
    (result,) = out
    assert isinstance(result, MigrationResult), result
    assert result.applied == (f"{LATER}_kind_index.sql",)
    with db.transaction() as conn:
        valid = (
            conn.execute(
                text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE c.relname = 'jobs_kind_online'"
                    " AND c.relnamespace = CAST(:s AS regnamespace)"
                ),
                {"s": db.schema},
            )
            .scalars()
            .all()
        )
    assert valid == [True]


def test_every_migration_after_the_first_uses_online_forms() -> None:
    """The migration rule, checked: no later migration locks a worker table the slow way."""
    for _, _, path in migration_files()[1:]:
        assert offline_forms(path.read_text(encoding="utf-8")) == [], path.name


@pytest.mark.parametrize(
    ("statement", "advice"),
    [
        (
            "ALTER TABLE jobs ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES t (id);",
            "NOT VALID",
        ),
        ("ALTER TABLE jobs ADD CONSTRAINT c CHECK (attempt >= 0);", "NOT VALID"),
        ("CREATE INDEX jobs_x ON jobs (x);", "CONCURRENTLY"),
        ("CREATE UNIQUE INDEX jobs_x ON jobs (x);", "CONCURRENTLY"),
        ("ALTER TABLE jobs ALTER COLUMN x TYPE bigint;", "new column"),
        ("ALTER TABLE jobs ALTER COLUMN x SET NOT NULL;", "NOT VALID"),
        ("VACUUM FULL jobs;", "exclusive lock"),
    ],
)
def test_offline_forms_are_named_with_their_online_form(statement: str, advice: str) -> None:
    """Each slow form is found, with the online form to use instead."""
    (found,) = offline_forms(f"-- a comment\n{statement}\n")
    assert advice in found
    assert "line 2" in found


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE jobs ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES t (id) NOT VALID;",
        "ALTER TABLE jobs VALIDATE CONSTRAINT f;",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_x ON jobs (x);",
        "ALTER TABLE jobs ADD COLUMN note text;",
        "-- CREATE INDEX jobs_x ON jobs (x); (a comment)",
        "CREATE INDEX t_x ON brand_new_table (x);  -- offline: the table is created above",
    ],
)
def test_online_forms_pass(statement: str) -> None:
    """Online forms, comments and reasoned exemptions are not flagged."""
    assert offline_forms(statement) == []
