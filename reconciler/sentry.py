"""Sentry: failed runs reported with the task as a tag, and Cron check-ins.

Only when ``RECONCILER_SENTRY_DSN`` is set. Every scheduled run sends an
``in_progress`` check-in once it holds its task's lease and has recorded the
run, then ``ok`` or ``error`` with its duration; a run that cannot start
(the database is down) sends ``error``. Each check-in carries the monitor's
config (its schedule from the schedule file), so Sentry creates the monitor
and raises an alert when a task stops checking in: the one failure a log
cannot show, because nothing is logged.

A replica that finds the task running elsewhere sends nothing: one check-in
per run, whichever replica ran it.

Privacy: ``send_default_pii`` is off (the default), local variables are not attached to
stack traces (a frame may hold the database URL), and stdlib log lines are
breadcrumbs only; events are sent explicitly, so each carries its task tag.
Events and breadcrumbs pass through the log pipeline's redactor: the database
password and the DSN are masked there too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import sentry_sdk
from sentry_sdk.crons import capture_checkin
from sentry_sdk.integrations.logging import LoggingIntegration

from reconciler import __version__
from reconciler.logs import Redactor
from reconciler.schedule import Entry
from reconciler.settings import Settings

if TYPE_CHECKING:
    from sentry_sdk._types import MonitorConfig

__all__ = ["CronMonitor", "init_sentry", "monitor_slug", "report_failure"]


def init_sentry(settings: Settings, *, transport: Any = None) -> bool:
    """Start the Sentry client when a DSN is configured; True if it did.

    ``transport`` replaces the HTTP transport (tests record envelopes with it).
    """
    if settings.sentry_dsn is None:
        return False
    redact = Redactor(settings.secrets())

    def scrub(payload: Any, _hint: Any) -> Any:
        return redact.scrub(payload)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        release=f"reconciler@{__version__}",
        environment=settings.sentry_environment,
        # send_default_pii stays unset, which means off: newer 2.x releases deprecate
        # passing it, and its successor (data_collection) unset keeps PII off too.
        include_local_variables=False,
        # Only what we configure: no automatic SQL breadcrumbs with query text.
        auto_enabling_integrations=False,
        integrations=[LoggingIntegration(event_level=None)],
        transport=transport,
        # The log pipeline's redactor, once more: no secret in an event or breadcrumb.
        before_send=scrub,
        before_breadcrumb=scrub,
    )
    return True


def monitor_slug(task: str) -> str:
    """Sentry's monitor for a task (``mark-stale``, or ``mark-stale@procrastinate`` for a
    profile's); Sentry's environment separates deployments. A slug holds lower-case
    letters, digits, '-' and '_' only: anything else becomes '-'."""
    return "reconciler-" + re.sub(r"[^a-z0-9_-]", "-", task.lower())


def report_failure(task: str, message: str, *, run_id: int | None = None) -> None:
    """One Sentry event for a failed run, tagged with its task."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("task", task)
        if run_id is not None:
            scope.set_tag("run_id", str(run_id))
        sentry_sdk.capture_message(f"{task}: {message}", level="error")


def report_exception(task: str, exc: BaseException) -> None:
    """An unexpected exception in the daemon, tagged with its task."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("task", task)
        sentry_sdk.capture_exception(exc)


class CronMonitor:
    """Check-ins of one run of a scheduled task."""

    def __init__(self, entry: Entry, max_runtime: timedelta) -> None:
        self.slug = monitor_slug(entry.key)
        self.config = cast("MonitorConfig", entry.monitor_config(max_runtime))
        self.check_in_id: str | None = None

    def started(self, run_id: int) -> None:
        self.check_in_id = capture_checkin(
            monitor_slug=self.slug, status="in_progress", monitor_config=self.config
        )

    def finished(self, ok: bool, duration: timedelta) -> None:
        capture_checkin(
            monitor_slug=self.slug,
            check_in_id=self.check_in_id,
            status="ok" if ok else "error",
            duration=duration.total_seconds(),
            monitor_config=self.config,
        )


@contextmanager
def flushed(enabled: bool) -> Iterator[None]:
    """Flush what is queued for Sentry on the way out (at most 5 s)."""
    try:
        yield
    finally:
        if enabled:
            sentry_sdk.flush(timeout=5)
