"""Listing jobs: the one query and the one table for ``jobs list`` and ``dead-letter list``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.db import Database
from reconciler.heartbeat import spliced
from reconciler.ops.filter import JobFilter, filtered_query
from reconciler.ops.output import console, table

__all__ = ["list_jobs", "print_jobs"]


def list_jobs(
    db: Database,
    job_filter: JobFilter,
    *,
    limit: int,
    priorities: Sequence[int] = (),
    error_text: str | None = None,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """The matching jobs, newest first; with ``before_id``, the page after that id (keyset:
    as fast on the last page as on the first). ``error_text``: in the last error's message."""
    now = db.now()
    return db.rows(
        spliced(filtered_query("ops/listing", "list")),
        {
            **job_filter.binds(now),
            "now": now,
            "limit": limit,
            "priorities": list(priorities) or None,
            "error_text": _like_literal(error_text) if error_text else None,
            "before_id": before_id,
        },
    )


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
