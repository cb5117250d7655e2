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
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.changes import apply
from reconciler.ops.confirm import OpsError
from reconciler.ops.new_jobs import NewJob, loads, new_job, parse_lines
from reconciler.ops.report import report_change
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from reconciler.tasks import Task, TaskContext

__all__ = ["cmd_enqueue"]


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
    task = Task(name="enqueue", summary="an operator's enqueue", execute=partial(_execute, jobs))
    result = apply(
        db,
        settings,
        task,
        verb="enqueue",
        now=db.now(),
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
    )
    return report_change(result, verb="enqueue", job_filter=None, as_json=args.json)
