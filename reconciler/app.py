"""From settings to a connected :class:`~reconciler.db.Database`: the one place that decides
which server the reconciler talks to."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.db import Database, normalise_url, redact
from reconciler.embedded import embedded_url
from reconciler.migrate import migrate, pending
from reconciler.settings import Settings

__all__ = ["SchemaBehind", "Target", "ensure_schema", "open_database"]


class SchemaBehind(Exception):
    """The schema is missing or behind this build; the message says what to run."""


@dataclass(frozen=True)
class Target:
    """Where the database is, in words safe to print."""

    url: str  # password redacted
    embedded: bool
    data_dir: str | None = None

    def describe(self) -> str:
        if self.embedded:
            return f"embedded PostgreSQL in {self.data_dir}"
        return self.url


def open_database(
    settings: Settings, *, application_name: str = "reconciler", pool_size: int = 2
) -> tuple[Database, Target]:
    """Connect as configured. Raises ValueError (bad URL), EmbeddedUnavailable."""
    if settings.database_url is not None:
        url = normalise_url(settings.database_url.get_secret_value())
        target = Target(url=redact(url), embedded=False)
    else:
        url = normalise_url(embedded_url(settings.embedded_data_dir))
        target = Target(url=redact(url), embedded=True, data_dir=str(settings.embedded_data_dir))
    db = Database.connect(
        url,
        schema=settings.schema_name,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
        application_name=application_name,
        pool_size=pool_size,
    )
    return db, target


def ensure_schema(db: Database, target: Target) -> tuple[str, ...]:
    """The one schema gate of the CLI and the daemon: a current schema passes; the
    embedded server's is created or upgraded (what was applied is returned); any other
    schema that is missing or behind raises SchemaBehind."""
    missing = pending(db)
    if not missing:
        return ()
    if target.embedded:
        return migrate(db).applied
    raise SchemaBehind(
        f"schema {db.schema!r} is not up to date ({len(missing)} migration(s) pending); "
        "run: reconciler migrate"
    )
