"""Reporting a change: what it did (or would do), and every named job it did not change."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.filter import JobFilter
from reconciler.ops.output import console, emit_json, table
from reconciler.sqlfiles import query
from reconciler.tasks import TaskResult

__all__ = ["report_change", "report_unchanged"]


def report_change(
    result: TaskResult, *, verb: str, job_filter: JobFilter | None, as_json: bool
) -> int:
    """Print what a change did (or would do); the exit code: 0, or 1 when it failed."""
    if as_json:
        payload = result.to_dict()
        if job_filter is not None:
            payload["filter"] = job_filter.describe()
        emit_json(payload)
    else:
        out = console()
        if result.changed == 0 and result.status == "ok":
            out.print(f"{result.task}: no job matches; nothing changed")
        elif result.dry_run:
            more = "at least " if result.stopped == "dry_run_limit" else ""
            out.print(f"dry run, nothing written: would {verb} {more}{result.changed} job(s)")
        else:
            batches = f"{result.batches} batch{'es' if result.batches != 1 else ''}"
            out.print(
                f"{result.task}: changed {result.changed} job(s) in {batches} "
                f"({result.duration_ms} ms), recorded as run {result.run_id}"
            )
        if result.transitions:
            rows = sorted(result.transitions.items())
            out.print(table(None, ("from -> to", "jobs"), rows, right=("jobs",)))
        if result.sample_ids:
            out.print(f"e.g. job ids {', '.join(map(str, result.sample_ids))}")
        for note in result.notes:
            out.print(note)
        if result.error:
            out.print(f"failed: {result.error}")
    return 0 if result.status == "ok" else 1


def report_unchanged(
    db: Database, ids: Sequence[int], result: TaskResult, *, deletes: bool = False
) -> int:
    """After a change of named job ids: one line per id it did not change, and why; 1 if any.

    A named job is never passed over silently: held by another transaction past the lock
    timeout (the change failed), or moved meanwhile to a status the change does not take.
    """
    if not ids or result.dry_run:
        return 0
    with db.transaction() as conn:
        changed = set(
            conn.execute(
                text(query("ops/report", "changed_by_run")),
                {"ids": list(ids), "run_id": result.run_id},
            ).scalars()
        )
        now = {
            row.id: row.status
            for row in conn.execute(text(query("ops/filter", "statuses_of")), {"ids": list(ids)})
        }
    # A deleted job's events go with it: for a purge, gone is done.
    missed = [i for i in ids if i not in changed and not (deletes and i not in now)]
    for job_id in missed:
        why = (
            "another transaction held it past RECONCILER_LOCK_TIMEOUT; try again"
            if result.status != "ok"
            else f"it is {now.get(job_id, 'gone')} now"
        )
        sys.stderr.write(f"reconciler: job {job_id} not changed: {why}\n")
    return 1 if missed else 0
