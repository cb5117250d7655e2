"""One way to change jobs: a one-off task, previewed, confirmed, applied in batches.

A change (requeue, cancel, replay, mark-succeeded, purge, reset-stuck) is a
:class:`Task` run through :func:`reconciler.runner.run_task`, exactly like the
maintenance tasks: one statement per batch that picks rows with ``FOR UPDATE``
(``SKIP LOCKED`` for a filter; named ids are waited for), changes them and
writes their ``job_events`` rows in the same statement; a ``runs`` row records
who ran it, and events point to it. The statement first runs in a rolled-back
transaction: that preview is the dry run, and the count that decides whether
to ask for confirmation. A registered task run with an operator's parameters
(``jobs reset-stuck`` runs mark-stale) goes the same way through :func:`apply`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TextIO

from reconciler.db import Database
from reconciler.logs import get_logger
from reconciler.ops.confirm import confirm
from reconciler.ops.filter import JobFilter
from reconciler.ops.report import report_change, report_unchanged
from reconciler.profiles.live import Bound
from reconciler.runner import default_actor, run_task
from reconciler.settings import Settings
from reconciler.sqlfiles import locking
from reconciler.tasks import Task, TaskContext, TaskResult

__all__ = ["Change", "apply", "apply_from_args"]

log = get_logger("reconciler.ops")

# An operator's command runs to the end; each batch is still its own short
# transaction, and Ctrl-C stops it between batches.
_NO_BUDGET = timedelta(days=1)


@dataclass(frozen=True)
class Change:
    """One operator's change: its name (``jobs requeue``), verb, statement and parameters."""

    name: str
    verb: str
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    # Kept in the run's record (runs.details), e.g. the filter as the operator gave it.
    details: Mapping[str, Any] = field(default_factory=dict)
    # True when the change deletes its jobs (purge): a named job that is gone was done.
    deletes: bool = False

    def task(self) -> Task:
        return Task(
            name=self.name,
            summary=f"an operator's {self.name}",
            execute=partial(_run_change, self),
        )


def _run_change(change: Change, ctx: TaskContext) -> None:
    ctx.progress.details.update(change.details)
    # Job ids named by the operator are waited for (up to the lock timeout); a filter's
    # rows that a worker holds this instant are skipped.
    sql = locking(change.sql, wait=bool(change.params.get("f_ids")))
    ctx.run_batches(sql, {"command": change.name, **change.params})


def _logged(result: TaskResult, actor: str, details: Mapping[str, Any]) -> TaskResult:
    """One event per operator's change that ran: who, what, how many."""
    log.info(
        "ops.change",
        command=result.task,
        actor=actor,
        status=result.status,
        changed=result.changed,
        transitions=dict(result.transitions),
        run_id=result.run_id,
        duration_ms=result.duration_ms,
        **details,
    )
    return result


def apply(
    db: Database,
    settings: Settings,
    task: Task | str,
    *,
    verb: str,
    now: datetime,
    actor: str,
    dry_run: bool,
    yes: bool,
    params: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    stdin: TextIO | None = None,
    profile: Bound | None = None,
) -> TaskResult:
    """Preview ``task`` (rolled back); unless a dry run, confirm and apply it in batches.

    ``task`` is a change's one-off task, or a registered task's name run with ``params``.
    A TaskBusy (the task's lease is held elsewhere) reaches the CLI: one line, exit 1.
    ``profile``: the queue table, when not the reconciler's own (reconciler/profiles/).
    """
    preview = run_task(
        db, settings, task, dry_run=True, now=now, actor=actor, params=params, profile=profile
    )
    if dry_run or preview.status != "ok" or preview.changed == 0:
        return replace(preview, dry_run=dry_run)
    confirm(verb, preview.changed, threshold=settings.ops_confirm_threshold, yes=yes, stdin=stdin)
    result = run_task(
        db,
        settings,
        task,
        now=now,
        actor=actor,
        params=params,
        batch_size=batch_size,
        time_budget=_NO_BUDGET,
        profile=profile,
    )
    return _logged(result, actor, details or {})


def apply_from_args(
    db: Database,
    settings: Settings,
    change: Change,
    args: argparse.Namespace,
    *,
    now: datetime,
    verb: str,
    job_filter: JobFilter | None,
) -> int:
    """:func:`apply` of ``change`` with the command's --actor/--dry-run/--yes/--batch-size;
    print what it did; the exit code."""
    result = apply(
        db,
        settings,
        change.task(),
        verb=change.verb,
        details=change.details,
        now=now,
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
    )
    code = report_change(result, verb=verb, job_filter=job_filter, as_json=args.json)
    ids = job_filter.ids if job_filter is not None else ()
    return report_unchanged(db, ids, result, deletes=change.deletes) or code
