"""The statement each transition task runs per batch, with exactly the parameters it binds.

The benchmark and ``tests/integration/test_indexes.py`` both need what a task
sends to the database for one batch. Rather than copy each task's parameter
building, :func:`task_statements` runs the task's own ``execute`` with a
context that records its ``run_batches`` calls instead of running them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from reconciler.db import Database
from reconciler.settings import Settings
from reconciler.tasks import TaskContext, get_task

__all__ = ["TRANSITION_TASKS", "Statement", "task_statements"]

# The tasks that select rows with one batched statement (vacuum-analyze does not).
TRANSITION_TASKS = ("mark-stale", "requeue", "dead-letter", "purge")


@dataclass(frozen=True)
class Statement:
    """One batched statement of a task: ``purge[dead]`` is purge's pass over dead jobs."""

    label: str
    sql: str
    params: Mapping[str, Any]


@dataclass
class _Recorder(TaskContext):
    """A task context whose batch loop records the statement instead of running it."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def run_batches(
        self,
        sql: str,
        params: Mapping[str, Any],
        *,
        committed: Callable[[Sequence[Any]], None] | None = None,
        search_path: str | None = None,
    ) -> None:
        # The same binds as TaskContext.run_batches gives every batch.
        bound = {"now": self.now, "actor": self.actor, "run_id": self.run_id, **params}
        self.calls.append((sql, {**bound, "batch_size": self.batch_size}))


def task_statements(
    db: Database, settings: Settings, task: str, *, now: datetime, batch_size: int
) -> list[Statement]:
    """What ``task`` runs per batch at ``now``: one statement, or one per purged status.

    purge also trims the ``runs`` table directly; the recorder runs it as a dry
    run, so that is rolled back.
    """
    ctx = _Recorder(
        db=db,
        settings=settings,
        now=now,
        dry_run=True,
        batch_size=batch_size,
        time_budget=timedelta(hours=1),
        actor=f"reconciler:{task}",
        run_id=None,
    )
    get_task(task).execute(ctx)
    return [
        Statement(f"{task}[{params['status']}]" if "status" in params else task, sql, params)
        for sql, params in ctx.calls
    ]
