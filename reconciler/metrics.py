"""Prometheus metrics: what the queue holds, read on scrape, and what this process's tasks did.

Two kinds, so that several replicas never double count:

- **Queue gauges** (``reconciler_jobs``, ``reconciler_queue_oldest_due_age_seconds``,
  ``reconciler_task_last_success_timestamp_seconds``, ``reconciler_lease_held``) are
  read from the database on scrape (``sql/metrics.sql``) with a 1 s statement and
  lock timeout, and cached for 5 s. Every replica reports the same values:
  aggregate them with ``max``, not ``sum``. When the database does not answer in
  time, the last good values are served and ``reconciler_metrics_stale`` is 1: a
  scrape never hangs on a lock or an outage.
- **Task counters** (``reconciler_task_runs_total``, ``..._run_duration_seconds``,
  ``..._rows_total``) count the runs *this process* made; each run happens in
  exactly one replica (the lease), so summing across replicas is right.

``python -m reconciler metrics`` prints the queue gauges once; the daemon serves
everything at ``/metrics`` on ``RECONCILER_HTTP_ADDR``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.vocabulary import PRIORITIES
from reconciler.sqlfiles import query
from reconciler.tasks import TASKS, TaskResult

__all__ = ["CONTENT_TYPE", "QueueCollector", "TaskMetrics", "exposition", "queue_registry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CACHE_S = 5.0
READ_TIMEOUT = timedelta(seconds=1)


def _priority(value: int) -> str:
    return PRIORITIES[value] if 0 <= value < len(PRIORITIES) else str(value)


@dataclass
class _Snapshot:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    oldest: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    read_at: float | None = None  # wall clock of the last good read


class QueueCollector(Collector):
    """The queue gauges, read on scrape, cached, stale rather than slow."""

    def __init__(
        self,
        db: Database,
        *,
        holder: str | None = None,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.holder = holder
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()
        self._fresh_until = float("-inf")
        self._stale = False

    def _read(self) -> _Snapshot:
        tasks = list(TASKS)
        with self.db.transaction(statement_timeout=READ_TIMEOUT) as conn:
            conn.execute(text("SELECT set_config('lock_timeout', '1s', true)"))
            rows = [dict(r._mapping) for r in conn.execute(text(query("metrics", "jobs")))]
            oldest = [dict(r._mapping) for r in conn.execute(text(query("metrics", "oldest_due")))]
            runs = [
                dict(r._mapping)
                for r in conn.execute(text(query("metrics", "task_runs")), {"tasks": tasks})
            ]
        return _Snapshot(rows, oldest, runs, time.time())

    def snapshot(self) -> tuple[_Snapshot, bool]:
        """The values to serve and whether they are stale (the last read failed)."""
        with self._lock:
            if self.clock() >= self._fresh_until:
                try:
                    self._snapshot = self._read()
                    self._stale = False
                except Exception:  # an outage, a lock, a timeout: serve what we had
                    self._stale = True
                self._fresh_until = self.clock() + self.cache_s
            return self._snapshot, self._stale

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap, stale = self.snapshot()
        jobs = GaugeMetricFamily(
            "reconciler_jobs",
            "Jobs by queue, priority and status (queued: depth; dead: dead-letter depth).",
            labels=["queue", "priority", "status"],
        )
        for r in snap.jobs:
            jobs.add_metric([r["queue"], _priority(r["priority"]), r["status"]], r["n"])
        yield jobs
        oldest = GaugeMetricFamily(
            "reconciler_queue_oldest_due_age_seconds",
            "How long the oldest due queued job has waited, by queue and priority.",
            labels=["queue", "priority"],
        )
        for r in snap.oldest:
            oldest.add_metric([r["queue"], _priority(r["priority"])], r["age_s"])
        yield oldest
        success = GaugeMetricFamily(
            "reconciler_task_last_success_timestamp_seconds",
            "When each task last finished a run with status ok (Unix time).",
            labels=["task"],
        )
        held = GaugeMetricFamily(
            "reconciler_lease_held",
            "1 while this process holds the task's lease (it is running the task).",
            labels=["task"],
        )
        for r in snap.tasks:
            if r["last_success"] is not None:
                success.add_metric([r["task"]], r["last_success"])
            held.add_metric(
                [r["task"]], float(self.holder is not None and r["holder"] == self.holder)
            )
        yield success
        yield held
        yield GaugeMetricFamily(
            "reconciler_metrics_stale",
            "1 when the database did not answer the last read in time; the gauges are from "
            "the last good read.",
            value=float(stale),
        )
        if snap.read_at is not None:
            yield GaugeMetricFamily(
                "reconciler_metrics_read_timestamp_seconds",
                "When the gauges were last read from the database (Unix time).",
                value=snap.read_at,
            )


class TaskMetrics:
    """What this process's task runs did: counted as each run ends (the daemon)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "reconciler_task_runs",
            "Task runs by task and status (ok, failed).",
            ["task", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "reconciler_task_run_duration_seconds",
            "How long a task run took.",
            ["task"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.rows = Counter(
            "reconciler_task_rows",
            "Jobs a task moved, by task and transition (e.g. running->stale).",
            ["task", "transition"],
            registry=registry,
        )

    def observe(self, result: TaskResult) -> None:
        if result.dry_run:
            return
        # A profile's run is its own series, named as its lease: mark-stale@procrastinate.
        task = result.task if result.profile == "native" else f"{result.task}@{result.profile}"
        self.runs.labels(task, result.status).inc()
        self.duration.labels(task).observe(result.duration_ms / 1000)
        for transition, n in result.transitions.items():
            self.rows.labels(task, transition).inc(n)


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of everything in ``registry``."""
    return generate_latest(registry)


def queue_registry(db: Database, *, holder: str | None = None) -> CollectorRegistry:
    """A registry with the queue gauges of ``db`` (``holder``: this process's leases)."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(db, holder=holder))
    return registry
