"""purge: delete finished jobs past their retention, with their events.

What it changes: deletes ``succeeded``, ``cancelled`` and ``dead`` jobs whose
``finished_at`` is older than that status's retention (defaults 30 d, 30 d and
90 d; ``RECONCILER_RETENTION_*``), together with their ``job_events`` rows in
the same statement (with a partitioned ledger, ``RECONCILER_EVENTS_PARTITIONING``,
the events stay until the ``partitions`` task drops their partition); then
deletes the reconciler's own ``runs`` records older than
``RECONCILER_RETENTION_RUNS``. Counts appear as ``succeeded->purged``.
``queued``, ``running``, ``failed`` and ``stale`` jobs are never purged: they
are not finished.

Why: a job table that only grows makes every scan, vacuum and backup slower;
runbooks delete old rows by hand with one huge DELETE that locks for minutes.
Here each batch is its own short transaction.

Safe to re-run: yes. Deleted rows are gone; nothing younger than its
retention is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from reconciler.backups import spliced
from reconciler.sqlfiles import query
from reconciler.tasks.base import Task, TaskContext

__all__ = ["TASK"]


def execute(ctx: TaskContext) -> None:
    retention = ctx.settings.retention()
    with ctx.db.transaction() as conn:
        partitioned = conn.execute(text(query("tasks/partitions", "layout"))).scalar()
    # A partitioned ledger loses its events by partition (the partitions task), not here.
    statement = "apply_partitioned" if partitioned else "apply"
    statuses = ctx.params.get("statuses") or list(retention)
    for status in statuses:
        reason = ctx.stop_reason()
        if reason is not None and not ctx.dry_run:
            ctx.progress.stopped = reason
            return
        horizon = ctx.now - ctx.params.get("older_than", retention[status])
        ctx.run_batches(
            spliced(query("tasks/purge", statement)),
            {
                "status": status,
                "horizon": horizon,
                # Ad hoc `purge --status dead`: only what a durable export holds as it is now.
                "require_backup": status == "dead" and bool(ctx.params.get("require_backup")),
                "after_finished": None,
                "after_id": None,
            },
            advance=_after_last,
        )
    if ctx.params.get("statuses"):
        return  # an ad hoc purge of chosen statuses leaves the run records alone
    runs_horizon = ctx.now - ctx.settings.retention_runs
    removed = 0
    while True:
        with ctx.db.transaction(rollback=ctx.dry_run) as conn:
            batch = len(
                conn.execute(
                    text(query("tasks/purge", "runs")),
                    {"runs_horizon": runs_horizon, "batch_size": ctx.batch_size},
                ).all()
            )
            ctx.renew_lease(conn)
        removed += batch
        if batch < ctx.batch_size or ctx.dry_run or ctx.stop_reason() is not None:
            break
    ctx.progress.details["runs_deleted"] = removed
    ctx.progress.other_work += removed
    if removed:
        verb = "would delete" if ctx.dry_run else "deleted"
        ctx.progress.notes.append(f"old run records {verb}: {removed}")


def _after_last(rows: Sequence[Any]) -> dict[str, Any]:
    """The keyset of the next batch: after the last (finished_at, id) this one deleted
    (every row of a batch, one per status, carries the batch's last)."""
    last = max(rows, key=lambda row: (row.last_finished, row.last_id))
    return {"after_finished": last.last_finished, "after_id": last.last_id}


TASK = Task(
    name="purge",
    summary="delete succeeded, cancelled and dead jobs past their retention, with their events",
    execute=execute,
)
