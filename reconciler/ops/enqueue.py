"""``reconciler enqueue``: add jobs from the command line, one or many (a backfill).

One job from arguments (``reconciler enqueue report.build --payload '{...}'``),
or many from JSON lines on stdin (``--jsonl``: one object per line with
``kind`` and any of ``payload``, ``queue``, ``priority``, ``run_at``,
``max_attempts``, ``idempotency_key``, ``tenant_id``), runbook 000's backfill.
Every job goes through the workers' own ``enqueue()``, so defaults, retry
policies, idempotency keys (per kind and tenant) and checks are the same.

Every line is checked before anything is written: one bad line is one line
on stderr naming it, exit 2, nothing enqueued. Then the jobs go in batches
(``RECONCILER_BATCH_SIZE``), each its own transaction, recorded as one
``runs`` row; each job's event has the actor ``cli:<os user>`` (or
``--actor``) and the run's id. Confirmation above the threshold, ``--dry-run``
and ``--json`` as every change. Safe to re-run with idempotency keys: a key
already used (for that kind and tenant) returns its job and adds nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TextIO

from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.confirm import OpsError, confirm
from reconciler.ops.report import report_change
from reconciler.ops.vocabulary import PRIORITIES
from reconciler.runner import default_actor, run_task
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from reconciler.tasks import Task, TaskContext, TaskResult

__all__ = ["NewJob", "cmd_enqueue", "enqueue_jobs", "parse_lines"]

FIELDS = (
    "kind",
    "payload",
    "queue",
    "priority",
    "run_at",
    "max_attempts",
    "idempotency_key",
    "tenant_id",
)
# An operator's backfill runs to the end; each batch is still its own transaction.
_NO_BUDGET = timedelta(days=1)


@dataclass(frozen=True)
class NewJob:
    """One job to enqueue; None leaves the argument to enqueue()'s default."""

    kind: str
    payload: Any = None
    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    tenant_id: str | None = None


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character, which PostgreSQL text cannot hold")
    _unicode(value, name)
    return value


def _unicode(value: str, name: str) -> None:
    """Refuse a string that is not valid Unicode (bytes that were not UTF-8, lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} is not valid UTF-8 (at character {exc.start + 1}); fix its encoding"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; write a finite number, or null")


def loads(text: str) -> Any:
    """JSON as PostgreSQL's jsonb takes it: no NaN or Infinity (Python's json allows them)."""
    return json.loads(text, parse_constant=_no_constant)


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in PRIORITIES:
        return PRIORITIES.index(value.lower())
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4:
        return value
    raise ValueError(f"priority {value!r} must be 0..4 or one of {', '.join(PRIORITIES)}")


def _max_attempts(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
        return value
    raise ValueError(f"max_attempts {value!r} must be a whole number from 1 to 1000")


def _moment(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"run_at must be a time like 2026-12-03T02:00Z, not {value!r}")
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"run_at {value!r} is not a time; write it like 2026-12-03T02:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"run_at {value!r} has no time zone; add one, e.g. {value}Z")
    return moment


def new_job(fields: Mapping[str, Any]) -> NewJob:
    """A job from its fields as given; ValueError says what is wrong with them."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    kind = _text(fields.get("kind"), "kind")
    if not kind:
        raise ValueError('kind is missing; every job needs one, e.g. "kind": "report.build"')
    payload = fields.get("payload")
    if payload is not None:
        encoded = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        if "\\u0000" in encoded:
            raise ValueError("payload contains a NUL character, which jsonb cannot hold")
        _unicode(encoded, "payload")
    return NewJob(
        kind=kind,
        payload=payload,
        queue=_text(fields.get("queue"), "queue"),
        priority=_priority(fields.get("priority")),
        run_at=_moment(fields.get("run_at")),
        max_attempts=_max_attempts(fields.get("max_attempts")),
        idempotency_key=_text(fields.get("idempotency_key"), "idempotency_key"),
        tenant_id=_text(fields.get("tenant_id"), "tenant_id"),
    )


def parse_lines(stream: Iterable[str]) -> list[NewJob]:
    """Every JSON line of ``stream`` as a job (blank lines skipped); OpsError on the first bad
    one, naming its line number, before anything is written."""
    jobs: list[NewJob] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            fields = loads(line)
            if not isinstance(fields, dict):
                raise ValueError("each line must be one JSON object")
            jobs.append(new_job(fields))
        except (ValueError, RecursionError) as exc:
            raise OpsError(f"stdin line {number}: {exc}; nothing was enqueued") from None
    if not jobs:
        raise OpsError('no job on stdin: give one JSON object per line, e.g. {"kind": "x"}')
    return jobs


def _binds(batch: list[NewJob]) -> dict[str, Any]:
    return {
        "kinds": [j.kind for j in batch],
        "payloads": [None if j.payload is None else json.dumps(j.payload) for j in batch],
        "queues": [j.queue for j in batch],
        "priorities": [j.priority for j in batch],
        "run_ats": [j.run_at for j in batch],
        "max_attempts": [j.max_attempts for j in batch],
        "keys": [j.idempotency_key for j in batch],
        "tenants": [j.tenant_id for j in batch],
    }


def _execute(jobs: list[NewJob], ctx: TaskContext) -> None:
    """Enqueue ``jobs`` batch by batch, each its own transaction, labelled with the run."""
    existing: list[int] = []
    for start in range(0, len(jobs), ctx.batch_size):
        batch = jobs[start : start + ctx.batch_size]
        with ctx.db.transaction(rollback=ctx.dry_run) as conn:
            conn.execute(
                text(query("ops/enqueue", "label")), {"actor": ctx.actor, "run_id": ctx.run_id}
            )
            ids = list(conn.execute(text(query("ops/enqueue", "enqueue")), _binds(batch)).scalars())
            rows = conn.execute(text(query("ops/enqueue", "made")), {"ids": ids}).all()
        ctx.progress.add([_Made(r.id, "new", "queued") for r in rows if r.made == "new"])
        # A key repeated within the batch returns its job twice: once new, then existing.
        new = {int(r.id) for r in rows if r.made == "new"}
        seen: set[int] = set()
        for job_id in map(int, ids):
            if job_id not in new or job_id in seen:
                existing.append(job_id)
            seen.add(job_id)
        ctx.progress.batches += 1
    ctx.progress.details["existing"] = len(existing)
    if existing:
        more = f" (e.g. job {existing[0]})"
        ctx.progress.notes.append(
            f"{len(existing)} idempotency key(s) already had their job; nothing added{more}"
        )


@dataclass(frozen=True)
class _Made:
    id: int
    from_status: str
    to_status: str


def enqueue_jobs(
    db: Database,
    settings: Settings,
    jobs: list[NewJob],
    *,
    actor: str,
    dry_run: bool,
    yes: bool,
    batch_size: int | None = None,
    stdin: TextIO | None = None,
) -> TaskResult:
    """Preview (rolled back); unless a dry run, confirm and enqueue, recorded as one run."""
    task = Task(
        name="enqueue",
        summary="an operator's enqueue",
        execute=partial(_execute, jobs),
    )
    preview = run_task(db, settings, task, dry_run=True, actor=actor, batch_size=batch_size)
    if dry_run or preview.status != "ok":
        return preview
    confirm("enqueue", len(jobs), threshold=settings.ops_confirm_threshold, yes=yes, stdin=stdin)
    return run_task(db, settings, task, actor=actor, batch_size=batch_size, time_budget=_NO_BUDGET)


def cmd_enqueue(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    if args.jsonl:
        if args.kind is not None:
            raise OpsError("give a KIND or --jsonl (jobs on stdin), not both")
        jobs = parse_lines(sys.stdin)
    else:
        if args.kind is None:
            raise OpsError(
                "enqueue needs a KIND (e.g. reconciler enqueue report.build), or --jsonl to "
                "read jobs from stdin"
            )
        try:
            payload = loads(args.payload) if args.payload is not None else None
            run_at = args.at
            if args.in_ is not None:
                run_at = db.now() + args.in_
            jobs = [
                new_job(
                    {
                        "kind": args.kind,
                        "payload": payload,
                        "queue": args.queue,
                        "priority": args.priority,
                        "run_at": run_at,
                        "max_attempts": args.max_attempts,
                        "idempotency_key": args.idempotency_key,
                        "tenant_id": args.tenant,
                    }
                )
            ]
        except (ValueError, RecursionError) as exc:
            raise OpsError(f"enqueue: {exc}") from None
    result = enqueue_jobs(
        db,
        settings,
        jobs,
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
    )
    return report_change(result, verb="enqueue", job_filter=None, as_json=args.json)
