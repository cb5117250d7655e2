"""What the operator's commands share: the job filter, confirmation, and one way to change jobs.

The filter: every command that lists or changes jobs takes the same options
(ids, ``--status``, ``--queue``, ``--kind``, ``--tenant``,
``--created-since``, ``--finished-since``, ``--older-than``, ``--limit``).
In SQL it is one predicate (``sql/ops/filter.sql``) placed where a query says
``/*job_filter*/``; every value is a bound parameter, ``NULL`` meaning "any".

A change (requeue, cancel, replay, purge) is a one-off :class:`Task` run
through :func:`reconciler.runner.run_task`, exactly like the maintenance
tasks: one statement per batch that picks rows with ``FOR UPDATE SKIP
LOCKED``, changes them and writes their ``job_events`` rows in the same
statement; a ``runs`` row records who ran it, and events point to it. The
statement first runs in a rolled-back transaction: that preview is the dry
run, and the count that decides whether to ask for confirmation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TextIO

from sqlalchemy import text

from reconciler.db import Database
from reconciler.durations import duration_arg, format_duration
from reconciler.logs import get_logger
from reconciler.ops.output import console, emit_json, table
from reconciler.runner import default_actor, run_task
from reconciler.settings import Settings
from reconciler.sqlfiles import locking, query
from reconciler.tasks import Task, TaskContext, TaskResult
from reconciler.tasks.base import DRY_RUN_LIMIT

__all__ = [
    "STATUSES",
    "Change",
    "JobFilter",
    "OpsError",
    "add_filter_arguments",
    "apply_change",
    "apply_from_args",
    "check_ids",
    "check_statuses",
    "confirm",
    "duration_arg",
    "filtered_query",
    "names_arg",
    "report_change",
    "report_unchanged",
    "resolve_limit",
    "run_reused_task",
    "statuses_arg",
]

log = get_logger("reconciler.ops")

STATUSES = ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")
PRIORITIES = ("critical", "high", "default", "low", "bulk")
_MARKER = "/*job_filter*/"
# An operator's command runs to the end; each batch is still its own short
# transaction, and Ctrl-C stops it between batches.
_NO_BUDGET = timedelta(days=1)


class OpsError(Exception):
    """A refusal or a mistake in what was asked; the CLI prints the one line, exit ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --- argument types -----------------------------------------------------------------------


def statuses_arg(value: str) -> list[str]:
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    for name in names:
        if name not in STATUSES:
            raise argparse.ArgumentTypeError(
                f"unknown status {name!r}; one of {', '.join(STATUSES)}"
            )
    return names


def names_arg(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _job_id(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"job id {value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"job id {value} must be 1 or more")
    return number


def _limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"limit {value!r} must be a whole number, 1 or more")
    return number


# --- the filter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a command is about. Empty tuples and None mean "any"."""

    ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    created_since: timedelta | None = None
    finished_since: timedelta | None = None
    older_than: timedelta | None = None  # finished longer ago than this
    limit: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JobFilter:
        def flat(name: str) -> tuple[str, ...]:
            groups = getattr(args, name, None) or []
            return tuple(dict.fromkeys(item for group in groups for item in group))

        return cls(
            ids=tuple(dict.fromkeys(getattr(args, "ids", None) or ())),
            statuses=flat("status"),
            queues=flat("queue"),
            kinds=flat("kind"),
            tenants=flat("tenant"),
            created_since=getattr(args, "created_since", None),
            finished_since=getattr(args, "finished_since", None),
            older_than=getattr(args, "older_than", None),
            limit=getattr(args, "limit", None),
        )

    def is_empty(self) -> bool:
        """True when nothing narrows the set (the limit does not count: it is not a choice)."""
        return not (
            self.ids
            or self.statuses
            or self.queues
            or self.kinds
            or self.tenants
            or self.created_since
            or self.finished_since
            or self.older_than
        )

    def binds(self, now: datetime) -> dict[str, Any]:
        """The ``:f_*`` parameters of ``sql/ops/filter.sql``, horizons counted from ``now``."""
        return {
            "f_ids": list(self.ids) or None,
            "f_statuses": list(self.statuses) or None,
            "f_queues": list(self.queues) or None,
            "f_kinds": list(self.kinds) or None,
            "f_tenants": list(self.tenants) or None,
            "f_created_since": now - self.created_since if self.created_since else None,
            "f_finished_since": now - self.finished_since if self.finished_since else None,
            "f_finished_before": now - self.older_than if self.older_than else None,
        }

    def describe(self) -> dict[str, Any]:
        """The filter as given, for JSON output and export records."""
        found: dict[str, Any] = {}
        for name in ("ids", "statuses", "queues", "kinds", "tenants"):
            if getattr(self, name):
                found[name] = list(getattr(self, name))
        for name in ("created_since", "finished_since", "older_than"):
            if getattr(self, name) is not None:
                found[name] = format_duration(getattr(self, name))
        if self.limit is not None:
            found["limit"] = self.limit
        return found

    def with_statuses(self, statuses: Sequence[str]) -> JobFilter:
        return JobFilter(**{**self.__dict__, "statuses": tuple(statuses)})

    def with_ids(self, ids: Sequence[int]) -> JobFilter:
        return JobFilter(**{**self.__dict__, "ids": tuple(ids), "limit": None})


def add_filter_arguments(
    parser: argparse.ArgumentParser,
    *,
    ids: bool = False,
    status: bool = True,
    limit_default: int | None = None,
) -> None:
    """The list filters, the same on every command that takes them."""
    if ids:
        parser.add_argument("ids", nargs="*", type=_job_id, metavar="ID", help="job ids")
    group = parser.add_argument_group("filters (repeat an option or separate values by commas)")
    if status:
        group.add_argument(
            "--status",
            action="append",
            type=statuses_arg,
            metavar="STATUS",
            help=f"one of {', '.join(STATUSES)}",
        )
    group.add_argument("--queue", action="append", type=names_arg, metavar="QUEUE")
    group.add_argument("--kind", action="append", type=names_arg, metavar="KIND")
    group.add_argument("--tenant", action="append", type=names_arg, metavar="TENANT")
    group.add_argument(
        "--created-since",
        type=duration_arg,
        metavar="DURATION",
        help="created in the last, e.g. 1h",
    )
    group.add_argument(
        "--finished-since",
        type=duration_arg,
        metavar="DURATION",
        help="finished (or failed) in the last, e.g. 1d",
    )
    group.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="DURATION",
        help="finished longer ago than, e.g. 30d",
    )
    group.add_argument(
        "--limit",
        type=_limit,
        default=limit_default,
        metavar="N",
        help=f"at most N jobs{f' (default {limit_default})' if limit_default else ''}",
    )


def filtered_query(file: str, name: str) -> str:
    """Query ``name`` of ``sql/<file>.sql`` with the job filter where it says ``/*job_filter*/``."""
    sql = query(file, name)
    if _MARKER not in sql:
        raise KeyError(f"sql/{file}.sql query {name!r} has no {_MARKER} marker")
    return sql.replace(_MARKER, f"({query('ops/filter', 'jobs')})")


def check_ids(
    db: Database, ids: Sequence[int], *, allowed: Sequence[str] = (), verb: str = ""
) -> None:
    """Refuse unknown job ids, and ids whose status the command does not take."""
    if not ids:
        return
    with db.transaction() as conn:
        found = {
            row.id: row.status
            for row in conn.execute(text(query("ops/jobs", "statuses_of")), {"ids": list(ids)})
        }
    missing = [i for i in ids if i not in found]
    if missing:
        raise OpsError(f"no job with id {', '.join(map(str, missing))}; see: reconciler jobs list")
    wrong = [i for i in ids if allowed and found[i] not in allowed]
    if wrong:
        first = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise OpsError(f"job {first} is {found[first]}{more}; {verb} takes {_or(allowed)} jobs")


def _or(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def resolve_limit(
    db: Database, job_filter: JobFilter, now: datetime, statuses: Sequence[str]
) -> JobFilter:
    """Turn ``--limit N`` into the first N matching ids (oldest first), so batches stop there."""
    if job_filter.limit is None:
        return job_filter
    with db.transaction() as conn:
        ids = conn.execute(
            text(filtered_query("ops/jobs", "ids")),
            {
                **job_filter.binds(now),
                "eligible": list(statuses),
                "limit": job_filter.limit,
            },
        ).scalars()
        chosen = list(ids)
    # No match at all must still match nothing, not everything.
    return job_filter.with_ids(chosen or [0])


def check_statuses(job_filter: JobFilter, allowed: Sequence[str], verb: str) -> None:
    wrong = [s for s in job_filter.statuses if s not in allowed]
    if wrong:
        raise OpsError(f"{verb} takes {_or(allowed)} jobs, not {_or(wrong)}")


# --- confirmation -------------------------------------------------------------------------


def confirm(
    what: str,
    count: int,
    *,
    threshold: int,
    yes: bool,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Ask before changing more than ``threshold`` jobs; never ask without a terminal."""
    if yes or count <= threshold:
        return
    stdin = stdin or sys.stdin
    stderr = stderr or sys.stderr
    shown = f"at least {count}" if count >= DRY_RUN_LIMIT else str(count)
    if not stdin.isatty():
        raise OpsError(
            f"this would {what} {shown} jobs, more than the confirmation threshold of "
            f"{threshold} (RECONCILER_OPS_CONFIRM_THRESHOLD), and stdin is not a terminal to "
            "ask on: add --yes to go ahead, or --dry-run to preview"
        )
    stderr.write(f"{what.capitalize()} {shown} jobs? [y/N] ")
    stderr.flush()
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise OpsError("nothing changed (not confirmed)", code=1)


# --- changes ------------------------------------------------------------------------------


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


def report_unchanged(
    db: Database, ids: Sequence[int], result: TaskResult, *, deletes: bool = False
) -> int:
    """After a change of named job ids: one line per id it did not change, and why; 1 if any.

    A named job is never passed over silently: held by another transaction past the lock
    timeout (the change failed), or moved meanwhile to a status the change does not take.
    """
    if not ids or result.dry_run:
        return 0
    with db.transaction() as conn:
        changed = set(
            conn.execute(
                text(query("ops/jobs", "changed_by_run")),
                {"ids": list(ids), "run_id": result.run_id},
            ).scalars()
        )
        now = {
            row.id: row.status
            for row in conn.execute(text(query("ops/jobs", "statuses_of")), {"ids": list(ids)})
        }
    # A deleted job's events go with it: for a purge, gone is done.
    missed = [i for i in ids if i not in changed and not (deletes and i not in now)]
    for job_id in missed:
        why = (
            "another transaction held it past RECONCILER_LOCK_TIMEOUT; try again"
            if result.status != "ok"
            else f"it is {now.get(job_id, 'gone')} now"
        )
        sys.stderr.write(f"reconciler: job {job_id} not changed: {why}\n")
    return 1 if missed else 0


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


def apply_change(
    db: Database,
    settings: Settings,
    change: Change,
    *,
    now: datetime,
    actor: str,
    dry_run: bool,
    yes: bool,
    batch_size: int | None = None,
    stdin: TextIO | None = None,
) -> TaskResult:
    """Preview ``change`` (rolled back); unless a dry run, confirm and apply it in batches."""
    preview = run_task(db, settings, change.task(), dry_run=True, now=now, actor=actor)
    if dry_run or preview.status != "ok" or preview.changed == 0:
        return replace(preview, dry_run=dry_run)
    confirm(
        change.verb,
        preview.changed,
        threshold=settings.ops_confirm_threshold,
        yes=yes,
        stdin=stdin,
    )
    # A TaskBusy (the lease is held elsewhere) reaches the CLI: one line, exit 1.
    result = run_task(
        db,
        settings,
        change.task(),
        now=now,
        actor=actor,
        batch_size=batch_size,
        time_budget=_NO_BUDGET,
    )
    return _logged(result, actor, change.details)


def run_reused_task(
    db: Database,
    settings: Settings,
    task: str,
    *,
    verb: str,
    params: Mapping[str, Any],
    now: datetime,
    actor: str,
    dry_run: bool,
    yes: bool,
    batch_size: int | None = None,
    stdin: TextIO | None = None,
) -> TaskResult:
    """Like :func:`apply_change`, for a registered maintenance task run with parameters."""
    preview = run_task(db, settings, task, dry_run=True, now=now, actor=actor, params=params)
    if dry_run or preview.status != "ok" or preview.changed == 0:
        return replace(preview, dry_run=dry_run)
    confirm(
        verb,
        preview.changed,
        threshold=settings.ops_confirm_threshold,
        yes=yes,
        stdin=stdin,
    )
    result = run_task(
        db,
        settings,
        task,
        now=now,
        actor=actor,
        params=params,
        batch_size=batch_size,
        time_budget=_NO_BUDGET,
    )
    return _logged(result, actor, {})


# --- reporting a change -------------------------------------------------------------------


def report_change(
    result: TaskResult, *, verb: str, job_filter: JobFilter | None, as_json: bool
) -> int:
    """Print what a change did (or would do); the exit code: 0, or 1 when it failed."""
    if as_json:
        payload = result.to_dict()
        if job_filter is not None:
            payload["filter"] = job_filter.describe()
        emit_json(payload)
    else:
        out = console()
        if result.changed == 0 and result.status == "ok":
            out.print(f"{result.task}: no job matches; nothing changed")
        elif result.dry_run:
            more = "at least " if result.stopped == "dry_run_limit" else ""
            out.print(f"dry run, nothing written: would {verb} {more}{result.changed} job(s)")
        else:
            batches = f"{result.batches} batch{'es' if result.batches != 1 else ''}"
            out.print(
                f"{result.task}: changed {result.changed} job(s) in {batches} "
                f"({result.duration_ms} ms), recorded as run {result.run_id}"
            )
        if result.transitions:
            rows = sorted(result.transitions.items())
            out.print(table(None, ("from -> to", "jobs"), rows, right=("jobs",)))
        if result.sample_ids:
            out.print(f"e.g. job ids {', '.join(map(str, result.sample_ids))}")
        for note in result.notes:
            out.print(note)
        if result.error:
            out.print(f"failed: {result.error}")
    return 0 if result.status == "ok" else 1


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
    """apply_change with the command's --actor/--dry-run/--yes/--batch-size; print; exit code."""
    result = apply_change(
        db,
        settings,
        change,
        now=now,
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
    )
    code = report_change(result, verb=verb, job_filter=job_filter, as_json=args.json)
    ids = job_filter.ids if job_filter is not None else ()
    return report_unchanged(db, ids, result, deletes=change.deletes) or code
