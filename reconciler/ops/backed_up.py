"""The one "not backed up" guard of ``dead-letter purge`` and ``purge --status dead``.

Before: refuse while any dead job of the filter has no durable export since
its last change (:func:`refuse_unless_backed_up`). During: the deleting
statement itself skips such a job, under its row lock (sql/backup.sql).
After: :func:`report_left` says what the statement left, a job
that changed between the preview and the delete, so the command can say so.
"""

from __future__ import annotations

import sys
from datetime import datetime

from sqlalchemy import text

from reconciler.backups import spliced
from reconciler.db import Database
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import JobFilter, filtered_query

__all__ = ["refuse_unless_backed_up", "report_left"]


def refuse_unless_backed_up(db: Database, job_filter: JobFilter, now: datetime, how: str) -> None:
    """The preview of the rule: refuse (one line, exit 2) while any dead job of ``job_filter``
    is not backed up; ``how`` is the export command that would back them up."""
    with db.transaction() as conn:
        missing = conn.execute(
            text(spliced(filtered_query("ops/backed_up", "not_backed_up"))),
            job_filter.binds(now),
        ).one()
    if missing.jobs:
        raise OpsError(
            f"{missing.jobs} of these dead jobs (e.g. job {missing.example_id}) have no export "
            f"to a file since their last change; back them up first: {how} (or pass --no-backup)"
        )


def report_left(db: Database, job_filter: JobFilter, now: datetime) -> int:
    """After a purge: say (exit 1) when its statement left dead jobs of ``job_filter`` that were
    not backed up when it locked them (changed since their export, e.g. replayed and dead
    again); 0 when it left none."""
    with db.transaction() as conn:
        left = int(
            conn.execute(
                text(spliced(filtered_query("ops/backed_up", "not_backed_up"))),
                job_filter.binds(now),
            )
            .one()
            .jobs
        )
    if not left:
        return 0
    sys.stderr.write(
        f"reconciler: {left} dead job(s) not deleted: changed since their export (e.g. "
        "replayed and dead again); export them again to purge them\n"
    )
    return 1
