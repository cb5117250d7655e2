"""``reconciler jobs``: list, show, requeue, retry-failed, cancel, reset-stuck.

Replaces the runbooks' pasted SQL ("find stuck jobs", "reset stuck job",
"retry all failed in a queue", "cancel a job") with commands that only take
the transitions the schema allows, preview with ``--dry-run``, ask before a
bulk change, and leave a ``job_events`` row per job with the operator's name.

- requeue: failed, stale, dead or cancelled -> queued, due now, attempts and
  error reset unless ``--keep-attempts``. Safe to re-run: a requeued job is
  queued and no longer matches.
- cancel: queued, running, failed or stale -> cancelled; a running job's
  worker is fenced out. Safe to re-run.
- reset-stuck: the mark-stale task with the operator's timeout: running jobs
  whose last heartbeat is older become stale, and the requeue or dead-letter
  task takes them from there, by their attempts and retry policy. A job is
  never put straight back to queued while its worker may still be running it.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

from sqlalchemy import text

from reconciler.db import Database
from reconciler.heartbeat import spliced
from reconciler.ops.changes import Change, apply, apply_from_args
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import (
    JobFilter,
    check_ids,
    check_statuses,
    filtered_query,
    resolve_limit,
)
from reconciler.ops.listing import list_jobs, print_jobs
from reconciler.ops.output import console, emit_json, emit_json_lines, table
from reconciler.ops.report import report_change, report_unchanged
from reconciler.ops.requeue import REPLAYABLE, REQUEUEABLE, requeue
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = [
    "CANCELLABLE",
    "MARKABLE_SUCCEEDED",
    "cancel_change",
    "cmd_cancel",
    "cmd_list",
    "cmd_mark_succeeded",
    "cmd_requeue",
    "cmd_reset_stuck",
    "cmd_retry_failed",
    "cmd_show",
]

CANCELLABLE = ("queued", "running", "failed", "stale")
MARKABLE_SUCCEEDED = ("queued", "running", "failed", "stale", "dead")


def cmd_list(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args)
    rows = list_jobs(db, job_filter, limit=job_filter.limit or 50)
    if args.json:
        emit_json_lines(rows)
        return 0
    shown = f"{len(rows)} job(s), newest first" + (
        " (there may be more: --limit N)" if len(rows) == job_filter.limit else ""
    )
    print_jobs(rows, title=shown)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    check_ids(db, [args.id])
    now = db.now()
    with db.transaction() as conn:
        found = dict(
            conn.execute(text(spliced(query("ops/jobs", "show"))), {"id": args.id, "now": now})
            .one()
            ._mapping
        )
        events = [
            dict(r._mapping)
            for r in conn.execute(text(query("ops/jobs", "events")), {"id": args.id})
        ]
    if args.json:
        emit_json({"job": found, "events": events})
        return 0
    out = console()
    fields = table(f"job {args.id}", ("field", "value"), list(found.items()))
    out.print(fields)
    out.print(
        table(
            f"history ({len(events)} event(s))",
            ("at", "from", "to", "actor", "reason", "run"),
            [
                (e["at"], e["from_status"], e["to_status"], e["actor"], e["reason"], e["run_id"])
                for e in events
            ],
        )
    )
    return 0


def cmd_requeue(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args).required(
        "jobs requeue needs job ids or a filter (e.g. --status dead --queue email); "
        "to retry every failed job: reconciler jobs retry-failed"
    )
    asked = bool(job_filter.ids) or "succeeded" in job_filter.statuses
    eligible = REPLAYABLE if asked else REQUEUEABLE
    return requeue(args, settings, db, job_filter, name="jobs requeue", eligible=eligible)


def cmd_mark_succeeded(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    """queued, running, failed, stale or dead -> succeeded by hand; the reason is required."""
    job_filter = JobFilter.from_args(args)
    if not job_filter.ids:
        raise OpsError("jobs mark-succeeded needs job ids (e.g. reconciler jobs mark-succeeded 42)")
    if not (args.reason or "").strip():
        raise OpsError(
            "jobs mark-succeeded needs --reason (e.g. --reason 'done by hand, INC-12'): "
            "a job that did not run needs a why in its history"
        )
    check_ids(db, job_filter.ids, allowed=MARKABLE_SUCCEEDED, verb="jobs mark-succeeded")
    now = db.now()
    change = Change(
        name="jobs mark-succeeded",
        verb="mark succeeded",
        details={"filter": job_filter.describe()},
        sql=filtered_query("ops/jobs", "mark_succeeded"),
        params={
            **job_filter.binds(now),
            "eligible": list(MARKABLE_SUCCEEDED),
            "note": args.reason,
        },
    )
    return apply_from_args(
        db, settings, change, args, now=now, verb="mark succeeded", job_filter=job_filter
    )


def cmd_retry_failed(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args)
    if not job_filter.statuses:
        job_filter = job_filter.with_statuses(["failed"])
    return requeue(args, settings, db, job_filter, name="jobs retry-failed", eligible=REQUEUEABLE)


def cmd_cancel(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args).required(
        "jobs cancel needs job ids or a filter; refusing to cancel every job "
        "(e.g. reconciler jobs cancel 42, or --queue email --status queued)"
    )
    now = db.now()
    change = cancel_change(db, job_filter, now=now, reason=args.reason)
    return apply_from_args(
        db, settings, change, args, now=now, verb="cancel", job_filter=job_filter
    )


def cancel_change(
    db: Database, job_filter: JobFilter, *, now: datetime, reason: str | None
) -> Change:
    """``jobs cancel`` of ``job_filter`` as a change, its ids and statuses checked (the CLI
    and the dashboard's action build it here)."""
    check_statuses(job_filter, CANCELLABLE, "jobs cancel")
    check_ids(db, job_filter.ids, allowed=CANCELLABLE, verb="jobs cancel")
    given, job_filter = job_filter, resolve_limit(db, job_filter, now, CANCELLABLE)
    return Change(
        name="jobs cancel",
        verb="cancel",
        details={"filter": given.describe()},
        sql=filtered_query("ops/jobs", "cancel"),
        params={
            **job_filter.binds(now),
            "eligible": list(job_filter.statuses or CANCELLABLE),
            "note": reason,
        },
    )


def cmd_reset_stuck(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    def names(attr: str) -> list[str] | None:
        groups = getattr(args, attr, None) or []
        return [item for group in groups for item in group] or None

    ids = list(dict.fromkeys(args.ids or ()))
    if not ids and args.older_than is None:
        raise OpsError(
            "jobs reset-stuck needs job ids or --older-than (e.g. reconciler jobs reset-stuck 42, "
            "or --older-than 10m for every job silent that long)"
        )
    check_ids(db, ids, allowed=("running",), verb="jobs reset-stuck")
    params = {
        # Ids alone: the operator has judged these jobs stuck, however recent their heartbeat.
        "timeout": args.older_than if args.older_than is not None else timedelta(0),
        "queues": names("queue"),
        "kinds": names("kind"),
        "tenants": names("tenant"),
        "ids": ids or None,
    }
    result = apply(
        db,
        settings,
        "mark-stale",
        verb="mark stale",
        params=params,
        now=db.now(),
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
    )
    code = report_change(result, verb="mark stale", job_filter=None, as_json=args.json)
    code = report_unchanged(db, ids, result) or code
    if not args.json and result.changed and not result.dry_run:
        console().print(
            "the requeue task puts them back in the queue after their backoff (or dead-letter, "
            "with no attempts left); to do it now: reconciler run requeue"
        )
    return code
