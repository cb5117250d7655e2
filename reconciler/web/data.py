"""What the dashboard reads: one :class:`Source` (a database and its settings).

Every page asks a Source, and a Source asks the readers the CLI commands use
(``status``, ``stats``, ``jobs list``, ``jobs show``, ``dead-letter errors``);
the one query of its own, the runs history, is in ``sql/web/runs.sql``. A
profile's table is read by reconciler/web/profiles.py instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from reconciler import status
from reconciler.db import Database
from reconciler.heartbeat import spliced
from reconciler.ops import stats
from reconciler.ops.dead_letter import dead_errors
from reconciler.ops.filter import JobFilter
from reconciler.ops.listing import list_jobs, search_floor
from reconciler.schedule import Schedule
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["DAY", "Source"]

DAY = timedelta(hours=24)
"""The overview's charts and the runs page's counts look this far back."""


@dataclass(frozen=True)
class Source:
    """The queue tables a dashboard shows, and the settings they are judged by."""

    db: Database
    settings: Settings
    schedule: Schedule  # for each task's next run and overdue, as `status` reads it

    def overview(self) -> dict[str, Any]:
        """The stats command's numbers over the last 24 h, and the status command's tasks."""
        # stats' depth is index-bounded: live and dead jobs whole, finished ones over 24 h.
        numbers = stats.collect(self.db, since=DAY, settings=self.settings, per_kind=False)
        _, tasks = status.collect(self.db, self.schedule)
        return {**numbers, "tasks": tasks}

    def jobs(
        self,
        job_filter: JobFilter,
        *,
        limit: int,
        priorities: Sequence[int] = (),
        error_text: str | None = None,
        before_id: int | None = None,
        floor_id: int | None = None,
    ) -> list[dict[str, Any]]:
        return list_jobs(
            self.db,
            job_filter,
            limit=limit,
            priorities=priorities,
            error_text=error_text,
            before_id=before_id,
            floor_id=floor_id,
        )

    def search_floor(self, before_id: int | None) -> int | None:
        return search_floor(self.db, before_id=before_id)

    def job(self, job_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """``jobs show``: the job (None if there is none) and its whole event history."""
        now = self.db.now()
        with self.db.transaction() as conn:
            found = conn.execute(
                text(spliced(query("ops/jobs", "show"))), {"id": job_id, "now": now}
            ).one_or_none()
            if found is None:
                return None
            events = [
                dict(r._mapping)
                for r in conn.execute(text(query("ops/jobs", "events")), {"id": job_id})
            ]
        return dict(found._mapping), events

    def dead_letter(self, job_filter: JobFilter) -> list[dict[str, Any]]:
        return dead_errors(self.db, job_filter)

    def runs(
        self, *, task: str | None, before_id: int | None, limit: int, profile: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The runs history (newest first) and per task its runs of the last 24 h by status;
        ``profile``: only the runs for that profile's table (None: every run)."""
        now: datetime = self.db.now()
        history = self.db.rows(
            query("web/runs", "history"),
            {"task": task, "before_id": before_id, "limit": limit, "profile": profile},
        )
        counts = self.db.rows(query("web/runs", "counts"), {"since": now - DAY, "profile": profile})
        return history, counts
