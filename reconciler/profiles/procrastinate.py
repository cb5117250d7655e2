"""The built-in ``procrastinate`` profile: Procrastinate 3.x's own schema.

Procrastinate keeps jobs in ``procrastinate_jobs`` (todo, doing, succeeded,
failed, cancelled, aborted), workers and their heartbeats in
``procrastinate_workers``, and an event per transition in
``procrastinate_events``, written by its triggers. In the reconciler's words
``todo`` is queued, ``doing`` running, and Procrastinate's ``failed`` is
dead: a failed job is one Procrastinate itself will not retry.

Stalled: ``doing`` whose worker row is gone or silent past the heartbeat
timeout. Recovery goes through Procrastinate's own functions
(``procrastinate_retry_job_v2``, or ``_v1`` on an older 3.x, and
``procrastinate_finish_job_v1``), so its events and triggers fire and the
reconciler writes no status, column or row Procrastinate would not write.
Attempts allowed come from the reconciler's retry policy for the job's task
name (``reconciler policies set --kind TASK_NAME``), else the default
priority's. Purge deletes finished jobs whose last event is past retention,
in batches, with their events. requeue and dead-letter have nothing to do:
Procrastinate retries failed attempts itself, and its ``failed`` is final.

The statements are in sql/profiles/procrastinate.sql.
"""

from __future__ import annotations

from sqlalchemy import text

from reconciler.db import Database
from reconciler.profiles.model import Profile, ProfileError, WorkerTable
from reconciler.sqlfiles import query

__all__ = ["PURGE_RETENTION", "functions", "profile"]

# Which retention setting each finished status keeps to.
PURGE_RETENTION = {
    "succeeded": "succeeded",
    "cancelled": "cancelled",
    "aborted": "cancelled",
    "failed": "dead",
}


def profile(schema: str = "public") -> Profile:
    return Profile(
        name="procrastinate",
        kind="procrastinate",
        schema=schema,
        table="procrastinate_jobs",
        id="id",
        status="status",
        states={
            "queued": "todo",
            "running": "doing",
            "succeeded": "succeeded",
            "dead": "failed",
            "cancelled": "cancelled",
        },
        columns={
            "attempts": "attempts",
            "queue": "queue_name",
            "kind": "task_name",
            "priority": "priority",
            "worker": "worker_id",
            "payload": "args",
            "run_at": "scheduled_at",
        },
        attempts_counted="failure",
        worker_table=WorkerTable(
            schema=schema, table="procrastinate_workers", id="id", heartbeat="last_heartbeat"
        ),
    )


def functions(db: Database, schema: str) -> tuple[str, str]:
    """(retry, finish) function names this Procrastinate has; ProfileError when it has none."""
    found = {}
    with db.engine.connect() as conn:
        for name in (
            "procrastinate_retry_job_v2",
            "procrastinate_retry_job_v1",
            "procrastinate_finish_job_v1",
        ):
            found[name] = conn.execute(
                text(query("profiles/catalog", "function_exists")),
                {"schema": schema, "name": name},
            ).scalar_one()
    retry = next(
        (n for n in ("procrastinate_retry_job_v2", "procrastinate_retry_job_v1") if found[n]),
        None,
    )
    if retry is None or not found["procrastinate_finish_job_v1"]:
        raise ProfileError(
            f"profile procrastinate: schema {schema!r} has no procrastinate_retry_job_v1/v2 or"
            " procrastinate_finish_job_v1; apply Procrastinate 3.x's schema"
            " (procrastinate schema --apply)"
        )
    return retry, "procrastinate_finish_job_v1"
