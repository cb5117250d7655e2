"""Settings: every default, reading the environment, and one clear line per bad value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from reconciler.settings import Settings, describe_error


def _settings(**values: Any) -> Settings:
    """Settings from the (monkeypatched) environment and ``values``, never from a .env file."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _error_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, SettingsError)) as raised:
        _settings()
    error = raised.value
    assert isinstance(error, ValidationError | SettingsError)
    return describe_error(error)


def test_every_default_is_pinned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every setting's default, as documented: a new or changed default must change this test."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    defaults = {
        name: value
        for name, value in _settings().model_dump().items()
        # the operator's settings are pinned in tests/unit/test_ops_parts.py
        if not name.startswith(("ops_", "check_"))
    }
    assert defaults == {
        "database_url": None,
        "schema_name": "reconciler",
        "embedded_data_dir": tmp_path / "reconciler" / "pgdata",
        "heartbeat_timeout": timedelta(minutes=5),
        "heartbeat_timeout_overrides": {},
        "batch_size": 1000,
        "batch_target": timedelta(milliseconds=100),
        "batch_min": 100,
        "batch_max": 10_000,
        "batch_pause": 4.0,
        "run_time_budget": timedelta(seconds=20),
        "lock_timeout": timedelta(seconds=1),
        "migrate_lock_timeout": timedelta(seconds=1),
        "migrate_deadline": timedelta(minutes=10),
        "statement_timeout": timedelta(seconds=15),
        "retention_succeeded": timedelta(days=30),
        "retention_cancelled": timedelta(days=30),
        "retention_dead": timedelta(days=90),
        "retention_runs": timedelta(days=30),
        "lease_ttl": timedelta(seconds=60),
        "events_partitioning": "none",
        "events_partitions_ahead": timedelta(days=7),
        "retention_events": timedelta(days=90),
        "schedule_file": None,
        "profiles": "native",
        "shutdown_grace": timedelta(seconds=30),
        "retry_max_delay": timedelta(seconds=60),
        "sentry_dsn": None,
        "sentry_environment": None,
        "sentry_dead_letter_events": 20,
        "http_addr": None,
        "web_addr": "127.0.0.1:8080",
        "web_token": None,
        "web_user_header": None,
        "latency_targets": {
            "critical": timedelta(seconds=1),
            "high": timedelta(seconds=5),
            "default": timedelta(seconds=30),
            "low": timedelta(minutes=2),
        },
        "log_format": "auto",
        "log_level": "info",
    }


def test_embedded_dir_defaults_under_the_home_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without XDG_DATA_HOME the embedded data lives in ~/.local/share/reconciler/pgdata."""
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert _settings().embedded_data_dir == tmp_path / ".local/share/reconciler/pgdata"


def test_retention_per_status() -> None:
    """retention() maps each purgeable status to its setting."""
    assert _settings(retention_dead=timedelta(days=7)).retention() == {
        "succeeded": timedelta(days=30),
        "cancelled": timedelta(days=30),
        "dead": timedelta(days=7),
    }


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECONCILER_* variables set durations, overrides (JSON), numbers, schema and URL."""
    env = {
        "RECONCILER_HEARTBEAT_TIMEOUT": "90s",
        "RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES": '{"queue:media": "15m", "kind:export": "1h"}',
        "RECONCILER_BATCH_SIZE": "50",
        "RECONCILER_RUN_TIME_BUDGET": "1m30s",
        "RECONCILER_LOCK_TIMEOUT": "250ms",
        "RECONCILER_RETENTION_DEAD": "2w",
        "RECONCILER_SCHEMA": "queue ops",
        "RECONCILER_DATABASE_URL": "postgresql://app:s3cret@db:5432/app",
        "RECONCILER_LOG_FORMAT": "json",
        "RECONCILER_LOG_LEVEL": "debug",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = _settings()

    assert settings.heartbeat_timeout == timedelta(seconds=90)
    assert settings.heartbeat_timeout_overrides == {
        "queue:media": timedelta(minutes=15),
        "kind:export": timedelta(hours=1),
    }
    assert settings.batch_size == 50
    assert settings.run_time_budget == timedelta(seconds=90)
    assert settings.lock_timeout == timedelta(milliseconds=250)
    assert settings.retention_dead == timedelta(weeks=2)
    assert settings.schema_name == "queue ops"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://app:s3cret@db:5432/app"
    assert "s3cret" not in repr(settings)
    assert (settings.log_format, settings.log_level) == ("json", "debug")


def test_keyword_values_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values passed in (CLI flags, tests) override RECONCILER_* variables."""
    monkeypatch.setenv("RECONCILER_BATCH_SIZE", "50")

    assert _settings(batch_size=7).batch_size == 7


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("RECONCILER_HEARTBEAT_TIMEOUT", "0s", "must be longer than zero"),
        ("RECONCILER_BATCH_TARGET", "0ms", "must be longer than zero"),
        ("RECONCILER_BATCH_PAUSE", "-1", "greater than or equal to 0"),
        ("RECONCILER_BATCH_PAUSE", "nan", "finite number"),
        ("RECONCILER_BATCH_MAX", "0", "whole number from 1"),
        ("RECONCILER_PROFILES", "native,,x.toml", "separated by commas"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "-5m", "cannot read duration '-5m'"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "five minutes", "cannot read duration"),
        ("RECONCILER_HEARTBEAT_TIMEOUT", "300", "bare number"),
        ("RECONCILER_LOCK_TIMEOUT", "0ms", "must be longer than zero"),
        ("RECONCILER_STATEMENT_TIMEOUT", "15", "bare number"),
        ("RECONCILER_RUN_TIME_BUDGET", "0s", "must be longer than zero"),
        ("RECONCILER_RETENTION_SUCCEEDED", "30 days", "cannot read duration"),
        ("RECONCILER_RETENTION_CANCELLED", "0d", "must be longer than zero"),
        ("RECONCILER_RETENTION_DEAD", "9999d", "longer than 3650d"),
        ("RECONCILER_RETENTION_RUNS", "soon", "cannot read duration"),
        ("RECONCILER_BATCH_SIZE", "0", "must be a whole number from 1 to 100000"),
        ("RECONCILER_BATCH_SIZE", "many", "valid integer"),
        ("RECONCILER_BATCH_SIZE", "1000000", "must be a whole number from 1 to 100000"),
        ("RECONCILER_SCHEMA", "Reconciler", "upper-case"),
        ("RECONCILER_SCHEMA", "x" * 64, "1 to 63 bytes"),
        ("RECONCILER_LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
        ("RECONCILER_LOG_LEVEL", "loud", "'debug', 'info', 'warning' or 'error'"),
        ("RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES", '{"tenant:a": "1m"}', "'queue:NAME'"),
        ("RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES", '{"queue:": "1m"}', "'queue:NAME'"),
        ("RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES", '{"kind:a": "0s"}', "longer than zero"),
        ("RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES", '{"kind:a": "soon"}', "(key kind:a)"),
        ("RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES", "queue:media=15m", "not valid JSON"),
        # Hostile numbers: a NaN threshold never compares true, inf never trips.
        ("RECONCILER_CHECK_FAILURE_RATE_WARNING", "nan", "finite number"),
        ("RECONCILER_CHECK_FAILURE_RATE_CRITICAL", "-inf", "finite number"),
        ("RECONCILER_CHECK_LATENCY_CRITICAL_FACTOR", "inf", "finite number"),
        ("RECONCILER_CHECK_LATENCY_CRITICAL_FACTOR", "1e999", "finite number"),
        ("RECONCILER_LOCK_TIMEOUT", "nan", "cannot read duration"),
        ("RECONCILER_CHECK_WINDOW", "1e400s", "cannot read duration"),
        ("RECONCILER_CHECK_WINDOW", "99999999999999d", "longer than 3650d"),
        ("RECONCILER_MIGRATE_DEADLINE", "0s", "must be longer than zero"),
        ("RECONCILER_BATCH_SIZE", "99999999999999999999999", "from 1 to 100000"),
        ("RECONCILER_CHECK_BACKLOG_WARNING", "-1", "greater than or equal to 1"),
        ("RECONCILER_LATENCY_TARGETS", '{"bulk": "1h"}', "not a priority with a target"),
        ("RECONCILER_LATENCY_TARGETS", '{"high": "0s"}', "longer than zero"),
        ("RECONCILER_EVENTS_PARTITIONING", "week", "'none', 'day' or 'month'"),
        ("RECONCILER_EVENTS_PARTITIONS_AHEAD", "0s", "must be longer than zero"),
        ("RECONCILER_RETENTION_EVENTS", "12h", "must be at least 1d"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    """Each bad value gives one 'configuration error: RECONCILER_X: ...' line saying why."""
    line = _error_line(monkeypatch, {name: value})

    assert line.startswith(f"configuration error: {name}")
    assert says in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("heartbeat_timeout", timedelta(seconds=-1), "must be longer than zero"),
        ("heartbeat_timeout", 300, "bare number"),
        ("retention_runs", timedelta(0), "must be longer than zero"),
        ("heartbeat_timeout_overrides", {"queue:a": timedelta(seconds=-1)}, "longer than zero"),
    ],
)
def test_bad_keyword_value_names_the_variable(field: str, value: object, says: str) -> None:
    """Values passed in are checked the same way, and described by their variable's name."""
    with pytest.raises(ValidationError) as raised:
        _settings(**{field: value})

    line = describe_error(raised.value)
    assert line.startswith(f"configuration error: RECONCILER_{field.upper()}")
    assert says in line


def test_bad_url_never_shows_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting next to a URL with a password: the error line does not contain it."""
    monkeypatch.setenv("RECONCILER_DATABASE_URL", "postgresql://app:s3cret@db/app")

    line = _error_line(monkeypatch, {"RECONCILER_BATCH_SIZE": "0"})

    assert "s3cret" not in line


def test_the_smallest_batch_may_not_exceed_the_largest() -> None:
    with pytest.raises(ValidationError) as raised:
        _settings(batch_min=2000, batch_max=1000)
    assert "RECONCILER_BATCH_MAX (1000) must be at least RECONCILER_BATCH_MIN (2000)" in str(
        raised.value
    )


def test_the_first_batch_may_not_exceed_the_largest() -> None:
    with pytest.raises(ValidationError) as raised:
        _settings(batch_size=5000, batch_max=1000)
    assert "RECONCILER_BATCH_MAX (1000) must be at least RECONCILER_BATCH_SIZE (5000)" in str(
        raised.value
    )
