"""``reconciler daemon``: every task on its schedule, for months, unattended.

An APScheduler 3 ``BackgroundScheduler`` fires each enabled entry of the
schedule file; a firing calls :func:`reconciler.runner.run_task`, the same
function as ``reconciler run``. APScheduler keeps one run per task in this
process (``max_instances=1``) and folds missed firings into one
(``coalesce``); the task's lease keeps one run per task across processes.
First runs of interval tasks are staggered and every firing has a little
jitter, so replicas started together do not fire together.

Faults: nothing a task does stops the daemon. A run that fails (the
database restarted, a connection was killed, a lock timed out) is logged and
retried after 1 s, 2 s, 4 s ... up to ``RECONCILER_RETRY_MAX_DELAY`` (a cron
task five times, then at its next scheduled time); the engine's pre-ping
replaces dead connections, so the next run reconnects.

Shutdown: SIGTERM or SIGINT stops the scheduling; running tasks finish their
current batch (they check between batches), record their runs and release
their leases; the process exits 0. After ``RECONCILER_SHUTDOWN_GRACE`` it
exits anyway; an unfinished batch then rolls back whole with its connection.

Under systemd (``Type=notify``) it reports READY, STOPPING and watchdog pings.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from reconciler import sentry
from reconciler.app import SchemaBehind, Target, ensure_schema, open_database
from reconciler.db import Database, first_line
from reconciler.durations import format_duration
from reconciler.leases import TaskBusy, new_holder
from reconciler.ledger_metrics import LedgerCounters
from reconciler.logs import get_logger
from reconciler.metrics import TaskMetrics, exposition, queue_registry
from reconciler.probes import Probe, bind_http, start_serving
from reconciler.profiles import ProfileError, bind_profile, configured
from reconciler.profiles.live import Bound
from reconciler.runner import run_task
from reconciler.schedule import Entry, Schedule
from reconciler.sdnotify import notify, watchdog_interval
from reconciler.settings import Settings
from reconciler.tasks import TaskResult

__all__ = ["Daemon", "DaemonConfigError", "retry_delay", "serve", "stagger_offsets"]

log = get_logger("reconciler.daemon")

# Interval tasks' first runs start this far apart at most (see stagger_offsets).
STAGGER_STEP = timedelta(seconds=2)
# The first retry after a failed run; doubled per consecutive failure.
FIRST_RETRY = timedelta(seconds=1)
# A cron task (daily, say) is retried this many times (1+2+4+8+16 s), which rides
# out a restart; a failure that outlasts them waits for the next scheduled run
# rather than failing, logging and alerting every minute until then.
CRON_RETRIES = 5


class DaemonConfigError(Exception):
    """The daemon cannot start as configured; the message says how to fix it."""


def retry_delay(failures: int, cap: timedelta) -> timedelta:
    """1 s after the first consecutive failure, then 2 s, 4 s, ... at most ``cap``."""
    doubled: timedelta = FIRST_RETRY * 2 ** min(max(failures - 1, 0), 30)
    return min(cap, doubled)


def stagger_offsets(entries: list[Entry]) -> dict[str, timedelta]:
    """First-run offsets of interval tasks: the k-th of n starts k * min(every/n, 2 s) late,
    so they do not all hit the database at once, and none waits longer than its interval."""
    intervals = [e for e in entries if e.every is not None]
    n = max(len(intervals), 1)
    return {
        e.task: k * min(e.every / n, STAGGER_STEP)
        for k, e in enumerate(intervals)
        if e.every is not None
    }


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SQLAlchemyError) and getattr(exc, "orig", None) is not None:
        return first_line(exc.orig)  # type: ignore[attr-defined]
    return first_line(exc) if str(exc) else type(exc).__name__


class Daemon:
    """The scheduler and what each firing does; ``serve`` adds signals and systemd."""

    def __init__(
        self,
        settings: Settings,
        schedule: Schedule,
        db: Database,
        *,
        sentry_enabled: bool = False,
        profiles: Mapping[str, Bound | None] | None = None,
    ) -> None:
        self.settings = settings
        # The queue tables to run every entry for, by profile name (None: native); each
        # was checked against the live database before the daemon started.
        self.profiles: Mapping[str, Bound | None] = profiles or {"native": None}
        self.schedule = schedule
        self.db = db
        self.sentry_enabled = sentry_enabled
        self.stopping = threading.Event()
        # One lease holder name for the process: APScheduler never runs a task twice at
        # once here, so a lease left behind by a run cut off mid-way is ours to take back.
        self.holder = new_holder()
        self._failures: dict[str, int] = {}
        # Counters of this process's runs, served at /metrics (None: not counted).
        self.task_metrics: TaskMetrics | None = None
        self._active = 0
        self._idle = threading.Condition()
        entries = schedule.enabled()
        jobs = len(entries) * len(self.profiles)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=max(jobs, 1))},
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        entries = self.schedule.enabled()
        offsets = stagger_offsets(entries)
        now = datetime.now(UTC)
        for entry in entries:
            first = now + offsets[entry.task] if entry.every is not None else None
            for profile in self.profiles:
                self._add(replace(entry, profile=profile), first)
        self.scheduler.start()

    def _add(self, entry: Entry, first: datetime | None) -> None:
        self.scheduler.add_job(
            self.tick,
            entry.trigger(first_run=first),
            args=[entry],
            id=entry.key,
            name=entry.key,
            misfire_grace_time=max(1, round(entry.misfire_grace.total_seconds())),
        )

    def stop(self, grace: timedelta) -> bool:
        """Stop scheduling, let running tasks end their batch; True when all ended in time."""
        with self._idle:  # no firing can slip in between this and the count below
            self.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + grace.total_seconds()
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @contextmanager
    def _running(self) -> Iterator[bool]:
        """Count a firing as running; yields False (and counts nothing) once stopping."""
        with self._idle:
            started = not self.stopping.is_set()
            if started:
                self._active += 1
        if not started:
            yield False
            return
        try:
            yield True
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    # --- one firing -------------------------------------------------------------------

    def tick(self, entry: Entry) -> TaskResult | None:
        """Run ``entry``'s task once; log, report and schedule a retry. Never raises."""
        with self._running() as started:
            if not started:
                return None
            try:
                return self._tick(entry)
            except Exception as exc:  # a bug, not the database: report it and keep going
                log.exception("task.crashed", task=entry.key, error=_error_text(exc))
                if self.sentry_enabled:
                    sentry.report_exception(entry.key, exc)
                self._retry_later(entry)
                return None

    def _tick(self, entry: Entry) -> TaskResult | None:
        time_budget = entry.time_budget or self.settings.run_time_budget
        monitor = (
            sentry.CronMonitor(entry, time_budget + self.settings.statement_timeout)
            if self.sentry_enabled
            else None
        )
        started = time.monotonic()
        try:
            result = run_task(
                self.db,
                self.settings,
                entry.task,
                batch_size=entry.batch_size,
                time_budget=entry.time_budget,
                batch_pause=entry.batch_pause,
                should_stop=self.stopping.is_set,
                on_start=monitor.started if monitor else None,
                holder=self.holder,
                profile=self.profiles[entry.profile],
            )
        except TaskBusy as busy:
            log.debug(
                "task.skipped",
                task=entry.task,
                profile=entry.profile,
                reason="running elsewhere",
                holder=busy.holder,
                lease_expires_at=busy.expires_at.isoformat(),
            )
            return None
        except SQLAlchemyError as exc:
            # The run could not even start: the database is down or unreachable.
            error = _error_text(exc)
            retry_in = self._retry_later(entry)
            log.warning(
                "task.error",
                task=entry.task,
                profile=entry.profile,
                error=error,
                failures=self._failures[entry.key],
                retry_in_s=retry_in,
            )
            if monitor is not None:
                monitor.finished(False, timedelta(seconds=time.monotonic() - started))
                sentry.report_failure(entry.key, f"could not start: {error}")
            return None
        self._log_result(entry, result)
        if monitor is not None:
            monitor.finished(result.status == "ok", timedelta(milliseconds=result.duration_ms))
            if result.status != "ok":
                sentry.report_failure(entry.key, result.error or "failed", run_id=result.run_id)
        return result

    def _log_result(self, entry: Entry, result: TaskResult) -> None:
        if self.task_metrics is not None:
            self.task_metrics.observe(result)
        fields: dict[str, Any] = {
            "task": result.task,
            "profile": result.profile,
            "run_id": result.run_id,
            "status": result.status,
            "transitions": dict(result.transitions),
            "changed": result.changed,
            "batches": result.batches,
            "duration_ms": result.duration_ms,
            "stopped": result.stopped,
        }
        if result.status != "ok":
            retry_in = self._retry_later(entry)
            log.error(
                "task.finished",
                **fields,
                error=result.error,
                failures=self._failures[entry.key],
                retry_in_s=retry_in,
            )
            return
        failures = self._failures.pop(entry.key, 0)
        if failures:
            log.info(
                "task.recovered", task=entry.task, profile=entry.profile, after_failures=failures
            )
        level = logging.INFO if result.did_work or result.stopped != "done" else logging.DEBUG
        log.log(level, "task.finished", **fields)

    def _retry_later(self, entry: Entry) -> float | None:
        """Count a failure and move the task's next run to now + backoff; the delay in
        seconds, or None when a cron task has used its retries and waits for its schedule."""
        failures = self._failures.get(entry.key, 0) + 1
        self._failures[entry.key] = failures
        if entry.cron is not None and failures > CRON_RETRIES:
            return None
        delay = retry_delay(failures, self.settings.retry_max_delay)
        if not self.stopping.is_set():
            # JobLookupError: the scheduler is shutting down, or runs without this job.
            with suppress(JobLookupError):
                self.scheduler.modify_job(entry.key, next_run_time=datetime.now(UTC) + delay)
        return delay.total_seconds()


# --- the process ----------------------------------------------------------------------


def _check_schema(db: Database, target: Target) -> None:
    """Start-up check: an old schema is a configuration error (exit 2); the embedded
    server's is upgraded; an unreachable database is not fatal (the tasks retry)."""
    try:
        applied = ensure_schema(db, target)
    except SchemaBehind as exc:
        raise DaemonConfigError(str(exc)) from None
    except SQLAlchemyError as exc:
        log.warning(
            "db.unavailable",
            database=target.describe(),
            error=_error_text(exc),
            note="starting anyway; each task retries with backoff",
        )
        return
    if applied:
        log.info("schema.migrated", schema=db.schema, applied=list(applied))


def serve(settings: Settings, schedule: Schedule) -> int:
    """Run the daemon until SIGTERM or SIGINT; the exit code. Raises DaemonConfigError,
    ValueError (bad URL) and EmbeddedUnavailable before it starts, never after."""
    stop = threading.Event()
    signals: list[str] = []

    def on_signal(signum: int, _: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():  # a second signal: the operator does not want to wait
            log.warning("daemon.forced_exit", signal=name)
            logging.shutdown()
            os._exit(1)
        signals.append(name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    entries = schedule.enabled()
    db, target = open_database(
        settings,
        application_name=f"reconciler daemon {os.getpid()}",
        pool_size=len(entries) + 1,
    )
    try:
        _check_schema(db, target)
        sentry_enabled = sentry.init_sentry(settings)
        with sentry.flushed(sentry_enabled):
            return _serve(settings, schedule, db, target, stop, signals, sentry_enabled)
    finally:
        db.dispose()


def _serve(
    settings: Settings,
    schedule: Schedule,
    db: Database,
    target: Target,
    stop: threading.Event,
    signals: list[str],
    sentry_enabled: bool,
) -> int:
    try:
        profiles = {p.name: bind_profile(db, p) for p in configured(settings)}
    except ProfileError as exc:
        raise DaemonConfigError(str(exc)) from None
    daemon = Daemon(settings, schedule, db, sentry_enabled=sentry_enabled, profiles=profiles)
    registry = queue_registry(db, holder=daemon.holder)
    daemon.task_metrics = TaskMetrics(registry)
    ledger = LedgerCounters(db, registry)

    def metrics() -> bytes:
        ledger.poll()  # the ledger's new events, counted before they are shown
        return exposition(registry)

    probe = Probe(
        db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
        db.schema,
        running=lambda: daemon.scheduler.running and not stop.is_set(),
        metrics=metrics,
    )
    if settings.http_addr is not None:
        ledger.poll()  # counting starts at the ledger's head now, not at the first scrape
    http = None
    if settings.http_addr is not None:
        try:
            http = bind_http(settings.http_addr, probe)
        except OSError as exc:
            raise DaemonConfigError(
                f"RECONCILER_HTTP_ADDR {settings.http_addr}: cannot listen there ({exc.strerror}"
                "); choose another port, or unset it"
            ) from None
    daemon.start()
    if http is not None:
        start_serving(http)  # /healthz answers ok only once the scheduler runs
    watchdog = watchdog_interval()
    log.info(
        "daemon.started",
        pid=os.getpid(),
        database=target.describe(),
        schema=db.schema,
        schedule_file=str(schedule.path),
        tasks={e.task: e.describe() for e in schedule.enabled()},
        profiles=list(profiles),
        sentry=sentry_enabled,
        lease_holder=daemon.holder,
        systemd_watchdog_s=watchdog.total_seconds() if watchdog else None,
    )
    notify("READY=1", f"STATUS=running {len(schedule.enabled())} task(s)")
    tick = min(watchdog or timedelta(seconds=1), timedelta(seconds=1))
    while not stop.wait(tick.total_seconds()):
        probe.tick()
        if watchdog is not None and daemon.scheduler.running:
            notify("WATCHDOG=1")
    if http is not None:
        http.shutdown()
    grace = settings.shutdown_grace
    notify("STOPPING=1", "STATUS=finishing the current batches")
    log.info(
        "daemon.stopping",
        signal=signals[0] if signals else None,
        grace_s=grace.total_seconds(),
    )
    if daemon.stop(grace):
        log.info("daemon.stopped", clean=True)
        return 0
    # Threads still in a batch would keep the interpreter alive; their transactions
    # roll back when the process's connections close.
    log.warning(
        "daemon.stopped",
        clean=False,
        note=f"a batch was still running after {format_duration(grace)}; it rolls back",
    )
    logging.shutdown()
    os._exit(0)
