"""``reconciler errors``: failed attempts of the last hour (or ``--since``), by message and kind.

Read-only. Every failed attempt counts, also of jobs that have been retried
since (the history in ``job_events`` keeps them); a lost worker counts as a
failure with the message ``(no heartbeat: worker lost)``.
"""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.db import Database
from reconciler.ops.filter import JobFilter, filtered_query
from reconciler.ops.output import age, console, emit_json_lines, table
from reconciler.settings import Settings

__all__ = ["cmd_errors", "recent_errors"]


def recent_errors(db: Database, job_filter: JobFilter, since: Any) -> list[dict[str, Any]]:
    now = db.now()
    return db.rows(
        filtered_query("ops/errors", "by_message"),
        {**job_filter.binds(now), "since": now - since, "limit": job_filter.limit or 50},
    )


def cmd_errors(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    rows = recent_errors(db, JobFilter.from_args(args), args.since)
    if args.json:
        emit_json_lines(rows)
        return 0
    console().print(
        table(
            f"failed attempts in the last {age(args.since)}, by message and kind "
            f"({sum(r['failures'] for r in rows)} failure(s))",
            ("failures", "jobs", "error", "kind", "first", "last", "e.g. job"),
            [
                (
                    r["failures"],
                    r["jobs"],
                    r["error"],
                    r["kind"],
                    r["first_at"],
                    r["last_at"],
                    r["example_id"],
                )
                for r in rows
            ],
            right=("failures", "jobs", "e.g. job"),
        )
    )
    return 0
