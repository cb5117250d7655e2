"""Runs one task: reads the clock, records the run, calls the task, returns its result.

This is the only way a task runs. ``reconciler run``, the daemon and the tests
all call :func:`run_task`, so an ad hoc run behaves exactly like a scheduled one,
including the task's lease (see :mod:`reconciler.leases`): a run that finds
the task running elsewhere raises :class:`~reconciler.leases.TaskBusy`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from reconciler.db import Database, first_line
from reconciler.leases import Lease, LeaseLost, acquire, new_holder
from reconciler.profiles import tasks as profile_tasks
from reconciler.profiles.live import Bound
from reconciler.settings import Settings, check_batch_size
from reconciler.sqlfiles import query
from reconciler.tasks import TASKS, TaskContext, TaskFailed, TaskResult, get_task
from reconciler.tasks.base import Progress, RunStatus

# The error of a run that Ctrl-C (SIGINT) stopped; its runs row is closed as interrupted.
INTERRUPTED = "interrupted by the operator (SIGINT)"

if TYPE_CHECKING:
    from reconciler.tasks import Task

__all__ = ["default_actor", "lease_name", "profile_name", "run_task"]


def profile_name(profile: Bound | None) -> str:
    return "native" if profile is None else profile.profile.name


def lease_name(task: str, profile: Bound | None) -> str:
    """A task's lease for a profile: ``mark-stale``, or ``mark-stale@procrastinate``."""
    name = profile_name(profile)
    return task if name == "native" else f"{task}@{name}"


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
    name: str | Task,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int | None = None,
    time_budget: timedelta | None = None,
    batch_pause: float | None = None,
    actor: str | None = None,
    params: Mapping[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_start: Callable[[int], None] | None = None,
    holder: str | None = None,
    profile: Bound | None = None,
) -> TaskResult:
    """Run task ``name`` once and return what it did.

    ``now`` defaults to the database's clock, read once here; tests pass a
    fixed one. A dry run writes nothing, not even a ``runs`` row. Database
    errors do not raise: they end the run with status ``failed`` (what earlier
    batches committed stays committed and counted).

    A real run of a registered task first takes the task's lease, in the
    transaction that records the run; :class:`~reconciler.leases.TaskBusy`
    when another process holds it. An operator's one-off change (a Task built
    on the spot) takes none: two of them may run at once, and row locks keep
    them from touching the same job. ``should_stop`` is asked between batches
    (the daemon's shutdown); ``on_start(run_id)`` is called once the run is
    recorded (Sentry check-ins).
    ``holder`` names the lease's holder, by default unique to this run; the
    daemon, which never runs a task twice at once by itself, passes one name
    for its whole life, so it can take back a lease it could not release.
    ``batch_pause`` overrides RECONCILER_BATCH_PAUSE (a schedule entry's own).
    ``profile`` is the queue table to work on when it is not the reconciler's own
    (reconciler/profiles/): the run is recorded with the profile's name, takes the lease
    ``TASK@PROFILE``, and runs the profile's statements.
    """
    # ``name`` may also be a Task built on the spot: an operator's change (reconciler.ops).
    task = get_task(name) if isinstance(name, str) else name
    if batch_size is not None:
        check_batch_size(batch_size)
    if time_budget is not None and time_budget <= timedelta(0):
        raise ValueError(f"time_budget must be longer than zero, not {time_budget}")
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
    lease: Lease | None = None
    if not dry_run:
        with db.transaction() as conn:
            if TASKS.get(task.name) is task:
                lease = acquire(
                    conn, lease_name(task.name, profile), holder or new_holder(), settings.lease_ttl
                )
            run_id = conn.execute(
                text(query("runs", "start")),
                {
                    "task": task.name,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "actor": actor,
                    "profile": profile_name(profile),
                },
            ).scalar_one()
            if lease is not None:
                lease.attach_run(conn, run_id)
        if on_start is not None:
            on_start(run_id)
    ctx = TaskContext(
        db=db,
        settings=settings,
        now=now,
        dry_run=dry_run,
        batch_size=settings.batch_size if batch_size is None else batch_size,
        time_budget=settings.run_time_budget if time_budget is None else time_budget,
        actor=actor,
        run_id=run_id,
        params=dict(params or {}),
        lease=lease,
        should_stop=should_stop,
        profile=profile,
        adaptive=batch_size is None,
        batch_target=settings.batch_target,
        batch_min=settings.batch_min,
        batch_max=settings.batch_max,
        batch_pause=settings.batch_pause if batch_pause is None else batch_pause,
    )
    status: RunStatus = "ok"
    error: str | None = None
    try:
        if (
            profile is not None
            and profile.profile.kind != "native"
            and TASKS.get(task.name) is task
        ):
            profile_tasks.execute(task.name, ctx, profile)  # a task, on a profile's table
        else:
            task.execute(ctx)  # a native task, or an operator's change (its own statement)
    except (TaskFailed, LeaseLost, SQLAlchemyError, psycopg.Error) as exc:
        # psycopg.Error: vacuum-analyze works on the raw driver connection, so a
        # killed connection there arrives unwrapped; it is a failed run all the same.
        status, error = "failed", _error_text(exc)
        ctx.progress.stopped = "error"
    except KeyboardInterrupt:
        # Ctrl-C: the batch under way rolls back with its transaction. Close the record
        # now, as interrupted, and free the lease, rather than leave both to the next
        # holder after RECONCILER_LEASE_TTL; then let the interrupt end the command.
        if run_id is not None:
            with contextlib.suppress(SQLAlchemyError):
                _finish(db, run_id, lease, "interrupted", INTERRUPTED, ctx.progress)
        raise
    progress = ctx.progress
    if run_id is not None:
        try:
            _finish(db, run_id, lease, status, error, progress)
        except SQLAlchemyError as exc:
            # The work is done and committed; only its record could not be closed.
            # Once more on a fresh connection (the pool replaces a killed one); if
            # that fails too, the lease expires by itself after RECONCILER_LEASE_TTL.
            try:
                _finish(db, run_id, lease, status, error, progress)
            except SQLAlchemyError:
                status = "failed"
                error = (
                    f"{error + '; ' if error else ''}could not record the run: {_error_text(exc)}"
                )
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
        other_work=progress.other_work,
        notes=tuple(progress.notes),
        profile=profile_name(profile),
    )


def _finish(
    db: Database,
    run_id: int,
    lease: Lease | None,
    status: RunStatus | Literal["interrupted"],
    error: str | None,
    progress: Progress,
) -> None:
    """Record the run's outcome and release its lease, in one transaction."""
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
        if lease is not None:
            lease.release(conn)
