"""``reconciler check``: the runbooks' alert conditions, for cron, Nagios or a probe.

Read-only. Each condition is evaluated with thresholds from the settings
(``RECONCILER_CHECK_*``) and gives a finding: ok, warning or critical. The
exit code is the worst of them: 0 ok, 1 warning, 2 critical (the Nagios
convention), so ``reconciler check || page-someone`` works as it is.

Conditions: failure rate of attempts in the window; backlog (jobs due for
longer than the backlog age); dead-letter spike; probably dead workers; jobs
running too long; maintenance tasks overdue by the daemon's schedule (as
``reconciler status`` judges it), never run, or failed in their last run;
the oldest due job of each priority past its latency target; with a
partitioned ledger, how far ahead its partitions reach; autovacuum lag and
table and index bloat of ``jobs`` and ``job_events``
(:mod:`reconciler.ops.table_health`; a partitioned table by its partitions).
Paused queues
are left out of backlog and latency (they back up on purpose) and listed;
after ``pause --all`` that is every queue, listed as "all queues".
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.heartbeat import HeartbeatRule
from reconciler.ops.confirm import OpsError
from reconciler.ops.output import age, console, emit_json, table
from reconciler.ops.pause import paused_queues, queue_label
from reconciler.ops.table_health import HealthRules, table_health
from reconciler.ops.vocabulary import PRIORITIES
from reconciler.ops.workers import worker_report
from reconciler.schedule import Schedule, ScheduleError, load_schedule
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from reconciler.status import TaskStatus
from reconciler.status import collect as collect_status

__all__ = ["LEVELS", "QUEUE_TABLES", "Finding", "cmd_check", "evaluate", "health_rules"]

LEVELS = {"ok": 0, "warning": 1, "critical": 2}

# check counts backlog, slow and due jobs up to this many (more says nothing new).
COUNT_CAP = 10_001

# The tables whose bloat and autovacuum lag check judges: every job passes through both.
QUEUE_TABLES = ("jobs", "job_events")


def health_rules(settings: Settings) -> HealthRules:
    """The table-health thresholds of ``settings``."""
    return HealthRules(
        settings.check_vacuum_lag,
        settings.check_vacuum_min_dead,
        settings.check_bloat_ratio,
        settings.check_bloat_min_bytes,
    )


@dataclass(frozen=True)
class Finding:
    """One condition's outcome."""

    check: str
    level: str  # ok, warning or critical
    value: Any
    threshold: Any
    message: str


def _level(value: float, warning: float, critical: float) -> str:
    if value > critical:
        return "critical"
    if value > warning:
        return "warning"
    return "ok"


def _count(n: int, cap: int) -> str:
    """A count that stopped at ``cap``: "over N" (N the last it counted), else N."""
    return f"over {cap - 1:,}" if n >= cap else str(n)


def _task_finding(status: TaskStatus, now: datetime) -> Finding:
    """A scheduled task: overdue by the schedule (as ``reconciler status`` says), never run,
    or failing in its last run."""
    name = f"task:{status.task}"
    last = status.last_run
    if last is None:
        return Finding(
            name,
            "warning",
            None,
            status.schedule,
            f"{status.task} has never run (is the daemon running?)",
        )
    if status.overdue:
        return Finding(
            name,
            "warning",
            last.started_at,
            status.schedule,
            f"{status.task} is overdue: scheduled {status.schedule}, last started "
            f"{age(now - last.started_at)} ago",
        )
    if last.status == "failed":
        return Finding(
            name,
            "warning",
            last.started_at,
            status.schedule,
            f"{status.task} failed in its last run: {last.error}",
        )
    return Finding(
        name,
        "ok",
        last.started_at,
        status.schedule,
        f"{status.task} on time ({status.schedule}), last run {last.status}",
    )


def _partitions_finding(upper: datetime, now: datetime, s: Settings) -> Finding:
    """A partitioned ledger's partitions must reach ahead: past the last one, every
    transition is refused (its event has nowhere to go)."""
    left = upper - now
    level = (
        "critical"
        if left < timedelta(days=1)
        else "warning"
        if left < s.events_partitions_ahead / 2
        else "ok"
    )
    return Finding(
        "events_partitions",
        level,
        round(left.total_seconds()),
        round((s.events_partitions_ahead / 2).total_seconds()),
        f"job_events partitions reach {age(left)} ahead (to {upper.isoformat()})"
        + ("" if level == "ok" else "; is the partitions task running? reconciler run partitions"),
    )


def evaluate(
    db: Database, settings: Settings, schedule: Schedule, *, now: datetime | None = None
) -> list[Finding]:
    """Every condition, in a fixed order."""
    now = now or db.now()
    s = settings
    since = now - s.check_window
    window = age(s.check_window)
    findings: list[Finding] = []
    # Counts stop at cap (one past the backlog's critical threshold, at least
    # COUNT_CAP): above it the level is decided, and "over N" is what a person needs.
    cap = max(COUNT_CAP, s.check_backlog_critical + 1)
    with db.transaction() as conn:

        def one(name: str, **binds: Any) -> Any:
            return conn.execute(
                text(query("ops/check", name)), {"now": now, "cap": cap, **binds}
            ).one()

        attempts = one("attempts", since=since)
        backlog = one("backlog", backlog_horizon=now - s.check_backlog_age)
        dead = one("dead_recent", since=since)
        slow = one("slow", slow_horizon=now - s.check_slow_job_age)
        latency = conn.execute(
            text(query("ops/check", "oldest_due_by_priority")), {"now": now, "cap": cap}
        ).all()
        ledger = conn.execute(text(query("ops/check", "events_partitions"))).first()
        health = table_health(conn, db.schema, QUEUE_TABLES, now, health_rules(s))

    total = attempts.succeeded + attempts.failed
    rate = attempts.failed / total if total else 0.0
    level = (
        _level(rate, s.check_failure_rate_warning, s.check_failure_rate_critical)
        if total >= s.check_failure_min_attempts
        else "ok"
    )
    findings.append(
        Finding(
            "failure_rate",
            level,
            round(rate, 4),
            s.check_failure_rate_warning,
            f"{attempts.failed} of {total} attempts failed in the last {window} "
            f"({rate * 100:.1f} %)"
            + ("" if total >= s.check_failure_min_attempts else "; too few to judge"),
        )
    )
    findings.append(
        Finding(
            "backlog",
            _level(backlog.jobs, s.check_backlog_warning, s.check_backlog_critical),
            backlog.jobs,
            s.check_backlog_warning,
            f"{_count(backlog.jobs, cap)} queued job(s) due for over {age(s.check_backlog_age)}",
        )
    )
    findings.append(
        Finding(
            "dead_letter_spike",
            _level(dead.jobs, s.check_dead_letter_warning, s.check_dead_letter_critical),
            dead.jobs,
            s.check_dead_letter_warning,
            f"{dead.jobs} job(s) went dead in the last {window}",
        )
    )
    _, task_statuses = collect_status(db, schedule)
    workers = worker_report(
        db, now=now, rule=HeartbeatRule.from_settings(s), interval=s.ops_heartbeat_interval
    )
    dead_workers = workers["probably_dead"]
    findings.append(
        Finding(
            "dead_workers",
            "warning" if dead_workers else "ok",
            len(dead_workers),
            0,
            (
                "probably dead (every job silent past its heartbeat timeout): "
                f"{', '.join(dead_workers)}"
            )
            if dead_workers
            else "no worker silent past the heartbeat timeout",
        )
    )
    findings.append(
        Finding(
            "slow_jobs",
            "warning" if slow.jobs else "ok",
            slow.jobs,
            0,
            f"{_count(slow.jobs, cap)} job(s) running for over {age(s.check_slow_job_age)}"
            + (f" (e.g. job {slow.example_id})" if slow.jobs else ""),
        )
    )
    for status in task_statuses:
        if not status.enabled:
            continue
        findings.append(_task_finding(status, now))
    if ledger is not None:
        findings.append(_partitions_finding(ledger.upper_bound, now, s))
    for row in latency:
        target = settings.latency_target(row.priority)
        name = PRIORITIES[row.priority]
        if target is None:
            continue
        wait = row.oldest_wait
        level = (
            "critical"
            if wait > target * s.check_latency_critical_factor
            else ("warning" if wait > target else "ok")
        )
        findings.append(
            Finding(
                f"latency:{name}",
                level,
                wait,
                target,
                f"oldest due {name} job waits {age(wait)} "
                f"(target {age(target)}; {_count(row.due, cap)} due)",
            )
        )
    findings.extend(Finding(*f) for f in health)
    pauses = paused_queues(db)
    everything = next((p for p in pauses if p["queue"] == "*"), None)
    if everything is not None:
        held = now - everything["paused_at"]
        forgotten = held > s.check_pause_all_age
        findings.append(
            Finding(
                "pause_all",
                "warning" if forgotten else "ok",
                round(held.total_seconds()),
                round(s.check_pause_all_age.total_seconds()),
                f"every queue paused for {age(held)} by {everything['paused_by']}"
                + (f" ({everything['reason']})" if everything["reason"] else "")
                + ("; forgotten? resume with: reconciler resume --all" if forgotten else ""),
            )
        )
    paused = [queue_label(p["queue"]) for p in pauses]
    if paused:
        findings.append(
            Finding(
                "paused_queues",
                "ok",
                len(paused),
                None,
                f"paused (left out of backlog and latency): {', '.join(paused)}",
            )
        )
    return findings


def cmd_check(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    try:
        schedule = load_schedule(settings.schedule_file)
    except ScheduleError as exc:
        raise OpsError(str(exc)) from None
    findings = evaluate(db, settings, schedule)
    worst = max((LEVELS[f.level] for f in findings), default=0)
    status = {v: k for k, v in LEVELS.items()}[worst]
    if args.json:
        emit_json({"status": status, "exit_code": worst, "findings": [asdict(f) for f in findings]})
        return worst
    out = console()
    out.print(f"reconciler check: {status.upper()}")
    shown = findings if args.verbose else [f for f in findings if f.level != "ok"]
    if shown:
        out.print(
            table(
                None,
                ("level", "check", "finding"),
                [(f.level.upper(), f.check, f.message) for f in shown],
            )
        )
    return worst
