"""Runs one task: reads the clock, records the run, calls the task, returns its result.

This is the only way a task runs. ``reconciler run``, the daemon and the tests
all call :func:`run_task`, so an ad hoc run behaves exactly like a scheduled one.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from reconciler.db import Database, first_line
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from reconciler.tasks import TaskContext, TaskFailed, TaskResult, get_task

__all__ = ["default_actor", "run_task"]


def default_actor() -> str:
    """``cli:<os user>`` for people at a terminal."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SQLAlchemyError) and getattr(exc, "orig", None) is not None:
        return first_line(exc.orig)  # type: ignore[attr-defined]
    return first_line(exc)


def run_task(
    db: Database,
    settings: Settings,
    name: str,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int | None = None,
    time_budget: timedelta | None = None,
    actor: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> TaskResult:
    """Run task ``name`` once and return what it did.

    ``now`` defaults to the database's clock, read once here; tests pass a
    fixed one. A dry run writes nothing, not even a ``runs`` row. Database
    errors do not raise: they end the run with status ``failed`` (what earlier
    batches committed stays committed and counted).
    """
    task = get_task(name)
    started = time.monotonic()
    actor = actor or f"reconciler:{task.name}"
    if now is None:
        now = db.now()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (the database's clock)")
    # UTC, so Python-side horizons (now - retention) are absolute: psycopg hands
    # back timestamptz in the session's TimeZone, where "30 days earlier" is
    # wall-clock arithmetic and moves by an hour across a DST change.
    now = now.astimezone(UTC)
    run_id: int | None = None
    if not dry_run:
        with db.transaction() as conn:
            run_id = conn.execute(
                text(query("runs", "start")),
                {
                    "task": task.name,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "actor": actor,
                },
            ).scalar_one()
    ctx = TaskContext(
        db=db,
        settings=settings,
        now=now,
        dry_run=dry_run,
        batch_size=batch_size or settings.batch_size,
        time_budget=time_budget or settings.run_time_budget,
        actor=actor,
        run_id=run_id,
        params=dict(params or {}),
    )
    status, error = "ok", None
    try:
        task.execute(ctx)
    except (TaskFailed, SQLAlchemyError, psycopg.Error) as exc:
        # psycopg.Error: vacuum-analyze works on the raw driver connection, so a
        # killed connection there arrives unwrapped; it is a failed run all the same.
        status, error = "failed", _error_text(exc)
        ctx.progress.stopped = "error"
    progress = ctx.progress
    if run_id is not None:
        try:
            with db.transaction() as conn:
                conn.execute(
                    text(query("runs", "finish")),
                    {
                        "id": run_id,
                        "status": status,
                        "transitions": json.dumps(dict(progress.transitions)),
                        "batches": progress.batches,
                        "details": json.dumps(progress.details, default=str),
                        "error": error,
                    },
                )
        except SQLAlchemyError as exc:
            # The work is done and committed; only its record could not be closed.
            status = "failed"
            error = f"{error + '; ' if error else ''}could not record the run: {_error_text(exc)}"
    return TaskResult(
        task=task.name,
        status=status,
        dry_run=dry_run,
        now=now,
        transitions=dict(progress.transitions),
        batches=progress.batches,
        duration_ms=round((time.monotonic() - started) * 1000),
        stopped=progress.stopped,
        sample_ids=tuple(progress.sample_ids),
        details=dict(progress.details),
        run_id=run_id,
        error=error,
    )
