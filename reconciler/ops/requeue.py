"""The one requeue: ``jobs requeue``, ``jobs retry-failed`` and ``dead-letter replay``.

failed, stale, dead or cancelled (and, named by id or ``--status succeeded``,
succeeded) -> queued, due now, ``--at`` a time or ``--in`` a delay, with a fresh
retry budget unless ``--keep-attempts`` (``attempt_base`` moves up; ``attempt``
never goes down, so the fence cannot repeat). The SQL is ``requeue`` in
``sql/ops/jobs.sql``. Safe to re-run: a requeued job is queued and no longer matches.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

from reconciler.db import Database
from reconciler.durations import format_duration
from reconciler.ops.changes import Change, apply_from_args
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import (
    JobFilter,
    check_ids,
    check_statuses,
    filtered_query,
    resolve_limit,
)
from reconciler.settings import Settings

__all__ = ["REPLAYABLE", "REQUEUEABLE", "requeue", "requeue_change"]

REQUEUEABLE = ("failed", "stale", "dead", "cancelled")
# Replaying a succeeded job runs it again: only when asked by id or --status succeeded,
# never as part of a filter that did not name it.
REPLAYABLE = (*REQUEUEABLE, "succeeded")


def requeue(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    job_filter: JobFilter,
    *,
    name: str,
    eligible: tuple[str, ...],
) -> int:
    """The one requeue: ``jobs requeue``, ``jobs retry-failed`` and ``dead-letter replay``."""
    now = db.now()
    change = requeue_change(
        db,
        job_filter,
        name=name,
        eligible=eligible,
        now=now,
        run_at=_due(args, now),
        keep_attempts=bool(getattr(args, "keep_attempts", False)),
        reason=args.reason,
    )
    return apply_from_args(
        db, settings, change, args, now=now, verb="requeue", job_filter=job_filter
    )


def requeue_change(
    db: Database,
    job_filter: JobFilter,
    *,
    name: str,
    eligible: tuple[str, ...],
    now: datetime,
    run_at: datetime,
    keep_attempts: bool,
    reason: str | None,
) -> Change:
    """The requeue of ``job_filter`` as a change, its ids and statuses checked (the CLI's
    commands and the dashboard's actions build it here)."""
    check_statuses(job_filter, eligible, name)
    check_ids(db, job_filter.ids, allowed=eligible, verb=name)
    given, job_filter = job_filter, resolve_limit(db, job_filter, now, eligible)
    return Change(
        name=name,
        verb="requeue",
        details={"filter": given.describe()},
        sql=filtered_query("ops/requeue", "requeue"),
        params={
            **job_filter.binds(now),
            "eligible": list(job_filter.statuses or eligible),
            "keep_attempts": keep_attempts,
            "note": reason,
            "run_at": run_at,
        },
    )


def _due(args: argparse.Namespace, now: datetime) -> datetime:
    """When requeued jobs become due: ``--at`` a time, ``--in`` a delay, or at once."""
    at: datetime | None = getattr(args, "at", None)
    delay: timedelta | None = getattr(args, "in_", None)
    if at is not None:
        return at
    if delay is not None:
        if delay < timedelta(0):
            raise OpsError(f"--in {format_duration(delay)} is in the past; give a delay, e.g. 2h")
        return now + delay
    return now
