"""The partitioned ledger: ``migrate`` turns ``job_events`` into a table range-partitioned by time.

Opt-in (``RECONCILER_EVENTS_PARTITIONING=day|month``; the default ``none``
leaves the plain table alone). With it, retention of the ledger is dropping a
whole partition (the ``partitions`` task) instead of deleting events row by
row (``purge`` then deletes only the jobs).

The conversion is online: ``sql/partitions.sql`` says what each step locks.
The old table becomes the first partition, ``job_events_history``, holding
every event before a cutover at least a day ahead; its CHECK is validated
first so that ATTACH does not scan it under an exclusive lock. Safe to re-run
at any time: each step finds its work done and does nothing; on an already
partitioned ledger only the partitions ahead are topped up. Migrators of one
schema serialise on the advisory lock ``migrate`` uses.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import errors
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from reconciler.db import Database
from reconciler.durations import format_duration
from reconciler.logs import get_logger
from reconciler.migrate import MigrationBlocked
from reconciler.sqlfiles import query

__all__ = ["Layout", "PartitionResult", "layout", "partition_events"]

log = get_logger("reconciler.partitions")

Unit = Literal["day", "month"]
T = TypeVar("T")

# The conversion's CHECK refuses events from its cutover on until the swap; one whose
# cutover is closer than this is replaced by a later one before going on.
_CUTOVER_MARGIN = timedelta(hours=1)
_MAX_PAUSE_S = 30.0


@dataclass(frozen=True)
class Layout:
    """``job_events`` as it is: partitioned or not, and a conversion's cutover if one is
    under way (its CHECK exists)."""

    partitioned: bool
    cutover: datetime | None


@dataclass(frozen=True)
class PartitionResult:
    converted: bool  # this call turned the plain table into a partitioned one
    cutover: datetime | None
    created: tuple[str, ...]  # partitions created ahead
    lock_retries: int = 0


def layout(conn: Connection) -> Layout:
    """The ledger's layout, read in ``conn``'s transaction (its search_path pinned)."""
    row = conn.execute(text(query("partitions", "layout"))).one()
    return Layout(row.kind == "p", row.cutover)


def _raw(conn: Connection) -> psycopg.Connection[Any]:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


@contextmanager
def _tx(db: Database, lock_timeout: timedelta) -> Iterator[Connection]:
    """A transaction with the schema pinned, ``lock_timeout``, and no statement timeout
    (VALIDATE reads the whole table; it blocks no worker while it does)."""
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "SELECT set_config('search_path', :sp, true),"
                " set_config('lock_timeout', :lt, true),"
                " set_config('statement_timeout', '0', true)"
            ),
            {"sp": f"{db.qualified_schema}, pg_temp", "lt": _ms(lock_timeout)},
        )
        yield conn


def _ms(value: timedelta) -> str:
    return f"{max(1, int(value.total_seconds() * 1000))}ms"


def _lock_error(exc: BaseException) -> bool:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(orig, errors.LockNotAvailable | errors.DeadlockDetected)


def partition_events(
    db: Database,
    *,
    unit: Unit,
    ahead: timedelta,
    lock_timeout: timedelta = timedelta(seconds=1),
    deadline: timedelta = timedelta(minutes=10),
    sleep: Callable[[float], None] = time.sleep,
) -> PartitionResult:
    """Make ``job_events`` partitioned by ``unit`` (if it is not yet) with partitions at
    least ``ahead`` of now. Each statement waits at most ``lock_timeout`` for its locks,
    then the step is tried again after a growing pause, until ``deadline``
    (MigrationBlocked, the conversion's CHECK removed again)."""
    started = time.monotonic()
    retries = 0

    def retrying(step: str, fn: Callable[[], T]) -> T:
        nonlocal retries
        while True:
            try:
                return fn()
            except (DBAPIError, psycopg.Error) as exc:
                if not _lock_error(exc):
                    raise
                if time.monotonic() - started >= deadline.total_seconds():
                    raise MigrationBlocked(
                        f"partitioning job_events: {step} could not take its locks within "
                        f"{format_duration(deadline)} (RECONCILER_MIGRATE_DEADLINE); workers "
                        "were never blocked for longer than RECONCILER_MIGRATE_LOCK_TIMEOUT. "
                        "Run reconciler migrate again later (it resumes where it stopped)"
                    ) from None
                retries += 1
                pause = min(lock_timeout.total_seconds() * 2**retries, _MAX_PAUSE_S)
                pause *= random.uniform(0.5, 1.0)
                log.warning("partitions.lock_timeout", step=step, attempt=retries, retry_in_s=pause)
                sleep(pause)

    with _migrator_lock(db):
        with _tx(db, lock_timeout) as conn:
            current = layout(conn)
            if not current.partitioned:
                _raw(conn).execute(query("partitions", "functions").encode())
        if current.partitioned:
            created = retrying("ensure", lambda: _ensure(db, lock_timeout, unit, ahead))
            return PartitionResult(False, None, created, retries)
        cutover = retrying("bound", lambda: _bound(db, lock_timeout, unit, current.cutover))
        try:
            retrying("validate", lambda: _validate(db, lock_timeout))
            retrying("unique", lambda: _unique(db, lock_timeout))
            retrying("swap", lambda: _swap(db, lock_timeout, cutover))
        except BaseException:
            _unbound(db, lock_timeout)
            raise
        # Apart from the swap, so its ACCESS EXCLUSIVE lasts no longer than the swap:
        # ATTACH needs only SHARE UPDATE EXCLUSIVE, and the history partition takes every
        # event until the cutover, a day away (should this stop here, the next migrate or
        # the partitions task makes them).
        created = retrying("ensure", lambda: _ensure(db, lock_timeout, unit, ahead))
    log.info(
        "partitions.converted",
        schema=db.schema,
        unit=unit,
        cutover=cutover.isoformat(),
        created=list(created),
    )
    return PartitionResult(True, cutover, created, retries)


@contextmanager
def _migrator_lock(db: Database) -> Iterator[None]:
    """The session advisory lock of `migrate` for this schema: one migrator at a time."""
    key = {"key": f"reconciler.migrate:{db.schema}"}
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT pg_advisory_lock(hashtextextended(:key, 0))"), key)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), key)


def _bound(db: Database, lock_timeout: timedelta, unit: Unit, found: datetime | None) -> datetime:
    """Step 2: the CHECK (at < cutover); one left by an interrupted run is kept while its
    cutover is still far enough ahead, else replaced."""
    with _tx(db, lock_timeout) as conn:
        row = conn.execute(text(query("partitions", "cutover")), {"unit": unit}).one()
        if found is not None and found - row.now >= _CUTOVER_MARGIN:
            return found
        if found is not None:
            conn.execute(text(query("partitions", "unbound")))
        conn.execute(text(query("partitions", "bound")), {"cutover": row.cutover})
        cutover: datetime = row.cutover
        return cutover


def _validate(db: Database, lock_timeout: timedelta) -> None:
    """Step 3: a full read under SHARE UPDATE EXCLUSIVE (workers keep writing)."""
    with _tx(db, lock_timeout) as conn:
        conn.execute(text(query("partitions", "validate")))


def _unique(db: Database, lock_timeout: timedelta) -> None:
    """Step 4: the (id, at) unique index, built CONCURRENTLY; an invalid leftover of an
    interrupted build is dropped first."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(
            text(
                "SELECT set_config('search_path', :sp, false),"
                " set_config('lock_timeout', :lt, false),"
                " set_config('statement_timeout', '0', false)"
            ),
            {"sp": f"{db.qualified_schema}, pg_temp", "lt": _ms(lock_timeout)},
        )
        try:
            valid = conn.execute(text(query("partitions", "unique_valid"))).scalar()
            if valid is False:
                conn.execute(text(query("partitions", "drop_invalid_unique")))
            conn.execute(text(query("partitions", "unique")))
        finally:
            conn.execute(text("RESET search_path; RESET lock_timeout; RESET statement_timeout"))


def _swap(db: Database, lock_timeout: timedelta, cutover: datetime) -> None:
    """Step 5, one short transaction: the partitioned table, the old one attached."""
    with _tx(db, lock_timeout) as conn:
        conn.execute(text(query("partitions", "swap")), {"cutover": cutover})


def _ensure(db: Database, lock_timeout: timedelta, unit: Unit, ahead: timedelta) -> tuple[str, ...]:
    with _tx(db, lock_timeout) as conn:
        return _ensure_in(conn, unit, ahead)


def _ensure_in(conn: Connection, unit: Unit, ahead: timedelta) -> tuple[str, ...]:
    now = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
    rows = conn.execute(text(query("partitions", "ensure")), {"upto": now + ahead, "unit": unit})
    return tuple(row.name for row in rows)


def _unbound(db: Database, lock_timeout: timedelta) -> None:
    """Remove the conversion's CHECK after a failed step (best effort: a CHECK left
    behind would refuse every event from its cutover on; the next migrate removes or
    reuses it)."""
    try:
        with _tx(db, lock_timeout) as conn:
            if not layout(conn).partitioned:
                conn.execute(text(query("partitions", "unbound")))
    except Exception as exc:
        log.warning("partitions.unbound_failed", error=str(exc).splitlines()[0])
