"""``python -m tests.bench.interference``: what maintenance costs the workers, by pause.

Workers (``--clients`` threads, each its own connection) claim and complete
jobs through the SQL API as fast as they can, first alone, then while the
purge task deletes a large backlog of expired jobs, once per value of
RECONCILER_BATCH_PAUSE. For each: the workers' claim+complete pairs per
second (and their ratio to alone), their p99 latency, purge's rows/s and its
longest transaction. The figures chose the pause's default (README,
Performance).

Then the peers' retention loops, replayed on the same data and server with the
same workers running (``--peers``):

- River's job cleaner (riverqueue/river, ``internal/maintenance/job_cleaner.go``):
  ``DELETE ... WHERE id IN (SELECT id ... ORDER BY id LIMIT 10000)`` until a
  batch comes back short, sleeping a random 50 ms to 1 s between batches;
- Oban's pruner (``Oban.Plugins.Pruner``): one ``DELETE`` of at most 10,000
  finished jobs per tick, a tick every 30 s (``--oban-ticks`` ticks are run,
  so its rows/s is its real drain rate at its default interval).

Neither peer has an event table, so the replay deletes each job's
``job_events`` in the same statement: the same rows go as with purge.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr
from sqlalchemy import text

from reconciler.db import Database, normalise_url, quote_ident
from reconciler.migrate import migrate
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.bench.measure import batch_timer
from tests.bench.statements import task_statements

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


# A peer's batch: its selection (finished jobs past retention, by id, 10,000 at most)
# and, since our schema keeps events beside the jobs, their events with them.
_PEER_BATCH = """
WITH doomed AS (
    SELECT id FROM jobs
    WHERE status IN ('succeeded', 'cancelled', 'dead')
      AND finished_at < now() - interval '30 days'
    ORDER BY id
    LIMIT 10000
), gone AS (
    DELETE FROM jobs j USING doomed d WHERE j.id = d.id RETURNING j.id
), events AS (
    DELETE FROM job_events e USING gone g WHERE e.job_id = g.id
)
SELECT count(*) FROM gone
"""
PEER_BATCH = 10_000
RIVER_SLEEP = (0.05, 1.0)  # BatchBackoffMin, BatchBackoffMax
OBAN_INTERVAL = 30.0  # the pruner's default interval, seconds


def _peer_batch(conn: psycopg.Connection[tuple[int]], tx_ms: list[float]) -> int:
    begun = time.perf_counter()
    with conn.transaction():
        row = conn.execute(_PEER_BATCH).fetchone()
    tx_ms.append((time.perf_counter() - begun) * 1000)
    return int(row[0]) if row else 0


def _river(dsn: str, seed: int) -> tuple[int, list[float]]:
    """River's cleaner, one run: batches until a short one, a random pause between."""
    rng = random.Random(seed)
    tx_ms: list[float] = []
    deleted = 0
    with psycopg.connect(dsn) as conn:
        while True:
            n = _peer_batch(conn, tx_ms)
            deleted += n
            if n < PEER_BATCH:
                return deleted, tx_ms
            time.sleep(rng.uniform(*RIVER_SLEEP))


def _oban(dsn: str, ticks: int) -> tuple[int, list[float]]:
    """Oban's pruner: one batch per tick, ``ticks`` ticks ``OBAN_INTERVAL`` apart."""
    tx_ms: list[float] = []
    deleted = 0
    begun = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for tick in range(ticks):
            time.sleep(max(0.0, begun + tick * OBAN_INTERVAL - time.perf_counter()))
            deleted += _peer_batch(conn, tx_ms)
    time.sleep(max(0.0, begun + ticks * OBAN_INTERVAL - time.perf_counter()))
    return deleted, tx_ms


def _while_working(
    maintenance: Callable[[], tuple[int, list[float]]], dsn: str, clients: int
) -> tuple[int, list[float], float, int, float]:
    """Workers claiming and completing while ``maintenance`` runs:
    (pairs, latencies, seconds, rows removed, longest maintenance transaction ms)."""
    stop = threading.Event()
    results: list[tuple[int, list[float]]] = []

    def run() -> None:
        try:
            results.append(maintenance())
        finally:
            stop.set()

    worker = threading.Thread(target=run)
    begun = time.perf_counter()
    worker.start()
    pairs, latencies = _workers(dsn, clients, stop)
    seconds = time.perf_counter() - begun
    worker.join()
    removed, tx_ms = results[0]
    return pairs, latencies, seconds, removed, max(tx_ms, default=0.0)


def _purge(db: Database, settings: Settings) -> Callable[[], tuple[int, list[float]]]:
    def run() -> tuple[int, list[float]]:
        watched = task_statements(
            db, settings, "purge", now=db.now(), batch_size=settings.batch_size
        )
        with batch_timer(db.engine, watched) as tx_ms:
            result = run_task(db, settings, "purge", time_budget=timedelta(hours=1))
        return result.changed, list(tx_ms)

    return run


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
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also replay River's cleaner and Oban's pruner (default: yes)",
    )
    parser.add_argument(
        "--oban-ticks", type=int, default=2, help="pruner ticks to run, 30 s apart (2)"
    )
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
        windows = len(args.pauses.split(",")) + 1 + (4 + args.oban_ticks * 3 if args.peers else 0)
        # About 400 pairs/s on two cores: 1,000 per client-second leaves ample headroom.
        queued = int(args.clients * 1000 * args.seconds * windows)
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
            f"{'alone':<24} {alone:>10,.0f} {'1.00':>8} {_p99(latencies):>9.1f} {'':>10} {'':>8}"
        )
        loops: list[tuple[str, Callable[[], tuple[int, list[float]]]]] = [
            (f"purge, pause {p:g}", _purge(db, base.model_copy(update={"batch_pause": p})))
            for p in (float(p) for p in args.pauses.split(","))
        ]
        if args.peers:
            loops.append(("river cleaner", lambda: _river(dsn, seed=1)))
            loops.append(
                (f"oban pruner ({args.oban_ticks} ticks)", lambda: _oban(dsn, args.oban_ticks))
            )
        for label, maintenance in loops:
            with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
                conn.execute(text(_EXPIRED), {"n": args.expired})
            with db.autocommit() as raw:
                raw.execute(f"VACUUM ANALYZE {quote_ident(SCHEMA)}.jobs")
                raw.execute(f"VACUUM ANALYZE {quote_ident(SCHEMA)}.job_events")
            _say(f"{label}: {args.expired:,} expired jobs")
            pairs, latencies, seconds, removed, longest = _while_working(
                maintenance, dsn, args.clients
            )
            rate = pairs / seconds
            lines.append(
                f"{label:<24} {rate:>10,.0f} {rate / alone:>8.2f} {_p99(latencies):>9.1f} "
                f"{removed / seconds:>10,.0f} {seconds:>8.1f} {longest:>10.1f}"
            )
            with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
                # What a loop left (Oban's ticks drain only part of the backlog) goes,
                # so every loop starts from the same table.
                conn.execute(
                    text(
                        "DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs"
                        " WHERE status = 'succeeded'"
                        " AND finished_at < now() - interval '30 days')"
                    )
                )
                conn.execute(
                    text(
                        "DELETE FROM jobs WHERE status = 'succeeded'"
                        " AND finished_at < now() - interval '30 days'"
                    )
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
    header = ("maintenance", "pairs/s", "vs alone", "p99 ms", "removed/s", "seconds", "longest tx")
    print(
        f"{header[0]:<24} "
        + " ".join(f"{h:>{w}}" for h, w in zip(header[1:], (10, 8, 9, 10, 8, 10), strict=True))
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
