"""Connections: the engine, short transactions with timeouts, and the DB clock.

Every unit of work is a transaction that starts by pinning ``search_path`` to
the reconciler's schema and setting ``lock_timeout`` and
``statement_timeout`` with ``SET LOCAL`` semantics (``set_config(..., true)``).
Nothing is set per session, so the same code works through PgBouncer in
transaction pooling mode, where a session's settings would leak to, or be
lost from, whatever client gets the server connection next.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.datetime import TimestampLoader, TimestamptzLoader
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from reconciler.logs import get_logger

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "normalise_url",
    "quote_ident",
    "redact",
]


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message is safe to print (no password)."""


def normalise_url(raw: str) -> URL:
    """Accept postgres://, postgresql:// or postgresql+psycopg:// and use psycopg 3."""
    try:
        url = make_url(raw.strip())
    except ArgumentError as exc:
        raise ValueError(
            "cannot read the database URL; write it like postgresql://user:password@host:5432/db"
        ) from exc
    if url.get_backend_name() not in ("postgres", "postgresql"):
        raise ValueError(f"the database URL must be postgresql://..., not {url.drivername}://...")
    return url.set(drivername="postgresql+psycopg")


def redact(url: URL) -> str:
    """The URL as it may be shown to people and logs: password replaced by ***."""
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def quote_ident(name: str) -> str:
    """Quote an identifier the way the driver does (for search_path values)."""
    return sql.Identifier(name).as_string(None)


class _InfiniteTimestamptzLoader(TimestamptzLoader):
    """timestamptz, with PostgreSQL's ``infinity`` and ``-infinity`` read as the largest and
    smallest datetimes instead of an error: a queue table the reconciler does not own (a
    profile's) may hold them, and one such row must not make a command fail.
    psycopg's documented way (Adapting basic Python types: dates and times)."""

    def load(self, data: Any) -> datetime:
        infinite = _INFINITE.get(bytes(data))
        if infinite is not None:
            return infinite.replace(tzinfo=UTC)
        value: datetime = super().load(data)
        return value


class _InfiniteTimestampLoader(TimestampLoader):
    """timestamp (without time zone), the same way."""

    def load(self, data: Any) -> datetime:
        infinite = _INFINITE.get(bytes(data))
        if infinite is not None:
            return infinite
        value: datetime = super().load(data)
        return value


_INFINITE = {b"infinity": datetime.max, b"-infinity": datetime.min}


def _load_infinite_timestamps(dbapi_connection: Any, record: Any) -> None:
    if isinstance(dbapi_connection, psycopg.Connection):
        dbapi_connection.adapters.register_loader("timestamptz", _InfiniteTimestamptzLoader)
        dbapi_connection.adapters.register_loader("timestamp", _InfiniteTimestampLoader)


# How long past its statement_timeout a transaction may go before the client
# gives up on the server: the server cancels a statement at its timeout and
# answers at once, so silence this long means the answer is not coming.
DEADLINE_MARGIN = timedelta(seconds=5)

_log = get_logger("reconciler.db")


def _sever(raw: Any) -> None:
    """Shut down a connection's socket, so a read blocked on it fails at once."""
    with contextlib.suppress(Exception):
        dup = socket.socket(fileno=os.dup(raw.pgconn.socket))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


def _ms(value: timedelta) -> str:
    return f"{max(1, round(value.total_seconds() * 1000))}ms"


@dataclass
class Database:
    """An engine plus the schema and timeouts every transaction uses."""

    engine: Engine
    schema: str
    lock_timeout: timedelta
    statement_timeout: timedelta
    # Every driver connection the engine opened, for the client-side deadline.
    _open: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet, repr=False)

    def __post_init__(self) -> None:
        event.listen(self.engine, "connect", lambda raw, _record: self._open.add(raw))

    @classmethod
    def connect(
        cls,
        url: URL,
        *,
        schema: str,
        lock_timeout: timedelta,
        statement_timeout: timedelta,
        application_name: str = "reconciler",
        pool_size: int = 2,
    ) -> Database:
        connect_args: dict[str, Any] = {
            "application_name": application_name,
            "connect_timeout": 10,
            # Notice a dead peer (a black-holed connection) instead of hanging forever.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            # No server-side prepared statements: psycopg prepares a query after five
            # runs, and behind PgBouncer in transaction pooling mode (before 1.21) the
            # next transaction may land on a server connection that never saw it
            # ("prepared statement _pg3_1 does not exist"). Our statements are cheap
            # to plan; being poolable is worth more.
            "prepare_threshold": None,
        }
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2,
            pool_pre_ping=True,
            pool_recycle=1800,
            # Bound values never appear in SQLAlchemy's log lines (at debug level)
            # or error messages: they may be secrets, such as a claim token.
            hide_parameters=True,
            connect_args=connect_args,
        )
        event.listen(engine, "connect", _load_infinite_timestamps)
        return cls(engine, schema, lock_timeout, statement_timeout)

    @property
    def qualified_schema(self) -> str:
        return quote_ident(self.schema)

    @contextmanager
    def deadline(self, statement_timeout: timedelta | None = None) -> Iterator[None]:
        """Give up on the server if the block outlasts its statement timeout (plus a margin).

        The server enforces statement_timeout, and TCP keepalives notice a dead
        peer; neither helps when something in between (a proxy, a firewall
        that drops packets) keeps the connection open and silent: the answer
        never comes and a read blocks forever. Past the deadline every socket
        of this engine is shut down, so the blocked read fails, the batch
        rolls back, and the pool reconnects on next use.
        """
        limit = (statement_timeout or self.statement_timeout) + DEADLINE_MARGIN
        timer = threading.Timer(limit.total_seconds(), self._give_up, args=(limit,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _give_up(self, limit: timedelta) -> None:
        connections = list(self._open)
        _log.warning(
            "database.deadline_exceeded",
            limit_s=limit.total_seconds(),
            connections=len(connections),
        )
        for raw in connections:
            _sever(raw)

    def ping(self) -> None:
        """Connect once, or raise DatabaseUnavailable with a printable message."""
        try:
            with self.deadline(), self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to {redact(self.engine.url)}: {first_line(exc.orig)}"
            ) from None

    @contextmanager
    def transaction(
        self,
        *,
        statement_timeout: timedelta | None = None,
        rollback: bool = False,
    ) -> Iterator[Connection]:
        """A short transaction with pinned search_path and this database's timeouts.

        ``rollback=True`` undoes everything at the end (dry runs).
        """
        with (
            self.deadline(statement_timeout),
            self.engine.connect() as conn,
            conn.begin() as tx,
        ):
            self.pin(conn, statement_timeout=statement_timeout)
            yield conn
            if rollback:
                tx.rollback()

    def pin(self, conn: Connection, *, statement_timeout: timedelta | None = None) -> None:
        """Set search_path and timeouts for the current transaction only."""
        conn.execute(
            text(
                "SELECT set_config('search_path', :sp, true),"
                " set_config('lock_timeout', :lt, true),"
                " set_config('statement_timeout', :st, true)"
            ),
            {
                "sp": self.qualified_schema,
                "lt": _ms(self.lock_timeout),
                "st": _ms(statement_timeout or self.statement_timeout),
            },
        )

    def rows(self, sql: str, binds: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every row of ``sql`` (a named query, e.g. ``query("ops/pause", "list")``) as a
        dict, read in one short transaction."""
        with self.transaction() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql), dict(binds or {}))]

    def now(self) -> datetime:
        """The database's clock: the one clock every decision follows."""
        with self.deadline(), self.engine.connect() as conn:
            value = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
        assert isinstance(value, datetime)
        return value

    @contextmanager
    def autocommit(self) -> Iterator[psycopg.Connection[Any]]:
        """A raw psycopg connection in autocommit mode (VACUUM cannot run in a transaction).

        Nothing is set on the session: callers qualify names with the schema.
        """
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            try:
                yield raw
            except psycopg.OperationalError:
                # The server dropped it (restart, pg_terminate_backend): throw it
                # away, rather than have the pool try to reset a dead connection
                # and log a traceback doing so.
                if raw.closed or raw.broken:
                    conn.invalidate()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def first_line(error: BaseException | None) -> str:
    """The first line of a driver error, which carries the useful part."""
    if error is None:
        return "unknown error"
    message = str(error).strip().splitlines()
    return message[0] if message else type(error).__name__


def is_connection_error(exc: BaseException) -> bool:
    """True when the error means the connection was lost, not that the SQL was wrong."""
    return (isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)) or isinstance(
        exc, OperationalError
    )
