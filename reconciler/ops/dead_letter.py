"""``reconciler dead-letter``: list, errors, export, replay, purge.

The dead letters are the jobs with status ``dead`` (the dead-letter task puts
failed or stale jobs with no attempts left there). An operator groups them by
error, backs them up, replays the ones a fix has made good, and clears the
rest.

- export: JSON lines (each job with its whole event history) to a file or
  stdout, and a record of which jobs, as they were then, it holds
  (tables ``ops_exports`` and ``ops_exported_jobs``). A file is written
  beside its name and renamed into place when complete, and never replaces an
  existing file. Safe to re-run: each run is one more backup.
- replay: dead -> queued, the same statement as ``jobs requeue``.
- purge: deletes dead jobs with their events, and refuses while any of them
  has no export taken since its last change (``--no-backup`` overrides).
  Safe to re-run: deleted jobs are gone, the rest is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.common import (
    Change,
    JobFilter,
    OpsError,
    apply_from_args,
    check_ids,
    filtered_query,
    resolve_limit,
)
from reconciler.ops.jobs import list_jobs, print_jobs, requeue
from reconciler.ops.output import console, emit_json_lines, jsonable, table
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = [
    "ExportResult",
    "cmd_errors",
    "cmd_export",
    "cmd_list",
    "cmd_purge",
    "cmd_replay",
    "export_dead",
]

DEAD = ("dead",)
# Rows read per page while exporting: big enough to be quick, small enough
# that each page's transaction stays short.
_EXPORT_PAGE = 500


def _dead_filter(args: argparse.Namespace) -> JobFilter:
    return JobFilter.from_args(args).with_statuses(DEAD)


def cmd_list(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = _dead_filter(args)
    check_ids(db, job_filter.ids)
    rows = list_jobs(db, job_filter, limit=job_filter.limit or 50)
    if args.json:
        emit_json_lines(rows)
    else:
        print_jobs(rows, title=f"{len(rows)} dead job(s), newest first")
    return 0


def cmd_errors(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = _dead_filter(args)
    now = db.now()
    with db.transaction() as conn:
        rows = [
            dict(r._mapping)
            for r in conn.execute(
                text(filtered_query("ops/dead_letter", "errors")),
                {**job_filter.binds(now), "limit": job_filter.limit or 50},
            )
        ]
    if args.json:
        emit_json_lines(rows)
        return 0
    console().print(
        table(
            f"dead jobs by error, kind and tenant ({sum(r['jobs'] for r in rows)} job(s))",
            ("jobs", "error", "kind", "tenant", "first dead", "last dead", "e.g. job"),
            [
                (
                    r["jobs"],
                    r["error"],
                    r["kind"],
                    r["tenant_id"],
                    r["first_dead_at"],
                    r["last_dead_at"],
                    r["example_id"],
                )
                for r in rows
            ],
            right=("jobs", "e.g. job"),
        )
    )
    return 0


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and where it is recorded."""

    export_id: int
    jobs: int
    destination: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pages(db: Database, job_filter: JobFilter, now: datetime) -> Iterator[list[dict[str, Any]]]:
    after = 0
    sql = text(filtered_query("ops/dead_letter", "export_page"))
    remaining = job_filter.limit
    while True:
        page = min(_EXPORT_PAGE, remaining) if remaining is not None else _EXPORT_PAGE
        with db.transaction() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(sql, {**job_filter.binds(now), "after": after, "page": page})
            ]
        if rows:
            yield rows
            after = rows[-1]["id"]
        if remaining is not None:
            remaining -= len(rows)
        if len(rows) < page or remaining == 0:
            return


def export_dead(
    db: Database,
    job_filter: JobFilter,
    stream: TextIO,
    *,
    destination: str,
    actor: str,
) -> ExportResult:
    """Write the filtered dead jobs to ``stream`` as JSON lines; record the export."""
    now = db.now()
    ids: list[int] = []
    updated: list[datetime] = []
    for rows in _pages(db, job_filter, now):
        for row in rows:
            stream.write(json.dumps(jsonable(row)) + "\n")
            ids.append(row["id"])
            updated.append(row["updated_at"])
    stream.flush()
    with db.transaction() as conn:
        export_id = conn.execute(
            text(query("ops/dead_letter", "record_export")),
            {
                "now": now,
                "actor": actor,
                "destination": destination,
                "filter": json.dumps(job_filter.describe()),
                "job_count": len(ids),
            },
        ).scalar_one()
        for start in range(0, len(ids), 10_000):
            conn.execute(
                text(query("ops/dead_letter", "record_exported_jobs")),
                {
                    "export_id": export_id,
                    "job_ids": ids[start : start + 10_000],
                    "updated": updated[start : start + 10_000],
                },
            )
    return ExportResult(int(export_id), len(ids), destination)


def cmd_export(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = _dead_filter(args)
    check_ids(db, job_filter.ids, allowed=DEAD, verb="dead-letter export")
    actor = args.actor or default_actor()
    if args.output in (None, "-"):
        result = export_dead(db, job_filter, sys.stdout, destination="-", actor=actor)
        summary_stream = sys.stderr
    else:
        path = Path(args.output)
        if path.exists():
            raise OpsError(f"{path} exists; an export never replaces a file, choose another name")
        partial = path.with_name(path.name + ".partial")
        try:
            with partial.open("x", encoding="utf-8") as stream:
                result = export_dead(
                    db, job_filter, stream, destination=str(path.resolve()), actor=actor
                )
                os.fsync(stream.fileno())
        except OSError as exc:
            raise OpsError(f"cannot write {path}: {exc.strerror or exc}") from None
        partial.replace(path)
        summary_stream = sys.stdout
    if args.json:
        summary_stream.write(json.dumps(result.to_dict()) + "\n")
    else:
        summary_stream.write(
            f"exported {result.jobs} dead job(s) to {result.destination} "
            f"(export {result.export_id})\n"
        )
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args)
    if job_filter.is_empty() and not args.all:
        raise OpsError(
            "dead-letter replay needs job ids or a filter (e.g. --kind export), "
            "or --all for every dead job"
        )
    return requeue(
        args, settings, db, job_filter.with_statuses(DEAD), name="dead-letter replay", eligible=DEAD
    )


def cmd_purge(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = JobFilter.from_args(args)
    if job_filter.is_empty() and not args.all:
        raise OpsError(
            "dead-letter purge needs job ids or a filter (e.g. --older-than 30d, --kind export), "
            "or --all for every dead job"
        )
    job_filter = job_filter.with_statuses(DEAD)
    check_ids(db, job_filter.ids, allowed=DEAD, verb="dead-letter purge")
    now = db.now()
    given, job_filter = job_filter, resolve_limit(db, job_filter, now, DEAD)
    if not args.no_backup:
        with db.transaction() as conn:
            missing = conn.execute(
                text(filtered_query("ops/dead_letter", "not_backed_up")), job_filter.binds(now)
            ).one()
        if missing.jobs:
            raise OpsError(
                f"{missing.jobs} of these dead jobs (e.g. job {missing.example_id}) have no "
                "export since their last change; back them up first with the same filter: "
                "reconciler dead-letter export ... --output FILE (or pass --no-backup)"
            )
    change = Change(
        name="dead-letter purge",
        verb="purge",
        details={"filter": given.describe()},
        sql=filtered_query("ops/dead_letter", "purge"),
        params={**job_filter.binds(now), "no_backup": bool(args.no_backup)},
    )
    return apply_from_args(db, settings, change, args, now=now, verb="purge", job_filter=given)
