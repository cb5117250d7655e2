"""partitions: create the partitioned ledger's partitions ahead, drop those past retention.

What it changes: with a partitioned ``job_events`` (``RECONCILER_EVENTS_PARTITIONING``
= day or month, applied by ``migrate``), creates the partitions that reach
``RECONCILER_EVENTS_PARTITIONS_AHEAD`` past now, then drops, oldest first and
one per transaction, every partition whose every event is older than
``RECONCILER_RETENTION_EVENTS``. With the plain table it does nothing (purge
deletes a job's events with it there).

Why: dropping a partition frees a day's or a month's events at the cost of a
catalog change, where deleting them row by row writes and vacuums every row
(README, A partitioned ledger, for the figures). Partitions are made ahead so
an event always finds one: there is no DEFAULT partition (it would have to be
scanned under lock whenever a partition is created); should the daemon stay
stopped past the last partition, events are refused (the transition with
them, never one without the other) and ``check`` has warned a day before.

Locks: creating takes SHARE UPDATE EXCLUSIVE on ``job_events`` (workers keep
inserting); dropping takes ACCESS EXCLUSIVE for a catalog change, waiting at
most ``RECONCILER_LOCK_TIMEOUT`` (a long transaction on ``job_events`` makes the
drop give up; the next run tries again). Two replicas at once serialise on the
task lease and, inside the functions, on an advisory lock.

Safe to re-run: yes. A dry run lists the partitions it would drop, changing nothing.
"""

from __future__ import annotations

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from reconciler.sqlfiles import query
from reconciler.tasks.base import Task, TaskContext, TaskFailed

__all__ = ["TASK"]


def execute(ctx: TaskContext) -> None:
    with ctx.db.transaction() as conn:
        partitioned = conn.execute(text(query("tasks/partitions", "layout"))).scalar()
    if not partitioned:
        ctx.progress.details["partitioned"] = False
        return
    unit = ctx.settings.events_partitioning
    if unit == "none":
        raise TaskFailed(
            "job_events is partitioned but RECONCILER_EVENTS_PARTITIONING is none: set it to "
            "the layout's unit (day or month) so its partitions are created ahead"
        )
    horizon = ctx.now - ctx.params.get("older_than", ctx.settings.retention_events)
    if ctx.dry_run:
        with ctx.db.transaction(rollback=True) as conn:
            doomed = conn.execute(
                text(query("tasks/partitions", "pending_drop")), {"horizon": horizon}
            ).all()
        _report(ctx, [], [(r.name, r.estimated_rows) for r in doomed])
        return
    with ctx.db.transaction() as conn:
        created = [
            row.name
            for row in conn.execute(
                text(query("tasks/partitions", "ensure")),
                {"upto": ctx.now + ctx.settings.events_partitions_ahead, "unit": unit},
            )
        ]
        ctx.renew_lease(conn)
    dropped: list[tuple[str, int]] = []
    while ctx.stop_reason() is None:
        try:
            with ctx.db.transaction() as conn:
                row = conn.execute(
                    text(query("tasks/partitions", "drop")), {"horizon": horizon}
                ).first()
                ctx.renew_lease(conn)
        except DBAPIError as exc:
            if not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                raise
            # A transaction on job_events outlasted the lock_timeout: the drop gave up
            # rather than hold the workers' inserts queued behind it; the next run retries.
            ctx.progress.details["drop_gave_up"] = "lock_timeout"
            ctx.progress.notes.append(
                "a partition drop gave up after RECONCILER_LOCK_TIMEOUT (a transaction held "
                "job_events); the next run tries again"
            )
            break
        if row is None:
            break
        dropped.append((row.name, row.estimated_rows))
        ctx.progress.batches += 1
    else:
        ctx.progress.stopped = ctx.stop_reason() or "done"
    _report(ctx, created, dropped)


def _report(ctx: TaskContext, created: list[str], dropped: list[tuple[str, int]]) -> None:
    ctx.progress.details.update(
        partitioned=True,
        partitions_created=created,
        partitions_dropped=[name for name, _ in dropped],
        events_dropped_estimate=sum(rows for _, rows in dropped),
    )
    ctx.progress.other_work += len(created) + len(dropped)
    if created:
        ctx.progress.notes.append(f"partitions created ahead: {', '.join(created)}")
    if dropped:
        verb = "would drop" if ctx.dry_run else "dropped"
        ctx.progress.notes.append(
            f"partitions {verb}: {', '.join(name for name, _ in dropped)} "
            f"(about {sum(rows for _, rows in dropped)} events)"
        )


TASK = Task(
    name="partitions",
    summary="partitioned ledger only: create job_events partitions ahead, drop those past "
    "retention",
    execute=execute,
)
