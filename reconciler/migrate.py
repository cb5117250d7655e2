"""``reconciler migrate``: create or upgrade the schema, idempotently.

All pending migrations run in one transaction under a transaction-level
advisory lock keyed by the schema name, so two processes migrating at once
serialise: the second waits, then finds nothing left to do. A migration file
that changed after it was applied is refused (its checksum is recorded).
Safe to re-run at any time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database, quote_ident
from reconciler.sqlfiles import migration_files

__all__ = ["MigrationError", "MigrationResult", "migrate", "pending"]


class MigrationError(Exception):
    """The schema cannot be brought up to date; the message says why."""


@dataclass(frozen=True)
class MigrationResult:
    schema: str
    applied: tuple[str, ...]
    current_version: int


def _checksum(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def migrate(db: Database) -> MigrationResult:
    """Apply every pending migration; return what was applied."""
    applied: list[str] = []
    schema = quote_ident(db.schema)
    with db.engine.begin() as conn:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"reconciler.migrate:{db.schema}"},
        )
        # The identifier is composed by psycopg and sent as is: through SQLAlchemy, a '%'
        # or ':name' in the schema's name would be taken for a placeholder.
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(db.schema)))
        # pg_temp last: functions capture this path (SET search_path FROM CURRENT), and
        # unlisted, pg_temp would come first, so a caller's temp table "jobs" would win.
        conn.execute(
            text("SELECT set_config('search_path', :sp, true)"), {"sp": f"{schema}, pg_temp"}
        )
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row.version: row.checksum
            for row in conn.execute(text("SELECT version, checksum FROM schema_migrations"))
        }
        files = migration_files()
        _refuse_unknown_versions(db.schema, done, files)
        current = max(done, default=0)
        for version, name, path in files:
            body = path.read_text(encoding="utf-8")
            if version in done:
                if done[version] != _checksum(body):
                    raise MigrationError(
                        f"migration {path.name} changed after it was applied to schema "
                        f"{db.schema!r}; restore the file and add a new migration instead"
                    )
                continue
            # The raw driver executes the file as one script; no parameters, so a
            # plpgsql RAISE '%' is not mistaken for a placeholder.
            raw.execute(body)
            conn.execute(
                text("INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                {"v": version, "n": name, "c": _checksum(body)},
            )
            applied.append(path.name)
            current = version
    return MigrationResult(db.schema, tuple(applied), current)


def _refuse_unknown_versions(
    schema: str, done: dict[int, str], files: list[tuple[int, str, Path]]
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


def pending(db: Database) -> list[str]:
    """Migrations not yet applied (empty when the schema is up to date)."""
    with db.engine.connect() as conn:
        exists = conn.execute(
            text("SELECT to_regclass(:t) IS NOT NULL"),
            {"t": f"{quote_ident(db.schema)}.schema_migrations"},
        ).scalar_one()
        done: set[int] = set()
        if exists:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            table = sql.Identifier(db.schema, "schema_migrations")
            done = {row[0] for row in raw.execute(sql.SQL("SELECT version FROM {}").format(table))}
    return [path.name for version, _, path in migration_files() if version not in done]
