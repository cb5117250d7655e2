"""The daemon's settings: defaults pinned, and the lease must outlive a batch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import SecretStr, ValidationError

from reconciler.settings import Settings, describe_error


def test_daemon_defaults_are_pinned() -> None:
    """Changing one of these is a decision: update the README with its reason."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.lease_ttl == timedelta(seconds=60)
    assert settings.shutdown_grace == timedelta(seconds=30)
    assert settings.retry_max_delay == timedelta(seconds=60)
    assert settings.schedule_file is None
    assert settings.sentry_dsn is None and settings.sentry_environment is None


def test_lease_shorter_than_two_statement_timeouts_is_refused() -> None:
    """One line naming both variables."""
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, lease_ttl="20s")  # type: ignore[call-arg,arg-type]
    assert describe_error(caught.value) == (
        "configuration error: RECONCILER_LEASE_TTL (20s) must be at least twice "
        "RECONCILER_STATEMENT_TIMEOUT (15s), or a slow batch could outlive its task's lease"
    )


def test_secrets_lists_the_password_and_the_dsn() -> None:
    """What the log redactor is told never to print."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr("postgresql://app:p%40ss@db/q"),
        sentry_dsn=SecretStr("https://key123@o1.ingest.sentry.io/9"),
    )
    found = settings.secrets()
    assert {"p@ss", "p%40ss", "key123", "https://key123@o1.ingest.sentry.io/9"} <= set(found)
