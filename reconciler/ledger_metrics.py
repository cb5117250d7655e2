"""Job counters from the ledger: every status change the workers and the reconciler wrote.

``job_events`` is read incrementally on scrape: the events after a cursor (its primary
key), at most 50,000 a scrape under a 1 s timeout, so the cost follows the traffic, not
the table. Ids are taken at insert and transactions commit out of order, so an id
missing below the newest one read may still commit: such gaps are remembered and looked
up again on later scrapes for 5 minutes (then given up as rolled back or deleted), so a
late commit is counted once, never skipped. A process counts from the ledger's head at
its start: counters start at zero with the process, as Prometheus counters do.

Every replica counts every event: the rates agree across replicas, the totals differ by
start time. Query with ``rate()`` and take ``max`` across replicas, never ``sum``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.vocabulary import PRIORITIES
from reconciler.sqlfiles import query

__all__ = ["GAP_TTL_S", "LedgerCounters"]

PAGE = 50_000
GAP_TTL_S = 300.0
# At most this many ids watched at once (a crash can make the sequence skip a few dozen;
# past the cap the oldest are given up first).
MAX_GAPS = 10_000
READ_TIMEOUT = timedelta(seconds=1)
_DURATIONS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


def _attempt(value: int | None) -> str:
    """A bounded label: 1, 2, 3, 4 or 5+."""
    if value is None or value < 1:
        return "unknown"
    return str(value) if value < 5 else "5+"


class LedgerCounters:
    """The job counters of one process, fed from the ledger by :meth:`poll`."""

    def __init__(
        self,
        db: Database,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.clock = clock
        self.cursor: int | None = None
        self.gaps: dict[int, float] = {}  # missing id -> when first seen missing
        self._lock = threading.Lock()
        labels = ["queue", "priority", "from_status", "to_status"]
        self.transitions = Counter(
            "reconciler_job_transitions",
            "Status changes in the ledger: none->queued is an enqueue, queued->running a "
            "start, running->succeeded/failed an outcome, ->queued a retry, ->dead exhausted.",
            labels,
            registry=registry,
        )
        self.failures = Counter(
            "reconciler_job_failures",
            "Attempts that ended failed (running->failed), by attempt number (1..4, 5+).",
            ["queue", "priority", "attempt"],
            registry=registry,
        )
        self.duration = Histogram(
            "reconciler_job_duration_seconds",
            "How long a finished attempt ran, claim to outcome, by outcome.",
            ["queue", "priority", "outcome"],
            buckets=_DURATIONS,
            registry=registry,
        )
        self.wait = Histogram(
            "reconciler_job_wait_seconds",
            "How long a job waited past its due time before a worker claimed it.",
            ["queue", "priority"],
            buckets=_DURATIONS,
            registry=registry,
        )
        self.lag = Gauge(
            "reconciler_ledger_pending_gaps",
            "Ledger ids seen missing and still watched for a late commit.",
            registry=registry,
        )

    def poll(self) -> bool:
        """Count what the ledger gained since the last poll; False if it could not be read."""
        with self._lock:
            try:
                with self.db.transaction(statement_timeout=READ_TIMEOUT) as conn:
                    conn.execute(text("SELECT set_config('lock_timeout', '1s', true)"))
                    if self.cursor is None:
                        self.cursor = int(
                            conn.execute(text(query("metrics", "ledger_head"))).scalar_one()
                        )
                        return True
                    rows = conn.execute(
                        text(query("metrics", "ledger_since")),
                        {"cursor": self.cursor, "gaps": list(self.gaps), "limit": PAGE},
                    ).all()
            except Exception:  # an outage, a lock, a timeout: the next scrape tries again
                return False
            self._count(rows)
            return True

    def _count(self, rows: Sequence[Any]) -> None:
        assert self.cursor is not None
        now = self.clock()
        seen = set()
        for r in rows:
            seen.add(r.id)
            self.gaps.pop(r.id, None)
            priority = PRIORITIES[r.priority] if r.priority is not None else "unknown"
            self.transitions.labels(r.queue, priority, r.from_status, r.to_status).inc()
            if r.from_status == "running" and r.to_status == "failed":
                self.failures.labels(r.queue, priority, _attempt(r.attempt)).inc()
            if r.duration_s is not None:
                self.duration.labels(r.queue, priority, r.to_status).observe(r.duration_s)
            if r.wait_s is not None:
                self.wait.labels(r.queue, priority).observe(r.wait_s)
        newest = max((r.id for r in rows if r.id > self.cursor), default=self.cursor)
        for missing in range(self.cursor + 1, newest):
            if missing not in seen:
                self.gaps.setdefault(missing, now)
        self.cursor = newest
        for gap, since in list(self.gaps.items()):
            if now - since > GAP_TTL_S:
                del self.gaps[gap]  # rolled back, or deleted: it will not come
        for gap in sorted(self.gaps)[: max(0, len(self.gaps) - MAX_GAPS)]:
            del self.gaps[gap]
        self.lag.set(len(self.gaps))
