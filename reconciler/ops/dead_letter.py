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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import text

from reconciler.backups import spliced
from reconciler.db import Database
from reconciler.ops.backed_up import refuse_unless_backed_up, report_left
from reconciler.ops.changes import Change, apply_from_args
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import JobFilter, check_ids, filtered_query, resolve_limit
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
    "record_export",
    "write_export",
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
    durable: bool  # a file on disk: a backup; stdout: only a record

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


def write_export(
    db: Database, job_filter: JobFilter, stream: TextIO
) -> tuple[datetime, list[int], list[datetime]]:
    """Write the filtered dead jobs to ``stream`` as JSON lines; (now, ids, updated_at)."""
    now = db.now()
    ids: list[int] = []
    updated: list[datetime] = []
    for rows in _pages(db, job_filter, now):
        for row in rows:
            stream.write(json.dumps(jsonable(row)) + "\n")
            ids.append(row["id"])
            updated.append(row["updated_at"])
    stream.flush()
    return now, ids, updated


def record_export(
    db: Database,
    job_filter: JobFilter,
    written: tuple[datetime, list[int], list[datetime]],
    *,
    destination: str,
    actor: str,
    durable: bool,
) -> ExportResult:
    """Record an export that is complete (and, when ``durable``, safely on disk)."""
    now, ids, updated = written
    with db.transaction() as conn:
        export_id = conn.execute(
            text(query("ops/dead_letter", "record_export")),
            {
                "now": now,
                "actor": actor,
                "destination": destination,
                "filter": json.dumps(job_filter.describe()),
                "job_count": len(ids),
                "durable": durable,
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
    return ExportResult(int(export_id), len(ids), destination, durable)


def _durable_file(path: Path, write: Callable[[TextIO], None]) -> None:
    """Write ``path`` so that it is complete and on disk when this returns, or not there.

    The steps, each before the next: write ``NAME.partial`` (created exclusively), fsync it,
    hard-link it to ``NAME`` (which fails if NAME exists: an export never replaces a file, and
    unlike a check-then-rename no other process can slip a file in between), remove the
    partial name, fsync the folder so the new name survives a crash. Any failure or Ctrl-C
    removes the partial file and leaves NAME as it was.
    """
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("x", encoding="utf-8") as stream:
            write(stream)
            os.fsync(stream.fileno())
        os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def cmd_export(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    job_filter = _dead_filter(args)
    check_ids(db, job_filter.ids, allowed=DEAD, verb="dead-letter export")
    actor = args.actor or default_actor()
    if args.output in (None, "-"):
        written = write_export(db, job_filter, sys.stdout)
        result = record_export(db, job_filter, written, destination="-", actor=actor, durable=False)
        summary_stream = sys.stderr
    else:
        path = Path(args.output)
        if path.exists():
            raise OpsError(f"{path} exists; an export never replaces a file, choose another name")
        found: list[tuple[datetime, list[int], list[datetime]]] = []
        try:
            _durable_file(path, lambda stream: found.append(write_export(db, job_filter, stream)))
        except FileExistsError:
            raise OpsError(
                f"{path} exists; an export never replaces a file, choose another name"
            ) from None
        except OSError as exc:
            raise OpsError(
                f"cannot write {path}: {exc.strerror or exc}; nothing was recorded as a backup",
                code=1,
            ) from None
        # Only now, with the file and its name on disk, does the export count as a backup.
        result = record_export(
            db, job_filter, found[0], destination=str(path.resolve()), actor=actor, durable=True
        )
        summary_stream = sys.stdout
    if args.json:
        summary_stream.write(json.dumps(result.to_dict()) + "\n")
    else:
        kept = (
            ""
            if result.durable
            else " (stdout: recorded, but not a backup; purge needs an export to a file)"
        )
        summary_stream.write(
            f"exported {result.jobs} dead job(s) to {result.destination} "
            f"(export {result.export_id}){kept}\n"
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
        refuse_unless_backed_up(
            db, job_filter, now, "reconciler dead-letter export ... --output FILE"
        )
    change = Change(
        name="dead-letter purge",
        verb="purge",
        details={"filter": given.describe()},
        sql=spliced(filtered_query("ops/dead_letter", "purge")),
        params={**job_filter.binds(now), "no_backup": bool(args.no_backup)},
        deletes=True,
    )
    code = apply_from_args(db, settings, change, args, now=now, verb="purge", job_filter=given)
    if args.no_backup or args.dry_run:
        return code
    return report_left(db, job_filter, now) or code
