"""Where CI requires PgBouncer, its tests fail instead of skipping when it is missing."""

from __future__ import annotations

import pytest

from tests.conftest import TEST_ENV
from tests.pgbouncer import REQUIRE_ENV, _unavailable


def test_missing_pgbouncer_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RECONCILER_TEST_REQUIRE_PGBOUNCER (or with 0) a missing PgBouncer is a skip."""
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        _unavailable("pgbouncer is not installed")
    monkeypatch.setenv(REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        _unavailable("pgbouncer is not installed")


def test_missing_pgbouncer_fails_where_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECONCILER_TEST_REQUIRE_PGBOUNCER=1 (CI's PostgreSQL 15 pass) turns the skip into a
    failure that names the variable."""
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        _unavailable("pgbouncer is not installed")


def test_the_clean_environment_keeps_the_requirement() -> None:
    """The autouse fixture that drops RECONCILER_* variables keeps this one, or CI's
    requirement would never reach the fixture."""
    assert REQUIRE_ENV in TEST_ENV
