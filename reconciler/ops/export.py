"""``reconciler dead-letter export``: the dead letters as JSON lines, and a record of them.

Each job with its whole event history goes out as one JSON line, to a file or
stdout, and a record says which jobs, as they were then, it holds (tables
``ops_exports`` and ``ops_exported_jobs``; SQL in ``sql/ops/dead_letter.sql``). A
file is written beside its name, fsynced, linked into place (never replacing an
existing file) and its folder fsynced *before* the record: only then is it a
backup that ``dead-letter purge`` accepts (the backup rule, ``sql/backup.sql``).
An export to stdout is recorded but is no backup. Safe to re-run: each run is one
more backup.
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

from reconciler.db import Database
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import JobFilter, check_ids, dead_filter, filtered_query
from reconciler.ops.output import jsonable
from reconciler.ops.vocabulary import DEAD
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["ExportResult", "cmd_export", "record_export", "write_export"]

# Rows read per page while exporting: big enough to be quick, small enough
# that each page's transaction stays short.
_EXPORT_PAGE = 500


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
    sql = text(filtered_query("ops/export", "export_page"))
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
            text(query("ops/export", "record_export")),
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
                text(query("ops/export", "record_exported_jobs")),
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
    job_filter = dead_filter(args)
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
