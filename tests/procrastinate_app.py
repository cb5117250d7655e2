"""A real Procrastinate app for the procrastinate profile's tests.

Its connection comes from ``RECONCILER_PQ_DSN`` (a conninfo whose options set
the search_path to the test's schema). Workers heartbeat every half second;
they prune other workers only after ten minutes, so that what finds a dead
worker's job in these tests is the reconciler. The one task, ``crunch``,
writes each attempt's start and end to ``pq_log`` (with the worker process's
pid), and on its first attempt holds for ``hold`` seconds: long enough to be
killed mid-job.
"""

from __future__ import annotations

import os
import time

import psycopg
from procrastinate import App, JobContext, PsycopgConnector

DSN = os.environ.get("RECONCILER_PQ_DSN", "")

app = App(
    connector=PsycopgConnector(conninfo=DSN),
    worker_defaults={"update_heartbeat_interval": 0.5, "stalled_worker_timeout": 600},
)


def _log(job_id: int, attempt: int, event: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pq_log (job_id, attempt, event, pid) VALUES (%s, %s, %s, %s)",
            (job_id, attempt, event, os.getpid()),
        )


@app.task(name="crunch", queue="default", pass_context=True)
def crunch(context: JobContext, n: int = 0, hold: float = 0.0, hold_every: bool = False) -> None:
    job = context.job
    assert job.id is not None
    _log(job.id, job.attempts, "start")
    if hold and (job.attempts == 0 or hold_every):
        time.sleep(hold)
    _log(job.id, job.attempts, "done")
