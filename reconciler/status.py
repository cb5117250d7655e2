"""``reconciler status``: per task, its last run, its next run, and whether it is overdue.

Everything comes from the database (``runs`` and ``task_leases``) and the
schedule file, so it tells the truth about every replica at once. The clock
is the database's, like the runs' own timestamps.

Next run: the last run's start plus the interval, or the cron line's next
match after it. Overdue: no run started by ``next run + overdue_after`` (one
more period, at least a minute, plus the jitter; see
:attr:`reconciler.schedule.Entry.overdue_after`), and none is running now.
A task that never ran has no next run to miss: it is reported as never run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from reconciler.db import Database
from reconciler.durations import format_duration
from reconciler.schedule import Entry, Schedule
from reconciler.sqlfiles import query
from reconciler.tasks import TASKS

__all__ = ["LastRun", "Lease", "TaskStatus", "collect", "render", "task_status"]


@dataclass(frozen=True)
class LastRun:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    transitions: dict[str, int]
    batches: int
    error: str | None
    host: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "status": self.status,
            "transitions": self.transitions,
            "changed": sum(self.transitions.values()),
            "batches": self.batches,
            "error": self.error,
            "host": self.host,
        }


@dataclass(frozen=True)
class Lease:
    holder: str
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class TaskStatus:
    task: str
    schedule: str | None  # "every 30s", "cron ..." or None when the file does not list it
    enabled: bool
    last_run: LastRun | None
    running: Lease | None
    next_run: datetime | None
    overdue: bool | None  # None: never ran, so nothing to be late for

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "schedule": self.schedule,
            "enabled": self.enabled,
            "last_run": self.last_run.to_dict() if self.last_run else None,
            "running": (
                {
                    "holder": self.running.holder,
                    "since": self.running.acquired_at.isoformat(),
                    "lease_expires_at": self.running.expires_at.isoformat(),
                }
                if self.running
                else None
            ),
            "next_run": self.next_run.isoformat() if self.next_run else None,
            "overdue": self.overdue,
        }


def task_status(
    task: str,
    entry: Entry | None,
    last: LastRun | None,
    running: Lease | None,
    now: datetime,
) -> TaskStatus:
    """The timing verdict for one task at ``now`` (the database's clock)."""
    scheduled = entry is not None and entry.enabled
    describe = entry.describe() if entry is not None else None
    if entry is None or not scheduled or last is None:
        return TaskStatus(
            task, describe, scheduled, last, running, None, None if scheduled else False
        )
    next_run = entry.next_after(last.started_at)
    overdue = running is None and now > next_run + entry.overdue_after
    return TaskStatus(task, describe, True, last, running, next_run, overdue)


def collect(
    db: Database, schedule: Schedule, profiles: Sequence[str] = ("native",)
) -> tuple[datetime, list[TaskStatus]]:
    """The database's now and every task's status, in the registry's order, for each
    profile (a task of a profile other than native is named TASK@PROFILE, as its lease)."""
    with db.transaction() as conn:
        now = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
        runs = {
            _key(row.task, row.profile): LastRun(
                id=row.id,
                started_at=row.started_at,
                finished_at=row.finished_at,
                status=row.status,
                transitions=dict(row.transitions),
                batches=row.batches,
                error=row.error,
                host=row.host,
            )
            for row in conn.execute(text(query("status", "last_runs")))
        }
        leases = {
            row.task: Lease(row.holder, row.acquired_at, row.expires_at)
            for row in conn.execute(text(query("status", "held_leases")))
        }
    return now, [
        task_status(
            _key(name, profile),
            schedule.get(name),
            runs.get(_key(name, profile)),
            leases.get(_key(name, profile)),
            now,
        )
        for profile in profiles
        for name in TASKS
    ]


def _key(task: str, profile: str) -> str:
    return task if profile == "native" else f"{task}@{profile}"


def _ago(moment: datetime, now: datetime) -> str:
    seconds = round((now - moment).total_seconds())
    if seconds < 0:
        return f"in {format_duration(timedelta(seconds=-seconds))}"
    return f"{format_duration(timedelta(seconds=seconds))} ago"


def render(now: datetime, statuses: list[TaskStatus], out: Console) -> None:
    """The human table of ``reconciler status``."""
    table = Table(title=f"tasks at {now.isoformat(timespec='seconds')} (database clock)")
    for column in ("task", "schedule", "last run", "next run", "state"):
        table.add_column(column)
    for s in statuses:
        last = "never"
        if s.last_run is not None:
            changed = sum(s.last_run.transitions.values())
            last = f"{s.last_run.status}, {_ago(s.last_run.started_at, now)}, {changed} changed"
            if s.last_run.error:
                last += f": {s.last_run.error}"
        next_run = "-" if s.next_run is None else _ago(s.next_run, now)
        if s.running is not None:
            state = f"running ({s.running.holder})"
        elif not s.enabled:
            state = "not scheduled"
        elif s.overdue:
            state = "[bold red]OVERDUE[/]"
        elif s.overdue is None:
            state = "never ran"
        else:
            state = "on time"
        table.add_row(s.task, s.schedule or "-", last, next_run, state)
    out.print(table)
