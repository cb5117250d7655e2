"""``reconciler dead-letter``: list, errors, export, replay, purge.

The dead letters are the jobs with status ``dead`` (the dead-letter task puts
failed or stale jobs with no attempts left there). An operator groups them by
error, backs them up, replays the ones a fix has made good, and clears the
rest.

- export: see ``reconciler/ops/export.py``.
- replay: dead -> queued, the same statement as ``jobs requeue``.
- purge: deletes dead jobs with their events, and refuses while any of them
  has no export taken since its last change (``--no-backup`` overrides).
  Safe to re-run: deleted jobs are gone, the rest is left alone.
"""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.backups import spliced
from reconciler.db import Database
from reconciler.ops.backed_up import refuse_unless_backed_up, report_left
from reconciler.ops.changes import Change, apply_from_args
from reconciler.ops.filter import JobFilter, check_ids, dead_filter, filtered_query, resolve_limit
from reconciler.ops.listing import list_jobs, print_jobs
from reconciler.ops.output import console, emit_json_lines, table
from reconciler.ops.requeue import requeue
from reconciler.ops.vocabulary import DEAD
from reconciler.settings import Settings

__all__ = ["cmd_errors", "cmd_list", "cmd_purge", "cmd_replay", "dead_errors"]


def cmd_list(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = dead_filter(args)
    check_ids(db, job_filter.ids)
    rows = list_jobs(db, job_filter, limit=job_filter.limit or 50)
    if args.json:
        emit_json_lines(rows)
    else:
        print_jobs(rows, title=f"{len(rows)} dead job(s), newest first")
    return 0


def dead_errors(db: Database, job_filter: JobFilter) -> list[dict[str, Any]]:
    """Dead jobs grouped by error, kind and tenant, the biggest group first."""
    now = db.now()
    return db.rows(
        filtered_query("ops/dead_letter", "errors"),
        {**job_filter.binds(now), "limit": job_filter.limit or 50},
    )


def cmd_errors(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    rows = dead_errors(db, dead_filter(args))
    if args.json:
        emit_json_lines(rows)
        return 0
    console().print(
        table(
            f"dead jobs by error, kind and tenant ({sum(r['jobs'] for r in rows)} job(s))",
            ("jobs", "error", "kind", "tenant", "first dead", "last dead", "e.g. job"),
            [
                (
                    r["jobs"],
                    r["error"],
                    r["kind"],
                    r["tenant_id"],
                    r["first_dead_at"],
                    r["last_dead_at"],
                    r["example_id"],
                )
                for r in rows
            ],
            right=("jobs", "e.g. job"),
        )
    )
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args).required(
        "dead-letter replay needs job ids or a filter (e.g. --kind export), "
        "or --all for every dead job",
        everything=args.all,
    )
    return requeue(
        args, settings, db, job_filter.with_statuses(DEAD), name="dead-letter replay", eligible=DEAD
    )


def cmd_purge(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args).required(
        "dead-letter purge needs job ids or a filter (e.g. --older-than 30d, --kind export), "
        "or --all for every dead job",
        everything=args.all,
    )
    job_filter = job_filter.with_statuses(DEAD)
    check_ids(db, job_filter.ids, allowed=DEAD, verb="dead-letter purge")
    now = db.now()
    given, job_filter = job_filter, resolve_limit(db, job_filter, now, DEAD)
    if not args.no_backup:
        refuse_unless_backed_up(
            db, job_filter, now, "reconciler dead-letter export ... --output FILE"
        )
    change = Change(
        name="dead-letter purge",
        verb="purge",
        details={"filter": given.describe()},
        sql=spliced(filtered_query("ops/dead_letter", "purge")),
        params={**job_filter.binds(now), "no_backup": bool(args.no_backup)},
        deletes=True,
    )
    code = apply_from_args(db, settings, change, args, now=now, verb="purge", job_filter=given)
    if args.no_backup or args.dry_run:
        return code
    return report_left(db, job_filter, now) or code
