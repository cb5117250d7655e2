"""The daemon's schedule as data: a TOML file with one table per task.

``schedules/default.toml`` ships with the package; ``RECONCILER_SCHEDULE_FILE``
points at another. Each table names a task and has ``every = "30s"`` (an
interval) or ``cron = "17 3 * * *"`` (a crontab line, UTC), an optional
``enabled`` flag and ``jitter``, and an optional ``[TASK.params]`` table of
per-task overrides (``batch_size``, ``time_budget``, ``batch_pause``). The file is checked
strictly, because a typo in a schedule silently stops a task: an unknown task
or key, a bad duration or cron expression is a :class:`ScheduleError` whose
one-line message names the file, the line, the key and what is wrong.

Cron day-of-week numbers follow crontab (0 and 7 are Sunday). APScheduler 3
counts from Monday; :func:`_crontab_weekdays` translates, so a line means
the same here as in crontab and in Sentry's monitor.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from rich.console import Console
from rich.table import Table

from reconciler.durations import format_duration, parse_duration
from reconciler.settings import check_batch_size
from reconciler.sqlfiles import data_dir
from reconciler.tasks import TASKS

__all__ = [
    "Entry",
    "Schedule",
    "ScheduleError",
    "default_schedule_path",
    "load_schedule",
    "next_runs",
    "parse_schedule",
    "render",
]

KEYS = ("every", "cron", "enabled", "jitter", "params")
PARAM_KEYS = ("batch_size", "time_budget", "batch_pause")
# A batch_pause above this is a typo: a task resting 100 times its work barely moves.
MAX_BATCH_PAUSE = 100.0
# An interval task starts up to a tenth of its interval late, at most 5 s: enough to
# spread replicas that started together, never enough to matter to the schedule.
MAX_INTERVAL_JITTER = timedelta(seconds=5)
# A cron task (daily, at a quiet hour) may start up to 30 s late, for the same reason.
CRON_JITTER = timedelta(seconds=30)
# A run that could not start on time still runs when it is at most this late (the
# daemon was busy or paused), so a daily task is not skipped for a day.
CRON_MISFIRE_GRACE = timedelta(hours=1)

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class ScheduleError(Exception):
    """The schedule file is wrong; the message is one line naming file, line, key and fix."""


@dataclass(frozen=True)
class Entry:
    """One task's schedule."""

    task: str
    every: timedelta | None = None
    cron: str | None = None
    enabled: bool = True
    jitter: timedelta | None = None
    batch_size: int | None = None
    time_budget: timedelta | None = None
    # After each batch the task rests this many times the batch's duration; None:
    # RECONCILER_BATCH_PAUSE.
    batch_pause: float | None = None
    # The profile the daemon runs this entry for (RECONCILER_PROFILES): one entry per
    # task and profile, each its own scheduler job.
    profile: str = "native"

    @property
    def key(self) -> str:
        """The scheduler job's id: the task, or TASK@PROFILE for a profile other than native."""
        return self.task if self.profile == "native" else f"{self.task}@{self.profile}"

    @property
    def effective_jitter(self) -> timedelta:
        if self.jitter is not None:
            return self.jitter
        if self.every is not None:
            return min(self.every / 10, MAX_INTERVAL_JITTER)
        return CRON_JITTER

    @property
    def misfire_grace(self) -> timedelta:
        """How late a run may start and still run (APScheduler's misfire_grace_time)."""
        if self.every is not None:
            return max(self.every, timedelta(seconds=1))
        return CRON_MISFIRE_GRACE

    @property
    def overdue_after(self) -> timedelta:
        """How long past its next run a task counts as overdue: one more period, at least 1 m."""
        grace = self.every if self.every is not None else CRON_MISFIRE_GRACE
        return max(grace, timedelta(minutes=1)) + self.effective_jitter

    def describe(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron {self.cron} (UTC)"

    def trigger(self, first_run: datetime | None = None) -> BaseTrigger:
        """The APScheduler trigger; an interval starts at ``first_run`` (staggering)."""
        jitter = self.effective_jitter.total_seconds() or None
        if self.every is not None:
            return IntervalTrigger(
                seconds=self.every.total_seconds(),
                start_date=first_run,
                timezone=UTC,
                jitter=jitter,
            )
        assert self.cron is not None
        return _cron_trigger(self.cron, jitter=jitter)

    def next_after(self, moment: datetime) -> datetime:
        """When the task is next due after a run that started at ``moment`` (no jitter)."""
        if self.every is not None:
            return moment + self.every
        assert self.cron is not None
        following = _cron_trigger(self.cron).get_next_fire_time(None, moment + timedelta(seconds=1))
        assert isinstance(following, datetime)
        return following

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "every": format_duration(self.every) if self.every is not None else None,
            "cron": self.cron,
            "enabled": self.enabled,
            "jitter": format_duration(self.effective_jitter),
            "params": self.params_dict(),
        }

    def params_dict(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.batch_size is not None:
            params["batch_size"] = self.batch_size
        if self.time_budget is not None:
            params["time_budget"] = format_duration(self.time_budget)
        if self.batch_pause is not None:
            params["batch_pause"] = self.batch_pause
        return params

    def monitor_config(self, max_runtime: timedelta) -> dict[str, Any]:
        """Sentry Cron's monitor config. Sentry counts in whole minutes, so a 30 s
        interval is a 1 minute monitor (more frequent check-ins are fine)."""
        if self.every is not None:
            schedule: dict[str, Any] = {
                "type": "interval",
                "value": max(1, math.ceil(self.every.total_seconds() / 60)),
                "unit": "minute",
            }
        else:
            schedule = {"type": "crontab", "value": self.cron}
        return {
            "schedule": schedule,
            "timezone": "UTC",
            "checkin_margin": max(1, math.ceil(self.overdue_after.total_seconds() / 60)),
            "max_runtime": max(1, math.ceil(max_runtime.total_seconds() / 60)),
        }


@dataclass(frozen=True)
class Schedule:
    """A checked schedule file."""

    path: Path
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    def enabled(self) -> list[Entry]:
        return [e for e in self.entries if e.enabled]

    def get(self, task: str) -> Entry | None:
        return next((e for e in self.entries if e.task == task), None)


def default_schedule_path() -> Path:
    return data_dir("schedules") / "default.toml"


def load_schedule(path: Path | None = None) -> Schedule:
    """Read and check ``path`` (default: the shipped schedule); ScheduleError if wrong."""
    path = path or default_schedule_path()
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot read the schedule file: {exc.strerror}") from None
    return parse_schedule(source, path)


def parse_schedule(source: str, path: Path) -> Schedule:
    """Check ``source`` (the text of ``path``) and return its schedule."""
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(source)

    def fail(table: str, key: str | None, message: str) -> ScheduleError:
        line = lines.get((table, key)) or lines.get((table, None))
        where = f"line {line}: " if line else ""
        what = f"[{table}] {key}" if key and table else (f"[{table}]" if table else key)
        return ScheduleError(f"{path}: {where}{what}: {message}")

    entries = []
    for task, body in data.items():
        if not isinstance(body, dict):
            raise fail("", task, "unknown top-level key; each task is a [table] of its own")
        if task not in TASKS:
            raise fail(task, None, f"unknown task; known tasks: {', '.join(TASKS)}")
        entries.append(_entry(task, body, fail))
    return Schedule(path, tuple(entries))


def _entry(task: str, body: dict[str, Any], fail: Any) -> Entry:
    for key in body:
        if key not in KEYS:
            raise fail(task, key, f"unknown key; allowed: {', '.join(KEYS)}")
    if ("every" in body) == ("cron" in body):
        raise fail(task, None, 'needs exactly one of every = "30s" or cron = "17 3 * * *"')
    every = cron = None
    if "every" in body:
        every = _duration(body["every"], lambda m: fail(task, "every", m))
    if "cron" in body:
        cron = body["cron"]
        if not isinstance(cron, str):
            raise fail(task, "cron", 'must be a string like "17 3 * * *"')
        try:
            _cron_trigger(cron)
        except ValueError as exc:
            raise fail(task, "cron", f"{cron!r} is not a valid crontab line: {exc}") from None
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail(task, "enabled", "must be true or false")
    jitter = None
    if "jitter" in body:
        jitter = _duration(body["jitter"], lambda m: fail(task, "jitter", m), zero_ok=True)
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise fail(task, "params", f"must be a table: [{task}.params]")
    for key in params:
        if key not in PARAM_KEYS:
            raise fail(f"{task}.params", key, f"unknown key; allowed: {', '.join(PARAM_KEYS)}")
    batch_size = params.get("batch_size")
    if batch_size is not None:
        try:
            batch_size = check_batch_size(batch_size)
        except ValueError as exc:
            raise fail(f"{task}.params", "batch_size", str(exc)) from None
    time_budget = None
    if "time_budget" in params:
        time_budget = _duration(
            params["time_budget"], lambda m: fail(f"{task}.params", "time_budget", m)
        )
    batch_pause = params.get("batch_pause")
    if batch_pause is not None:
        if (
            isinstance(batch_pause, bool)
            or not isinstance(batch_pause, int | float)
            or not 0 <= batch_pause <= MAX_BATCH_PAUSE
        ):
            raise fail(
                f"{task}.params",
                "batch_pause",
                f"must be a number from 0 to {MAX_BATCH_PAUSE:g} (times the batch's duration),"
                f" not {batch_pause!r}",
            )
        batch_pause = float(batch_pause)
    return Entry(task, every, cron, enabled, jitter, batch_size, time_budget, batch_pause)


def _duration(value: Any, fail: Any, *, zero_ok: bool = False) -> timedelta:
    if not isinstance(value, str):
        raise fail('must be a duration in quotes, e.g. "30s", "5m" or "1h"')
    if value.strip().startswith("-"):
        raise fail(f"{value!r} is negative; it must be longer than zero")
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if parsed <= timedelta(0) and not zero_ok:
        raise fail(f"{value!r} must be longer than zero")
    return parsed


def _cron_trigger(expr: str, *, jitter: float | None = None) -> CronTrigger:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_crontab_weekdays(weekday),
        timezone=UTC,
        jitter=jitter,
    )


def _crontab_weekdays(spec: str) -> str:
    """Crontab's weekday field (0 or 7 = Sunday, names allowed) as APScheduler 3 names."""
    if spec == "*":
        return spec
    days: set[int] = set()
    for part in spec.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"weekday step {step_text!r} must be a whole number of 1 or more")
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            first, _, last = span.partition("-")
            low, high = _weekday(first), _weekday(last)
            if high == 0 and last.strip() in ("7",):
                high = 7
            if low > high:
                raise ValueError(f"weekday range {span!r} runs backwards")
        else:
            low = high = _weekday(span)
            if step is not None:
                high = 6
        days.update(d % 7 for d in range(low, high + 1, step or 1))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def _weekday(text: str) -> int:
    text = text.strip().lower()
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7
    if text[:3] in _WEEKDAYS:
        return _WEEKDAYS.index(text[:3])
    raise ValueError(f"weekday {text!r} is not 0-7 or a name like mon")


_TABLE = re.compile(r"^\s*\[\s*([^\]\s]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"]+)\s*=")


def _key_lines(source: str) -> dict[tuple[str, str | None], int]:
    """(table, key) -> line number, for error messages (tomllib gives no positions)."""
    found: dict[tuple[str, str | None], int] = {}
    table = ""
    for number, line in enumerate(source.splitlines(), start=1):
        header = _TABLE.match(line)
        if header:
            table = header.group(1).replace('"', "")
            found.setdefault((table, None), number)
            continue
        key = _KEY.match(line)
        if key:
            found.setdefault((table, key.group(1).strip('"')), number)
    return found


def next_runs(schedule: Schedule, now: datetime) -> dict[str, datetime | None]:
    """When each enabled task would next run if the daemon were running since ``now``
    (no jitter, no staggering): what ``reconciler schedule`` prints."""
    result: dict[str, datetime | None] = {}
    for entry in schedule.entries:
        if not entry.enabled:
            result[entry.task] = None
        elif entry.every is not None:
            result[entry.task] = now + entry.every
        else:
            result[entry.task] = entry.next_after(now - timedelta(seconds=1))
    return result


def render(schedule: Schedule, now: datetime, out: Console) -> None:
    """The human table of ``reconciler schedule``."""
    upcoming = next_runs(schedule, now)
    table = Table(title=f"schedule: {schedule.path}")
    for column in ("task", "when", "jitter", "params", "next run (UTC)"):
        table.add_column(column)
    for task in TASKS:
        entry = schedule.get(task)
        if entry is None:
            table.add_row(task, "not scheduled", "-", "-", "-")
            continue
        params = ", ".join(f"{k}={v}" for k, v in entry.params_dict().items()) or "-"
        when = entry.describe() + ("" if entry.enabled else " (disabled)")
        nxt = upcoming.get(task)
        table.add_row(
            task,
            when,
            format_duration(entry.effective_jitter),
            params,
            nxt.isoformat(timespec="seconds") if nxt else "-",
        )
    out.print(table)
    out.print("intervals count from the daemon's start; each run may start up to its jitter late")
