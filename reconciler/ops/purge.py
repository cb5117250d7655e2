"""``reconciler purge --older-than 30d [--status ...]``: an ad hoc run of the purge task.

The same task, SQL and batches as the scheduled purge (see
reconciler/tasks/purge.py), with the operator's age in place of the retention
settings, for the chosen finished statuses (default: succeeded and
cancelled). Dead jobs are only purged here when every one of them has an
export (``reconciler dead-letter export``) or with ``--no-backup``, as with
``dead-letter purge``. Safe to re-run.
"""

from __future__ import annotations

import argparse

from reconciler.db import Database
from reconciler.durations import format_duration
from reconciler.ops.backed_up import refuse_unless_backed_up, report_left
from reconciler.ops.changes import apply
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import JobFilter
from reconciler.ops.report import report_change
from reconciler.runner import default_actor
from reconciler.settings import Settings

__all__ = ["PURGEABLE", "cmd_purge"]

PURGEABLE = ("succeeded", "cancelled", "dead")


def cmd_purge(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    statuses = list(
        dict.fromkeys(s for group in args.status or [["succeeded", "cancelled"]] for s in group)
    )
    wrong = [s for s in statuses if s not in PURGEABLE]
    if wrong:
        raise OpsError(
            f"purge deletes finished jobs (succeeded, cancelled or dead), not {wrong[0]}: "
            "those are still being worked on or retried"
        )
    now = db.now()
    dead = JobFilter(statuses=("dead",), older_than=args.older_than)
    guarded = "dead" in statuses and not args.no_backup
    if guarded:
        refuse_unless_backed_up(
            db,
            dead,
            now,
            f"reconciler dead-letter export --older-than {format_duration(args.older_than)} "
            "--output FILE",
        )
    result = apply(
        db,
        settings,
        "purge",
        verb="purge",
        params={
            "statuses": statuses,
            "older_than": args.older_than,
            # The backup rule again in the deleting statement, under the row locks.
            "require_backup": guarded,
        },
        now=now,
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
    )
    code = report_change(result, verb="purge", job_filter=None, as_json=args.json)
    if guarded and not args.dry_run:
        return report_left(db, dead, now) or code
    return code
