"""``python -m tests.bench.footprint``: the daemon's memory and CPU, idle and under load.

Starts the real daemon (``python -m reconciler daemon``, the shipped default
schedule) as a subprocess on schema ``reconciler_bench_footprint`` (built from
the migrations, dropped at the end) and samples its ``/proc/<pid>`` once a
second: resident memory (VmRSS) and CPU time (utime + stime). Two phases of
``--seconds`` each (600, the issue's ten minutes):

- idle: an empty queue; every task runs on its schedule and finds nothing;
- load: this process enqueues ``--rate`` jobs a second and ``--workers``
  threads claim and finish them through the SQL API: 70 % complete, 20 % fail
  (requeue retries them by policy, dead-letter takes the exhausted), 10 % are
  abandoned mid-job as by a crashed worker, which mark-stale finds once the
  heartbeat timeout (``--heartbeat-timeout``, 30s here so that it happens
  within the phase) has passed.

Printed per phase: RSS at its start, median, maximum and end (growth is a
leak's signature), CPU as a share of one core, and the runs the daemon
recorded; then the WAL the server wrote per job under load (every statement
of the job's life: enqueue, claim, completion or failure, the daemon's
transitions, their events). A measurement, not a test: Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import text

from reconciler.db import Database, normalise_url, quote_ident
from reconciler.migrate import migrate

SCHEMA = "reconciler_bench_footprint"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
TICK = os.sysconf("SC_CLK_TCK")


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    rss_kib: int
    cpu_s: float


def _sample(pid: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    # /proc/<pid>/stat: fields 14 and 15 (utime, stime) after the ')' closing the name.
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return Sample(rss, (int(fields[11]) + int(fields[12])) / TICK)


@dataclass(frozen=True)
class Phase:
    name: str
    samples: list[Sample]
    seconds: float
    runs: int

    def line(self) -> str:
        rss = [s.rss_kib / 1024 for s in self.samples]
        cpu = (self.samples[-1].cpu_s - self.samples[0].cpu_s) / self.seconds * 100
        return (
            f"{self.name:<6} {rss[0]:>9.1f} {statistics.median(rss):>9.1f} {max(rss):>9.1f}"
            f" {rss[-1]:>9.1f} {cpu:>9.2f} {self.runs:>7,}"
        )


def _watch(pid: int, seconds: float) -> tuple[list[Sample], float]:
    samples = [_sample(pid)]
    begun = time.monotonic()
    while (left := begun + seconds - time.monotonic()) > 0:
        time.sleep(min(1.0, left))  # the sampling period of a measurement
        samples.append(_sample(pid))
    return samples, time.monotonic() - begun


def _runs(db: Database) -> int:
    with db.transaction() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs")).scalar_one())


def _wal_and_jobs(db: Database) -> tuple[int, int]:
    """The server's WAL position (bytes) and the jobs enqueued so far (the id sequence)."""
    with db.transaction() as conn:
        row = conn.execute(
            text(
                "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn,"
                " (SELECT coalesce(max(id), 0) FROM jobs)"
            )
        ).one()
    return int(row[0]), int(row[1])


def _load(dsn: str, rate: float, workers: int, stop: threading.Event) -> list[threading.Thread]:
    """A producer at ``rate`` jobs/s and ``workers`` workers: complete, fail or abandon."""

    def produce() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.wait(1.0):
                conn.execute(
                    "INSERT INTO jobs (queue, kind, payload, status, max_attempts)"
                    " SELECT 'default', 'email', '{}', 'queued', 3"
                    " FROM generate_series(1, %s)",
                    (round(rate),),
                )

    def work(i: int) -> None:
        rng = random.Random(i)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT id, claim_token FROM claim(worker => %s, n => 1)", (f"w{i}",)
                ).fetchone()
                if row is None:
                    stop.wait(0.05)
                    continue
                fate = rng.random()
                if fate < 0.1:
                    continue  # abandoned: no heartbeat, no report, as by a crash
                if fate < 0.3:
                    conn.execute("SELECT fail(%s, %s, %s)", (*row, '{"message": "bench"}'))
                else:
                    conn.execute("SELECT complete(%s, %s)", row)

    threads = [threading.Thread(target=produce)]
    threads += [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    return threads


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.footprint")
    parser.add_argument(
        "--url", default=os.environ.get("RECONCILER_TEST_DATABASE_URL") or LOCAL_URL
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="per phase (600)")
    parser.add_argument("--rate", type=float, default=50.0, help="jobs enqueued a second (50)")
    parser.add_argument("--workers", type=int, default=4, help="worker threads (4)")
    parser.add_argument("--heartbeat-timeout", default="30s", help="the daemon's (30s)")
    args = parser.parse_args(argv)
    db = Database.connect(
        normalise_url(args.url),
        schema=SCHEMA,
        lock_timeout=timedelta(seconds=5),
        statement_timeout=timedelta(minutes=5),
    )
    dsn = make_conninfo(args.url, options=f"-c search_path={SCHEMA}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(
        RECONCILER_DATABASE_URL=args.url,
        RECONCILER_SCHEMA=SCHEMA,
        RECONCILER_LOG_FORMAT="json",
        RECONCILER_LOG_LEVEL="warning",
        RECONCILER_HEARTBEAT_TIMEOUT=args.heartbeat_timeout,
    )
    phases: list[Phase] = []
    daemon = None
    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        migrate(db)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "daemon"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Start-up (imports, first connections) is not the idle cost: wait for a run.
        deadline = time.monotonic() + 120
        while _runs(db) == 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon recorded no run within 120 s; is the URL right?")
            time.sleep(0.5)
        _say(f"daemon pid {daemon.pid} running; idle for {args.seconds:g} s")
        before = _runs(db)
        samples, seconds = _watch(daemon.pid, args.seconds)
        phases.append(Phase("idle", samples, seconds, _runs(db) - before))
        _say(f"load: {args.rate:g} jobs/s, {args.workers} workers, for {args.seconds:g} s")
        stop = threading.Event()
        wal0, jobs0 = _wal_and_jobs(db)
        threads = _load(dsn, args.rate, args.workers, stop)
        before = _runs(db)
        try:
            samples, seconds = _watch(daemon.pid, args.seconds)
        finally:
            stop.set()
            for t in threads:
                t.join()
        phases.append(Phase("load", samples, seconds, _runs(db) - before))
        wal1, jobs1 = _wal_and_jobs(db)
        with db.transaction() as conn:
            moved = conn.execute(
                text(
                    "SELECT from_status || '->' || to_status, count(*) FROM job_events"
                    " WHERE actor LIKE 'reconciler:%' GROUP BY 1 ORDER BY 1"
                )
            ).all()
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        db.dispose()
    print(
        f"daemon footprint: the default schedule, {args.seconds:g} s per phase, sampled every"
        f" second; load {args.rate:g} jobs/s; {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[1]:.1f}"
    )
    print(
        f"{'phase':<6} {'RSS MiB':>9} {'median':>9} {'max':>9} {'end':>9} {'CPU %':>9} {'runs':>7}"
    )
    print("\n".join(p.line() for p in phases))
    print("moved by the daemon under load: " + ", ".join(f"{t} {n:,}" for t, n in moved))
    jobs = max(1, jobs1 - jobs0)
    print(
        f"WAL written under load: {(wal1 - wal0) / 1024 / 1024:,.1f} MiB for {jobs:,} jobs"
        f" enqueued, {(wal1 - wal0) / jobs / 1024:,.1f} KiB a job (the whole server's WAL,"
        " with the workers' claims, heartbeats, completions and the daemon's work)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
