"""The reliability invariants over a Procrastinate workload whose workers are killed.

Three real ``procrastinate worker`` processes run 30 jobs that each hold for
a moment on every attempt; every few seconds one worker is killed with
SIGKILL and a new one started, while the reconciler runs mark-stale for the
procrastinate profile. At the end, adapted from the native invariants
(tests/reliability/invariants.py) to what Procrastinate records:

1. no job lost: every job ends succeeded;
2. no live job re-run: every job the reconciler retried had its last attempt
   started by a worker process that had been killed before the retry;
3. never two live attempts: each attempt after the first started only after
   the worker of the one before had been killed;
4. attempts counted: Procrastinate's attempts equal the retries plus the success;
5. one ledger row per retry, matching Procrastinate's own deferred_for_retry event;
6. Procrastinate's events in a valid order for every job (nothing but its own
   functions moved them);
7. every killed attempt came back (implied by 1; the native bound on how soon
   has no counterpart: Procrastinate itself keeps no per-job heartbeat to time).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.profiles import bind_profile
from reconciler.profiles.procrastinate import profile as procrastinate_profile
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.conftest import make_settings
from tests.helpers import wait_until
from tests.procrastinate_env import Pq

JOBS = 30
KILLS = 4


def test_invariants_hold_with_killed_procrastinate_workers(
    db: Database, pg_url: str, schema: str, pq: Pq
) -> None:
    settings: Settings = make_settings(pg_url, schema, heartbeat_timeout="5s")
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier) VALUES ('crunch', 100, interval '0', interval '0', 1)"
            )
        )
    bound = bind_profile(db, procrastinate_profile(pq.schema))
    rng = random.Random(7)
    jobs = [pq.defer(i, hold=rng.uniform(0.3, 2.5), hold_every=True) for i in range(JOBS)]
    live = [pq.worker() for _ in range(3)]
    killed: dict[int, datetime] = {}
    stop = threading.Event()
    failures: list[str] = []

    def reconcile() -> None:
        while not stop.is_set():
            result = run_task(db, settings, "mark-stale", profile=bound)
            if result.status != "ok":
                failures.append(result.error or "failed")
            stop.wait(0.5)

    reconciler = threading.Thread(target=reconcile)
    reconciler.start()
    try:
        for _ in range(KILLS):
            # Pace the kills by progress, not by the clock: kill once a new attempt began.
            _new_attempt(pq)
            victim = live.pop(rng.randrange(len(live)))
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
            killed[victim.pid] = pq.sql("SELECT now()")[0][0]
            live.append(pq.worker())
        wait_until(
            lambda: all(pq.status(j)[0] == "succeeded" for j in jobs),
            "every job to succeed",
            timeout=300,
            poll=0.5,
        )
    finally:
        stop.set()
        reconciler.join(timeout=60)
    assert failures == []
    with db.transaction(rollback=True) as conn:
        ledger = conn.execute(
            text("SELECT job_id, at FROM ledger WHERE profile = 'procrastinate' ORDER BY id")
        ).all()
    retries: dict[int, list[datetime]] = defaultdict(list)
    for row in ledger:
        retries[int(row.job_id)].append(row.at)
    starts: dict[int, list[tuple[int, datetime]]] = defaultdict(list)
    for job_id, pid, at in pq.sql(
        "SELECT job_id, pid, at FROM pq_log WHERE event = 'start' ORDER BY id"
    ):
        starts[job_id].append((pid, at))
    violations: list[str] = []
    for job in jobs:
        status, attempts = pq.status(job)
        if status != "succeeded":  # 1
            violations.append(f"job {job} ended {status}")
        for retried_at in retries[job]:  # 2
            before = [(pid, at) for pid, at in starts[job] if at < retried_at]
            if before:
                pid = before[-1][0]
                if pid not in killed or killed[pid] > retried_at:
                    violations.append(f"job {job} retried at {retried_at} while pid {pid} lived")
        for (pid, _), (_, next_at) in zip(starts[job], starts[job][1:], strict=False):  # 3
            if pid not in killed or killed[pid] > next_at:
                violations.append(f"job {job}: a new attempt began while pid {pid} still ran it")
        if attempts != len(retries[job]) + 1:  # 4
            violations.append(f"job {job}: {attempts} attempts, {len(retries[job])} retries")
        events = pq.events(job)
        if events.count("deferred_for_retry") != len(retries[job]):  # 5
            violations.append(f"job {job}: events {events} against {len(retries[job])} retries")
        if not _valid(events):  # 6
            violations.append(f"job {job}: events out of order: {events}")
    assert violations == []
    assert len(killed) == KILLS
    # The kills hit running jobs: the reconciler had something to recover.
    assert ledger, "no worker was killed mid-job"


def _starts(pq: Pq) -> int:
    return len(pq.sql("SELECT 1 FROM pq_log WHERE event = 'start'"))


def _new_attempt(pq: Pq) -> None:
    started = _starts(pq)
    wait_until(lambda: _starts(pq) > started, "a new attempt to start", timeout=180)


def _valid(events: list[Any]) -> bool:
    """deferred, then (started, [scheduled], deferred_for_retry)*, then started, succeeded."""
    if events[:1] != ["deferred"] or events[-2:] != ["started", "succeeded"]:
        return False
    middle = [e for e in events[1:-2] if e != "scheduled"]
    pairs = list(zip(middle[::2], middle[1::2], strict=False))
    return len(middle) % 2 == 0 and all(p == ("started", "deferred_for_retry") for p in pairs)
