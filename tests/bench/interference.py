"""``python -m tests.bench.interference``: what maintenance costs the workers, by pause.

Workers (``--clients`` threads, each its own connection) claim and complete
jobs through the SQL API as fast as they can, first alone, then while the
purge task deletes a large backlog of expired jobs, once per value of
RECONCILER_BATCH_PAUSE. For each: the workers' claim+complete pairs per
second (and their ratio to alone), their p99 latency, and purge's rows/s.
The figures chose the pause's default (README, Performance).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr
from sqlalchemy import text

from reconciler.db import Database, normalise_url, quote_ident
from reconciler.migrate import migrate
from reconciler.runner import run_task
from reconciler.settings import Settings

SCHEMA = "reconciler_bench_interference"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"

_QUEUED = """
INSERT INTO jobs (queue, kind, payload, status, attempt, max_attempts, run_at, created_at)
SELECT 'default', 'email', '{}', 'queued', 0, 3, now() - interval '1 minute',
       now() - interval '1 minute'
FROM generate_series(1, :n)
"""
_EXPIRED = """
WITH made AS (
    INSERT INTO jobs (queue, kind, payload, status, attempt, max_attempts, run_at,
                      started_at, finished_at, created_at)
    SELECT 'default', 'email', '{}', 'succeeded', 1, 3, now() - interval '40 days',
           now() - interval '40 days', now() - interval '40 days', now() - interval '40 days'
    FROM generate_series(1, :n)
    RETURNING id
)
INSERT INTO job_events (job_id, from_status, to_status, at, actor)
SELECT id, 'running', 'succeeded', now() - interval '40 days', 'bench' FROM made
"""


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _workers(dsn: str, clients: int, stop: threading.Event) -> tuple[int, list[float]]:
    """Claim and complete until ``stop``; (pairs done, latency of each pair in ms)."""
    done: list[int] = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def work(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                begun = time.perf_counter()
                row = conn.execute(
                    "SELECT id, claim_token FROM claim(worker => %s, n => 1)", (f"w{i}",)
                ).fetchone()
                if row is None:
                    continue
                conn.execute("SELECT complete(%s, %s)", row)
                latencies[i].append((time.perf_counter() - begun) * 1000)
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), [ms for per in latencies for ms in per]


def _purge_while_working(
    db: Database, settings: Settings, dsn: str, args: argparse.Namespace
) -> tuple[int, list[float], float, int]:
    """Workers claiming and completing while purge runs: (pairs, latencies, seconds, purged)."""
    stop = threading.Event()
    results = []

    def purge() -> None:
        results.append(run_task(db, settings, "purge", time_budget=timedelta(hours=1)))
        stop.set()

    purger = threading.Thread(target=purge)
    begun = time.perf_counter()
    purger.start()
    pairs, latencies = _workers(dsn, args.clients, stop)
    seconds = time.perf_counter() - begun
    purger.join()
    return pairs, latencies, seconds, results[0].changed


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.interference")
    parser.add_argument(
        "--url", default=os.environ.get("RECONCILER_TEST_DATABASE_URL") or LOCAL_URL
    )
    parser.add_argument("--clients", type=int, default=2, help="worker connections (2)")
    parser.add_argument("--expired", type=int, default=300_000, help="expired jobs to purge")
    parser.add_argument("--seconds", type=float, default=10.0, help="window alone (10)")
    parser.add_argument("--pauses", default="0,0.5,1,2", help="RECONCILER_BATCH_PAUSE values")
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    url = normalise_url(args.url)
    base = Settings(_env_file=None, database_url=SecretStr(args.url), schema_name=SCHEMA)  # type: ignore[call-arg]
    db = Database.connect(
        url, schema=SCHEMA, lock_timeout=base.lock_timeout, statement_timeout=timedelta(minutes=10)
    )
    dsn = make_conninfo(args.url, options=f"-c search_path={SCHEMA}")
    lines = []
    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        migrate(db)
        queued = int(args.clients * 4000 * args.seconds * (len(args.pauses.split(",")) + 1))
        with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
            conn.execute(text(_QUEUED), {"n": queued})
        _say(f"{queued:,} queued jobs; workers alone for {args.seconds:g} s")
        stop = threading.Event()
        timer = threading.Timer(args.seconds, stop.set)
        timer.start()
        begun = time.perf_counter()
        pairs, latencies = _workers(dsn, args.clients, stop)
        alone = pairs / (time.perf_counter() - begun)
        lines.append(
            f"{'alone':<10} {alone:>10,.0f} {'1.00':>8} {_p99(latencies):>9.1f} {'':>10} {'':>8}"
        )
        for pause in (float(p) for p in args.pauses.split(",")):
            with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
                conn.execute(text(_EXPIRED), {"n": args.expired})
            with db.autocommit() as raw:
                raw.execute(f"VACUUM ANALYZE {quote_ident(SCHEMA)}.jobs")
            settings = base.model_copy(update={"batch_pause": pause})
            _say(f"purge of {args.expired:,} expired jobs with RECONCILER_BATCH_PAUSE={pause:g}")
            pairs, latencies, seconds, changed = _purge_while_working(db, settings, dsn, args)
            rate = pairs / seconds
            purged = changed / seconds
            lines.append(
                f"{pause:<10g} {rate:>10,.0f} {rate / alone:>8.2f} {_p99(latencies):>9.1f} "
                f"{purged:>10,.0f} {seconds:>8.1f}"
            )
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        db.dispose()
    print(
        f"interference benchmark: {args.clients} worker connections claiming and completing"
        f" through the SQL API; purge of {args.expired:,} expired jobs (with their events);"
        f" {os.cpu_count()} CPUs, load average {os.getloadavg()[1]:.1f}"
    )
    header = ("pause", "pairs/s", "vs alone", "p99 ms", "purged/s", "seconds")
    print(
        f"{header[0]:<10} "
        + " ".join(f"{h:>{w}}" for h, w in zip(header[1:], (10, 8, 9, 10, 8), strict=True))
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
