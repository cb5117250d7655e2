"""Faults to inject into a running workload, one function per kind, and a schedule of them.

- ``kill``: SIGKILL a worker that holds a job (the pool replaces it).
- ``freeze``: SIGSTOP a worker that holds a job for longer than the heartbeat
  timeout, then SIGCONT it; it must find itself fenced out.
- ``terminate``: ``pg_terminate_backend`` of every connection of the
  maintenance (by ``application_name``), mid-batch or between runs.
- ``locks``: a transaction that holds row locks on running jobs (and their
  events) for a while, so batches skip or time out around it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from tests.reliability.workload import Workload

__all__ = ["FAULT_KINDS", "FaultSchedule", "terminate_backends"]

FAULT_KINDS = ("kill", "freeze", "terminate", "locks")


def terminate_backends(conn: psycopg.Connection[Any], application_name: str) -> int:
    """Terminate every backend whose application_name is ``application_name``; how many."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    ).fetchone()
    return int(row[0]) if row else 0


class FaultSchedule:
    """A thread that injects a random fault of the chosen kinds every ``every`` seconds."""

    def __init__(
        self,
        workload: Workload,
        kinds: Sequence[str],
        *,
        every: float = 1.0,
        seed: int = 7,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {FAULT_KINDS}")
        self.workload = workload
        self.kinds = list(kinds)
        self.every = every
        self.injected: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        # Backends terminated in all: each can fail at most the one run it served.
        self.terminated = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faults", daemon=True)
        self._frozen: list[tuple[str, float]] = []
        self._conn = psycopg.connect(workload.url, autocommit=True, application_name="rel-faults")
        self._holder: psycopg.Connection[Any] | None = None
        self._holder_until = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for name, _ in self._frozen:
            self.workload.pool.thaw(name)
        if self._holder is not None:
            self._holder.close()
        self._conn.close()

    def _busy_worker(self) -> str | None:
        """A live worker that holds a running job right now, if any."""
        pids = self.workload.pool.pids()
        rows = self._conn.execute(
            sql.SQL("SELECT DISTINCT locked_by FROM {}.jobs WHERE status = 'running'").format(
                sql.Identifier(self.workload.schema)
            )
        ).fetchall()
        busy = [r[0] for r in rows if r[0] in pids and r[0] not in dict(self._frozen)]
        return self._rng.choice(busy) if busy else None

    def inject(self, kind: str) -> bool:
        """Inject one fault of ``kind`` now; False when there was nothing to inject it into."""
        pool = self.workload.pool
        timeout = self.workload.config.heartbeat_timeout.total_seconds()
        if kind == "kill":
            name = self._busy_worker()
            return name is not None and pool.kill(name)
        if kind == "freeze":
            name = self._busy_worker()
            if name is None or not pool.freeze(name):
                return False
            self._frozen.append((name, time.monotonic() + timeout * 1.5 + 0.5))
            return True
        if kind == "terminate":
            killed = terminate_backends(self._conn, self.workload.maintenance.application_name)
            self.terminated += killed
            return killed > 0
        if kind == "locks":
            if self._holder is not None:
                return False
            holder = psycopg.connect(self.workload.url, application_name="rel-lock-holder")
            schema = sql.Identifier(self.workload.schema)
            holder.execute(
                sql.SQL(
                    "SELECT j.id FROM {}.jobs j WHERE j.status IN ('running', 'succeeded')"
                    " ORDER BY j.id LIMIT 20 FOR UPDATE SKIP LOCKED"
                ).format(schema)
            )
            # Held for half the timeout: long enough to make batches skip these
            # rows and workers wait, short of stalling the checker's bounds.
            self._holder, self._holder_until = holder, time.monotonic() + timeout / 2
            return True
        raise ValueError(kind)

    def _loop(self) -> None:
        next_at = time.monotonic() + self.every
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for name, until in list(self._frozen):
                if now >= until:
                    self.workload.pool.thaw(name)
                    self._frozen.remove((name, until))
            if self._holder is not None and now >= self._holder_until:
                self._holder.rollback()
                self._holder.close()
                self._holder = None
            if now < next_at:
                continue
            next_at = now + self.every
            kind = self._rng.choice(self.kinds)
            try:
                ok = self.inject(kind)
            except psycopg.Error:
                ok = False
            (self.injected if ok else self.missed)[kind] += 1
