"""requeue: failed or stale jobs with attempts left go back to ``queued``.

What it changes: ``failed -> queued`` and ``stale -> queued`` for jobs with
``attempt < max_attempts`` whose backoff has elapsed; ``run_at`` becomes the
run's now, so the job is due at once. The backoff is the job's retry policy
(table ``retry_policies``: its kind's row, else its priority's):
``min(max_delay, initial_delay * multiplier^(attempt-1))``, spread by the
policy's jitter, counted from the end of the failed attempt.

Why: transient failures (a timeout, a restarted dependency) should heal by
themselves, but not in a hot loop that hammers what just failed.

Safe to re-run: yes. A requeued job is ``queued`` and no longer matches; a
job whose backoff has not elapsed is left for a later run. ``attempt`` is
never changed here: claim() increments it when the next attempt starts.
"""

from __future__ import annotations

from reconciler.sqlfiles import query
from reconciler.tasks.base import Task, TaskContext

__all__ = ["TASK"]


def execute(ctx: TaskContext) -> None:
    ctx.run_batches(query("tasks/requeue", "apply"), {})


TASK = Task(
    name="requeue",
    summary="failed or stale jobs with attempts left go back to queued after their backoff",
    execute=execute,
)
