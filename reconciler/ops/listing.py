"""Listing jobs: the one query and the one table for ``jobs list`` and ``dead-letter list``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reconciler.db import Database
from reconciler.heartbeat import spliced
from reconciler.ops.filter import JobFilter, filtered_query
from reconciler.ops.output import console, table
from reconciler.sqlfiles import query

__all__ = ["SEARCH_EXAMINES", "list_jobs", "list_statement", "print_jobs", "search_floor"]

SEARCH_EXAMINES = 10_000
"""An error-text search reads at most this many jobs per page, the newest first: no index
serves ILIKE '%text%', so unbounded it read the whole table (308 ms at 1M jobs, ten
times that at 10M); 10,000 rows take a few milliseconds and cover minutes to hours of a
busy queue. The next page searches the 10,000 below."""


def list_jobs(
    db: Database,
    job_filter: JobFilter,
    *,
    limit: int,
    priorities: Sequence[int] = (),
    error_text: str | None = None,
    before_id: int | None = None,
    floor_id: int | None = None,
) -> list[dict[str, Any]]:
    """The matching jobs, newest first; with ``before_id``, the page after that id (keyset:
    as fast on the last page as on the first). ``error_text``: in the last error's message.
    ``floor_id``: only jobs from that id up (a bounded search, :func:`search_floor`)."""
    sql, binds = list_statement(
        job_filter,
        now=db.now(),
        limit=limit,
        priorities=priorities,
        error_text=error_text,
        before_id=before_id,
        floor_id=floor_id,
    )
    return db.rows(sql, binds)


def list_statement(
    job_filter: JobFilter,
    *,
    now: datetime,
    limit: int,
    priorities: Sequence[int] = (),
    error_text: str | None = None,
    before_id: int | None = None,
    floor_id: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """:func:`list_jobs`' statement and binds (also for its EXPLAIN test)."""
    return spliced(filtered_query("ops/listing", "list")), {
        **job_filter.binds(now),
        "now": now,
        "limit": limit,
        "priorities": list(priorities) or None,
        "error_text": _like_literal(error_text) if error_text else None,
        "before_id": before_id,
        "floor_id": floor_id,
    }


def search_floor(
    db: Database, *, before_id: int | None, examine: int = SEARCH_EXAMINES
) -> int | None:
    """The lowest id among the ``examine`` newest jobs below ``before_id``; None when fewer
    are left (a search from there reads to the end)."""
    rows = db.rows(
        query("ops/listing", "search_floor"), {"before_id": before_id, "examine": examine}
    )
    return int(rows[0]["id"]) if rows else None


def print_jobs(rows: list[dict[str, Any]], *, title: str) -> None:
    columns = (
        "id",
        "status",
        "queue",
        "kind",
        "tenant",
        "prio",
        "attempt",
        "created",
        "running for",
        "silent for",
        "worker",
        "error",
    )
    body = [
        (
            r["id"],
            r["status"],
            r["queue"],
            r["kind"],
            r["tenant_id"],
            r["priority"],
            f"{r['attempt']}/{r['max_attempts']}",
            r["created_at"],
            r["running_for"],
            r["silent_for"],
            r["locked_by"],
            r["error"],
        )
        for r in rows
    ]
    right = ("id", "prio", "attempt", "running for", "silent for")
    console().print(table(title, columns, body, right=right))


def _like_literal(text: str) -> str:
    """``text`` matched as itself by ILIKE: its ``%``, ``_`` and backslashes escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
