"""``reconciler migrate``: create or upgrade the schema, idempotently, without stalling workers.

Each pending migration runs in its own transaction, under a transaction-level
advisory lock keyed by the schema name, so two processes migrating at once
serialise: the second waits, then finds nothing left to do. A migration file
that changed after it was applied is refused (its checksum is recorded).
Safe to re-run at any time.

Never a stall. A DDL statement that waits for a table lock also makes every
later request for that table queue behind it: an ``ALTER TABLE jobs`` waiting
for one long transaction stops every worker's ``claim()``. So each migration
runs with ``lock_timeout`` (``RECONCILER_MIGRATE_LOCK_TIMEOUT``): it waits at
most that long, rolls back whole, lets the workers through, and tries again
after a growing pause, until ``RECONCILER_MIGRATE_DEADLINE``; then it stops
with one line naming the sessions that hold the schema's tables.

A migration whose first line is ``-- reconciler: no-transaction`` holds one
statement that cannot run in a transaction (``CREATE INDEX CONCURRENTLY``);
it runs alone, in autocommit, under a session advisory lock. An invalid index
left by a failed attempt is dropped before the next one.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors, sql
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from reconciler.db import Database, quote_ident
from reconciler.durations import format_duration
from reconciler.logs import get_logger
from reconciler.sqlfiles import migration_files

__all__ = [
    "NO_TRANSACTION",
    "MigrationBlocked",
    "MigrationError",
    "MigrationResult",
    "migrate",
    "offline_forms",
    "pending",
]

log = get_logger("reconciler.migrate")

NO_TRANSACTION = "-- reconciler: no-transaction"

# The pause between two attempts doubles from the lock timeout up to this, with jitter,
# so a migration retrying behind a busy table never becomes a lock queue of its own.
_MAX_PAUSE_S = 30.0

MigrationFile = tuple[int, str, Path]


class MigrationError(Exception):
    """The schema cannot be brought up to date; the message says why."""


class MigrationBlocked(MigrationError):
    """Locks held elsewhere past RECONCILER_MIGRATE_DEADLINE: try again later (exit 1)."""


@dataclass(frozen=True)
class MigrationResult:
    schema: str
    applied: tuple[str, ...]
    current_version: int
    lock_retries: int = 0


def _checksum(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def _raw(conn: Connection) -> psycopg.Connection[Any]:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def migrate(
    db: Database,
    *,
    lock_timeout: timedelta = timedelta(seconds=1),
    deadline: timedelta = timedelta(minutes=10),
    files: Sequence[MigrationFile] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> MigrationResult:
    """Apply every pending migration, one transaction each; return what was applied.

    ``lock_timeout`` bounds how long any one attempt may queue for a lock (and so how
    long it can hold up workers); ``deadline`` bounds the whole wait across attempts.
    """
    chosen = list(migration_files() if files is None else files)
    applied: list[str] = []
    retries = 0
    started = time.monotonic()
    name = "the next migration"
    while True:
        try:
            state = _next(db, chosen)
            if state.next is None:
                return MigrationResult(db.schema, tuple(applied), state.current, retries)
            path = state.next[2]
            name = path.name
            done_here = _apply(db, state.next, lock_timeout)
        # A deadlock is a lock wait too: CREATE INDEX CONCURRENTLY waits for every
        # snapshot older than its own, including that of a second migrator waiting on
        # the migration lock this one holds. One of the two is cancelled; it tries again.
        except (errors.LockNotAvailable, errors.DeadlockDetected):
            waited = time.monotonic() - started
            holders = _lock_holders(db)
            if waited >= deadline.total_seconds():
                raise MigrationBlocked(
                    f"migration {name} could not take its locks within "
                    f"{format_duration(deadline)} (RECONCILER_MIGRATE_DEADLINE): "
                    f"{holders or 'another session holds them'}; workers were never blocked "
                    "for longer than RECONCILER_MIGRATE_LOCK_TIMEOUT. End that transaction, "
                    "or run reconciler migrate again later (it resumes where it stopped)"
                ) from None
            retries += 1
            pause = min(lock_timeout.total_seconds() * 2**retries, _MAX_PAUSE_S)
            pause *= random.uniform(0.5, 1.0)
            log.warning(
                "migrate.lock_timeout",
                migration=name,
                attempt=retries,
                holders=holders,
                retry_in_s=round(pause, 2),
            )
            sleep(pause)
            continue
        if not done_here:
            continue  # another migrator applied it meanwhile
        applied.append(path.name)


@dataclass(frozen=True)
class _State:
    current: int
    next: MigrationFile | None


def _next(db: Database, files: Sequence[MigrationFile]) -> _State:
    """Create the schema's bookkeeping if needed; the schema's version and what comes next."""
    with db.engine.begin() as conn:
        _lock(conn, db.schema)
        # The identifier is composed by psycopg and sent as is: through SQLAlchemy, a '%'
        # or ':name' in the schema's name would be taken for a placeholder.
        _raw(conn).execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(db.schema))
        )
        _pin(conn, db.schema)
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row.version: row.checksum
            for row in conn.execute(text("SELECT version, checksum FROM schema_migrations"))
        }
    _refuse_unknown_versions(db.schema, done, files)
    for version, _, path in files:
        if version in done and done[version] != _checksum(path.read_text(encoding="utf-8")):
            raise MigrationError(
                f"migration {path.name} changed after it was applied to schema "
                f"{db.schema!r}; restore the file and add a new migration instead"
            )
    todo = [f for f in files if f[0] not in done]
    return _State(max(done, default=0), todo[0] if todo else None)


def _lock(conn: Connection, schema: str, *, session: bool = False) -> None:
    """The advisory lock that serialises migrators of one schema (blocks no worker)."""
    fn = "pg_advisory_lock" if session else "pg_advisory_xact_lock"
    try:
        conn.execute(
            text(f"SELECT {fn}(hashtextextended(:key, 0))"),
            {"key": f"reconciler.migrate:{schema}"},
        )
    except DBAPIError as exc:
        if isinstance(exc.orig, errors.DeadlockDetected):
            raise exc.orig from None  # retried by migrate(), like a lock timeout
        raise


def _pin(conn: Connection, schema: str, *, local: bool = True) -> None:
    # pg_temp last: functions capture this path (SET search_path FROM CURRENT), and
    # unlisted, pg_temp would come first, so a caller's temp table "jobs" would win.
    conn.execute(
        text("SELECT set_config('search_path', :sp, :local)"),
        {"sp": f"{quote_ident(schema)}, pg_temp", "local": local},
    )


def _apply(db: Database, migration: MigrationFile, lock_timeout: timedelta) -> bool:
    """Apply one migration; False when another migrator had applied it already."""
    version, name, path = migration
    body = path.read_text(encoding="utf-8")
    timeout = f"{max(1, int(lock_timeout.total_seconds() * 1000))}ms"
    record = "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"
    binds = {"v": version, "n": name, "c": _checksum(body)}
    if body.startswith(NO_TRANSACTION):
        return _apply_outside_transaction(db, body, timeout, record, binds)
    with db.engine.begin() as conn:
        _lock(conn, db.schema)
        _pin(conn, db.schema)
        if conn.execute(
            text("SELECT 1 FROM schema_migrations WHERE version = :v"), {"v": version}
        ).first():
            return False  # another migrator applied it while this one waited
        conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": timeout})
        # The raw driver executes the file as one script; no parameters, so a
        # plpgsql RAISE '%' is not mistaken for a placeholder.
        _raw(conn).execute(body.encode())
        conn.execute(text("SELECT set_config('lock_timeout', '0', true)"))
        conn.execute(text(record), binds)
    return True


def _apply_outside_transaction(
    db: Database, body: str, timeout: str, record: str, binds: dict[str, object]
) -> bool:
    """One statement in autocommit (CREATE INDEX CONCURRENTLY), under a session lock."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        _lock(conn, db.schema, session=True)
        try:
            _pin(conn, db.schema, local=False)
            if conn.execute(
                text("SELECT 1 FROM schema_migrations WHERE version = :v"), {"v": binds["v"]}
            ).first():
                return False
            conn.execute(text("SELECT set_config('lock_timeout', :t, false)"), {"t": timeout})
            try:
                # A CONCURRENTLY build that failed (a lock timeout, say) leaves an INVALID
                # index behind; left there, this attempt's IF NOT EXISTS would skip it and
                # record a broken index as done. Drop such a leftover of this migration first.
                for index in _invalid_indexes(conn, db.schema):
                    if re.search(rf"(?<![\w$]){re.escape(index)}(?![\w$])", body):
                        _raw(conn).execute(
                            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                                sql.Identifier(db.schema, index)
                            )
                        )
                _raw(conn).execute(body.encode())
            finally:
                conn.execute(text("SELECT set_config('lock_timeout', '0', false)"))
            conn.execute(text(record), binds)
            return True
        finally:
            conn.execute(
                text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"),
                {"key": f"reconciler.migrate:{db.schema}"},
            )
            conn.execute(text("RESET search_path"))


def _invalid_indexes(conn: Connection, schema: str) -> set[str]:
    return set(
        conn.execute(
            text(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = :s AND NOT i.indisvalid"
            ),
            {"s": schema},
        ).scalars()
    )


def _lock_holders(db: Database) -> str:
    """Who holds locks on the schema's tables: pid, state, how long, application."""
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT DISTINCT a.pid, a.state, a.application_name,"
                    " extract(epoch FROM now() - a.xact_start) AS age_s"
                    " FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE n.nspname = :s AND l.granted AND l.pid <> pg_backend_pid()"
                    " ORDER BY age_s DESC NULLS LAST LIMIT 3"
                ),
                {"s": db.schema},
            ).all()
    except Exception:
        return ""
    return "; ".join(
        f"pid {r.pid} ({r.state or 'unknown'}"
        + (f", in a transaction for {int(r.age_s)}s" if r.age_s is not None else "")
        + (f", {r.application_name}" if r.application_name else "")
        + ") holds a lock"
        for r in rows
    )


def _refuse_unknown_versions(
    schema: str, done: dict[int, str], files: Sequence[MigrationFile]
) -> None:
    """Refuse a schema holding migrations this build does not have, saying what to do."""
    known = {version for version, _, _ in files}
    unknown = sorted(v for v in done if v not in known)
    if not unknown:
        return
    if max(unknown) > max(known, default=0):
        raise MigrationError(
            f"schema {schema!r} is at version {max(unknown)}, newer than this reconciler "
            "knows; upgrade the reconciler"
        )
    # Versions below the first of this build: a development build from before the
    # schema history was folded into one initial migration. Nothing was released
    # with them, so there is no upgrade path; the schema holds only test data.
    raise MigrationError(
        f"schema {schema!r} was created by an unreleased development build "
        f"(migration version(s) {', '.join(map(str, unknown))} are unknown to this one); "
        f"drop it and migrate again: psql -c 'DROP SCHEMA {quote_ident(schema)} CASCADE' "
        "&& reconciler migrate"
    )


# What a migration after the first must not do to a table that workers use, and the
# online form to use instead. Checked by tests/unit/test_migration_forms.py for every
# migration file; a line ending in "-- offline: <reason>" is exempt (say why).
_OFFLINE = [
    (
        re.compile(r"\bFOREIGN\s+KEY\b(?![^;]*\bNOT\s+VALID\b)", re.I | re.S),
        "a foreign key validated under the lock: add it NOT VALID, then VALIDATE CONSTRAINT "
        "in a later migration",
    ),
    (
        re.compile(r"\bADD\s+CONSTRAINT\b[^;]*\bCHECK\b(?![^;]*\bNOT\s+VALID\b)", re.I | re.S),
        "a CHECK validated under the lock: add it NOT VALID, then VALIDATE CONSTRAINT",
    ),
    (
        re.compile(r"\bCREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)", re.I),
        "an index built under a write lock: CREATE INDEX CONCURRENTLY, alone in a "
        f"'{NO_TRANSACTION}' migration",
    ),
    (
        re.compile(r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b", re.I),
        "a column type change rewrites the table under an exclusive lock: add a new column "
        "and backfill it in batches",
    ),
    (
        re.compile(r"\bSET\s+NOT\s+NULL\b", re.I),
        "SET NOT NULL scans the table under an exclusive lock: add a CHECK (col IS NOT NULL) "
        "NOT VALID, VALIDATE it, then SET NOT NULL",
    ),
    (
        re.compile(r"\bVACUUM\s+FULL\b|\bCLUSTER\b|\bLOCK\s+TABLE\b", re.I),
        "an exclusive lock for as long as the table takes",
    ),
]


def offline_forms(body: str) -> list[str]:
    """The statements of a migration that would hold workers up, each with the online form."""
    kept = "\n".join(
        "" if re.search(r"--\s*offline:\s*\S", line) or line.lstrip().startswith("--") else line
        for line in body.splitlines()
    )
    found = []
    for pattern, advice in _OFFLINE:
        for match in pattern.finditer(kept):
            line = kept.count("\n", 0, match.start()) + 1
            found.append(f"{match.group(0).split()[0]}... (statement near line {line}): {advice}")
    return found


def pending(db: Database) -> list[str]:
    """Migrations not yet applied (empty when the schema is up to date)."""
    with db.engine.connect() as conn:
        exists = conn.execute(
            text("SELECT to_regclass(:t) IS NOT NULL"),
            {"t": f"{quote_ident(db.schema)}.schema_migrations"},
        ).scalar_one()
        done: set[int] = set()
        if exists:
            table = sql.Identifier(db.schema, "schema_migrations")
            done = {
                row[0]
                for row in _raw(conn).execute(sql.SQL("SELECT version FROM {}").format(table))
            }
    return [path.name for version, _, path in migration_files() if version not in done]
