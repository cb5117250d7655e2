"""The five tasks, for a profile's table (the native ones are reconciler/tasks/).

The runner calls :func:`execute` instead of the task's own module when a run
is for a profile other than ``native``. Each task is the same batch loop
(:meth:`TaskContext.run_batches`: one short transaction per batch, the
lease renewed in each, a dry run rolled back) over the profile's statement
from sql/profiles/table.sql or sql/profiles/procrastinate.sql. A task the
profile's table cannot support (requeue on a table with no failed or stale
state) does nothing and says why in the run's notes.
"""

from __future__ import annotations

from typing import Any

from reconciler.db import Database, quote_ident
from reconciler.heartbeat import HeartbeatRule
from reconciler.profiles.live import Bound
from reconciler.profiles.model import Profile
from reconciler.profiles.procrastinate import PURGE_RETENTION, functions
from reconciler.profiles.statements import fill, ident, markers, render
from reconciler.sqlfiles import locking, query
from reconciler.tasks import vacuum_analyze
from reconciler.tasks.base import TaskContext

__all__ = ["execute", "queue_tables", "statement", "unsupported"]


def queue_tables(profile: Profile) -> tuple[str, ...]:
    """The tables of ``profile.schema`` its queue churns: vacuumed, and judged by check."""
    if profile.kind == "procrastinate":
        return (profile.table, "procrastinate_events", "procrastinate_workers")
    return (profile.table,)


def search_path(db: Database, bound: Bound) -> str | None:
    """Procrastinate's functions find its tables and types by the caller's search_path:
    its schema goes after the reconciler's (and before pg_temp) for its statements."""
    if bound.profile.kind != "procrastinate":
        return None
    return f"{quote_ident(db.schema)}, {quote_ident(bound.profile.schema)}, pg_temp"


def _binds(ctx: TaskContext, bound: Bound) -> dict[str, Any]:
    ids = ctx.params.get("ids")
    return {
        "profile": bound.profile.name,
        "table_name": bound.profile.qualified,
        "only_ids": [str(i) for i in ids] if ids else None,
    }


def _procrastinate_sql(bound: Bound, name: str, db: Database) -> str:
    p = bound.profile
    retry, finish = functions(db, p.schema)
    values = markers(bound)
    values.update(
        timeout_s=query("profiles/table", "timeout_s"),
        workers=f"{ident(p.schema)}.{ident('procrastinate_workers')}",
        events=f"{ident(p.schema)}.{ident('procrastinate_events')}",
        retry_function=f"{ident(p.schema)}.{ident(retry)}",
        finish_function=f"{ident(p.schema)}.{ident(finish)}",
    )
    return fill(query("profiles/procrastinate", name), values)


def unsupported(bound: Bound, task: str) -> str | None:
    """Why ``task`` has nothing to do on this profile's table, or None when it has."""
    p = bound.profile
    if task == "reindex":
        return (
            "reindex rebuilds the reconciler's own indexes; a table it does not own is its"
            " owner's to reindex"
        )
    if p.kind == "procrastinate" and task in ("requeue", "dead-letter"):
        return (
            f"{task} has nothing to do for Procrastinate: it retries a failed attempt itself,"
            " and its failed is final (mark-stale retries the jobs of dead workers)"
        )
    if task == "requeue" and not (p.has("failed") or p.has("stale")):
        return f"{task}: {p.qualified} has no failed or stale state to retry from"
    if task == "dead-letter" and not (p.has("dead") and (p.has("failed") or p.has("stale"))):
        return f"{task}: {p.qualified} has no dead state (jobs with no attempts left stay failed)"
    if task == "purge" and p.kind == "table" and p.column("finished_at") is None:
        return f"{task}: {p.qualified} has no finished_at column to measure retention by"
    if task == "purge" and p.kind == "table" and not p.finished_states:
        return f"{task}: {p.qualified} has no succeeded, cancelled or dead state"
    return None


def statement(db: Database, bound: Bound, task: str) -> str:
    """The SQL of ``task`` for the profile (purge: one status per run of it)."""
    p = bound.profile
    if p.kind == "procrastinate":
        return _procrastinate_sql(bound, task.replace("-", "_"), db)
    if task == "mark-stale":
        return render(bound, "table", "mark_stale_by_workers" if p.worker_table else "mark_stale")
    return render(bound, "table", task.replace("-", "_"))


def execute(task: str, ctx: TaskContext, bound: Bound) -> None:
    why = unsupported(bound, task)
    if why is not None:
        ctx.progress.notes.append(why)
        ctx.progress.details["unsupported"] = why
        return
    p = bound.profile
    binds = _binds(ctx, bound)
    waits = bool(ctx.params.get("ids"))  # named jobs are waited for, others skipped
    if task == "mark-stale":
        rule = HeartbeatRule.from_settings(ctx.settings, only=ctx.params.get("timeout"))
        sql = locking(statement(ctx.db, bound, task), wait=waits)
        ctx.run_batches(sql, {**binds, **rule.binds()}, search_path=search_path(ctx.db, bound))
    elif task in ("requeue", "dead-letter"):
        ctx.run_batches(locking(statement(ctx.db, bound, task), wait=waits), binds)
    elif task == "purge":
        _purge(ctx, bound, binds)
    elif task == "vacuum-analyze":
        ctx.params = {**ctx.params, "schema": p.schema, "tables": list(queue_tables(p))}
        vacuum_analyze.execute(ctx)
    else:
        raise KeyError(f"unknown task {task!r}")


def _purge(ctx: TaskContext, bound: Bound, binds: dict[str, Any]) -> None:
    p = bound.profile
    retention = ctx.settings.retention()
    sql = statement(ctx.db, bound, "purge")
    if p.kind == "procrastinate":
        plan = [(status, retention[setting]) for status, setting in PURGE_RETENTION.items()]
    else:
        plan = [(p.states[state], retention[state]) for state in p.finished_states]
    wanted = ctx.params.get("statuses")
    for status, keep in plan:
        if wanted and status not in wanted:
            continue
        reason = ctx.stop_reason()
        if reason is not None and not ctx.dry_run:
            ctx.progress.stopped = reason
            return
        horizon = ctx.now - ctx.params.get("older_than", keep)
        ctx.run_batches(
            sql,
            {**binds, "status": status, "horizon": horizon},
            search_path=search_path(ctx.db, bound),
        )
