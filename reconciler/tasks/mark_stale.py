"""mark-stale: running jobs whose worker stopped heartbeating become ``stale``.

What it changes: ``running -> stale`` for jobs whose last heartbeat (or
``locked_at`` when the worker never sent one) is older than the heartbeat
timeout of the job's kind, else its queue, else the default. The lock is
cleared and the event's reason records the worker, its last heartbeat and
the heartbeat's age, so an operator can tell a crash from a slow worker.

Why: a worker that crashed never reports; without this its job stays
``running`` forever. ``stale`` is not a retry by itself: requeue or
dead-letter decide next, by the job's attempts and retry policy.

Parameters (ad hoc runs): ``timeout`` replaces every heartbeat timeout;
``queues``, ``kinds``, ``tenants`` and ``ids`` narrow the run to those jobs.

Safe to re-run: yes. A second run finds nothing (the rows are no longer
running), and a job whose heartbeat lands while the run is under way is never
marked stale (see sql/tasks/mark_stale.sql). The late worker's
heartbeat/complete/fail then return false: it has been fenced out.
"""

from __future__ import annotations

from reconciler.heartbeat import HeartbeatRule, spliced
from reconciler.sqlfiles import locking, query
from reconciler.tasks.base import Task, TaskContext

__all__ = ["TASK"]


def execute(ctx: TaskContext) -> None:
    # `jobs reset-stuck --older-than 10m` passes one timeout for every job.
    rule = HeartbeatRule.from_settings(ctx.settings, only=ctx.params.get("timeout"))
    ctx.run_batches(
        # Jobs named by id (reset-stuck ID) are waited for; any other running row a worker
        # holds this instant is skipped: it is alive, or the next run takes it.
        locking(spliced(query("tasks/mark_stale", "apply")), wait=bool(ctx.params.get("ids"))),
        {
            **rule.binds(),
            # Optional narrowing (`jobs reset-stuck --queue/--kind/--tenant`); None: every job.
            "only_queues": ctx.params.get("queues"),
            "only_kinds": ctx.params.get("kinds"),
            "only_tenants": ctx.params.get("tenants"),
            # `jobs reset-stuck ID...`: these jobs, whatever their silence.
            "only_ids": ctx.params.get("ids"),
        },
    )


TASK = Task(
    name="mark-stale",
    summary="running jobs with no heartbeat within the timeout become stale",
    execute=execute,
)
