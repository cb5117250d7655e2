"""The registry of tasks: one module and one SQL file per task, listed here by hand.

The CLI (``reconciler run NAME``), the daemon and the tests all look tasks up
here and run them through :func:`reconciler.runner.run_task`.
"""

from __future__ import annotations

from reconciler.tasks import (
    dead_letter,
    mark_stale,
    partitions,
    purge,
    reindex,
    requeue,
    vacuum_analyze,
)
from reconciler.tasks.base import Task, TaskContext, TaskFailed, TaskResult

__all__ = ["TASKS", "Task", "TaskContext", "TaskFailed", "TaskResult", "get_task"]

# In the order a healthy cycle wants them: find the dead, retry or bury the
# failed, then clean up.
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        mark_stale.TASK,
        requeue.TASK,
        dead_letter.TASK,
        purge.TASK,
        partitions.TASK,
        vacuum_analyze.TASK,
        reindex.TASK,
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; a KeyError's message lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
