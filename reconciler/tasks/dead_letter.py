"""dead-letter: failed or stale jobs with no attempts left become ``dead``.

What it changes: ``failed -> dead`` and ``stale -> dead`` for jobs with
``attempt >= max_attempts``; ``finished_at`` becomes the time of death, from
which the dead retention counts. The event's reason keeps the last error.

Why: a job that keeps failing must stop being retried and be put where an
operator looks (``reconciler`` lists, exports and replays dead jobs), instead
of staying ``failed`` forever and hiding in the failure counts.

Safe to re-run: yes. A dead job no longer matches; requeue's predicate is the
exact complement, so a job is never both requeued and dead-lettered.
"""

from __future__ import annotations

from reconciler.signals import dead_lettered
from reconciler.sqlfiles import query
from reconciler.tasks.base import Task, TaskContext

__all__ = ["TASK"]


def execute(ctx: TaskContext) -> None:
    signals = dead_lettered(ctx.settings, run_id=ctx.run_id)
    ctx.run_batches(query("tasks/dead_letter", "apply"), {}, committed=signals.jobs)
    signals.finish()


TASK = Task(
    name="dead-letter",
    summary="failed or stale jobs with no attempts left become dead",
    execute=execute,
)
