"""A real Procrastinate schema, applied with Procrastinate's own CLI, in a test's own schema.

:func:`pq` (a fixture, which tests/conftest.py makes every test's) yields a :class:`Pq`: the
schema, a conninfo whose search_path is that schema, helpers to defer jobs
through Procrastinate's own ``procrastinate_defer_jobs_v1`` and to start real
``procrastinate worker`` processes of tests/procrastinate_app.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Pq:
    schema: str
    dsn: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def sql(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def defer(
        self, n: int = 0, *, hold: float = 0.0, hold_every: bool = False, task: str = "crunch"
    ) -> int:
        """A job deferred as Procrastinate's own defer does it (its SQL function)."""
        args = {"n": n, "hold": hold, "hold_every": hold_every}
        rows = self.sql(
            "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW('default', %s, 0, NULL, NULL,"
            " %s::jsonb, NULL)]::procrastinate_job_to_defer_v1[]))",
            (task, Jsonb(args)),
        )
        return int(rows[0][0])

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        return {**base, "RECONCILER_PQ_DSN": self.dsn, "PYTHONPATH": str(REPO)}

    def worker(self) -> subprocess.Popen[bytes]:
        """A real ``procrastinate worker`` process; killed at the end of the test."""
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app",
                "tests.procrastinate_app.app",
                "worker",
                "--queues",
                "default",
                "--fetch-job-polling-interval",
                "0.2",
                "--concurrency",
                "2",
            ],
            env=self.env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers.append(proc)
        return proc

    def status(self, job_id: int) -> tuple[str, int]:
        rows = self.sql(
            "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", (job_id,)
        )
        return rows[0] if rows else ("gone", -1)

    def events(self, job_id: int) -> list[str]:
        return [
            r[0]
            for r in self.sql(
                "SELECT type::text FROM procrastinate_events WHERE job_id = %s ORDER BY id",
                (job_id,),
            )
        ]

    def log(self, job_id: int) -> list[tuple[int, str, int]]:
        rows = self.sql(
            "SELECT attempt, event, pid FROM pq_log WHERE job_id = %s ORDER BY id", (job_id,)
        )
        return [(int(a), str(e), int(p)) for a, e, p in rows]


@pytest.fixture
def pq(pg_url: str) -> Iterator[Pq]:
    from tests.conftest import dropped_after  # tests/conftest.py imports this module

    for name in dropped_after(pg_url, f"pq_{uuid.uuid4().hex[:12]}"):
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        env = Pq(name, make_conninfo(pg_url, options=f"-c search_path={name}"))
        applied = subprocess.run(
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app",
                "tests.procrastinate_app.app",
                "schema",
                "--apply",
            ],
            env=env.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert applied.returncode == 0, applied.stderr
        env.sql(
            "CREATE TABLE pq_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " job_id bigint, attempt integer, event text, pid integer,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        try:
            yield env
        finally:
            for proc in env.workers:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
