"""``python -m tests.bench.interference``: what maintenance costs the workers, by pause.

Workers (``--clients`` processes, each its own connection, so that none shares an
interpreter with the task) claim and complete jobs through the SQL API as fast as
they can, alone for ``--seconds`` and then while a task works through a large backlog
(the backlog in place both times), once per
value of RECONCILER_BATCH_PAUSE: purge deleting ``--expired`` expired jobs (with
their events), and mark-stale marking ``--stale`` jobs of a crashed fleet. For
each: the workers' claim+complete pairs per second (and their ratio to alone),
their p99 latency, the task's rows/s and its longest transaction. The figures
chose the pauses' defaults (README, Performance). The workers' windows alone vary
by about 10 % from one to the next; ``--rounds N`` measures every line N times,
interleaved, and adds each line's median ratio and its range.

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
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

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
# A crashed fleet's jobs: running, last heard of an hour ago, each with its claim event.
_STALE = """
WITH made AS (
    INSERT INTO jobs (queue, kind, payload, status, attempt, max_attempts, run_at,
                      locked_by, locked_at, heartbeat_at, started_at, created_at)
    SELECT 'crashed', 'email', '{}', 'running', 1, 3, now() - interval '1 hour',
           'dead-host:' || (g % 50), now() - interval '1 hour', now() - interval '1 hour',
           now() - interval '1 hour', now() - interval '1 hour'
    FROM generate_series(1, :n) g
    RETURNING id
)
INSERT INTO job_events (job_id, from_status, to_status, at, actor)
SELECT id, 'queued', 'running', now() - interval '1 hour', 'bench' FROM made
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


def _worker(dsn: str, name: str, ready: Any, go: Any, stop: Any, out: Any) -> None:
    """One worker process: connect, say so, wait for ``go``, then claim and complete until
    ``stop``; puts (pairs, latency of each pair in ms)."""
    done = 0
    latencies: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        ready.release()
        go.wait()
        while not stop.is_set():
            begun = time.perf_counter()
            row = conn.execute(
                "SELECT id, claim_token FROM claim(worker => %s, queues => ARRAY['default'],"
                " n => 1)",
                (name,),
            ).fetchone()
            if row is None:
                continue
            conn.execute("SELECT complete(%s, %s)", row)
            latencies.append((time.perf_counter() - begun) * 1000)
            done += 1
    out.put((done, latencies))


_SPAWN = multiprocessing.get_context("spawn")  # no inherited connections or threads


def _workers(
    dsn: str, clients: int, meanwhile: Callable[[], None]
) -> tuple[int, list[float], float]:
    """Worker processes claiming and completing while ``meanwhile()`` runs, timed from the
    moment all of them are connected: (pairs, latency of each pair in ms, seconds)."""
    ready, go, stop, out = _SPAWN.Semaphore(0), _SPAWN.Event(), _SPAWN.Event(), _SPAWN.Queue()
    procs = [
        _SPAWN.Process(target=_worker, args=(dsn, f"w{i}", ready, go, stop, out))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a worker process did not connect within 120 s")
        go.set()
        begun = time.perf_counter()
        try:
            meanwhile()
        finally:
            stop.set()
            seconds = time.perf_counter() - begun
        results = [out.get(timeout=120) for _ in procs]
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return sum(r[0] for r in results), [ms for r in results for ms in r[1]], seconds


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
    results: list[tuple[int, list[float]]] = []
    pairs, latencies, seconds = _workers(dsn, clients, lambda: results.append(maintenance()))
    removed, tx_ms = results[0]
    return pairs, latencies, seconds, removed, max(tx_ms, default=0.0)


def _task(db: Database, settings: Settings, task: str) -> Callable[[], tuple[int, list[float]]]:
    def run() -> tuple[int, list[float]]:
        watched = task_statements(db, settings, task, now=db.now(), batch_size=settings.batch_size)
        with batch_timer(db.engine, watched) as tx_ms:
            result = run_task(db, settings, task, time_budget=timedelta(hours=1))
        return result.changed, list(tx_ms)

    return run


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.interference")
    parser.add_argument(
        "--url", default=os.environ.get("RECONCILER_TEST_DATABASE_URL") or LOCAL_URL
    )
    parser.add_argument("--clients", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--expired", type=int, default=300_000, help="expired jobs to purge")
    parser.add_argument(
        "--stale", type=int, default=100_000, help="silent running jobs to mark stale"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="the workers alone before each task (10)"
    )
    parser.add_argument(
        "--pauses", default="0,0.5,2,4,9", help="RECONCILER_BATCH_PAUSE values (0,0.5,2,4,9)"
    )
    parser.add_argument(
        "--tasks", default="purge,mark-stale", help="tasks to run beside the workers"
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also replay River's cleaner and Oban's pruner (default: yes)",
    )
    parser.add_argument(
        "--oban-ticks", type=int, default=2, help="pruner ticks to run, 30 s apart (2)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every line this many times, the rounds interleaved, and add each "
        "line's median and range (1)",
    )
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if unknown := set(tasks) - {"purge", "mark-stale"}:
        parser.error(f"--tasks: {', '.join(sorted(unknown))}: only purge and mark-stale")
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    url = normalise_url(args.url)
    base = Settings(_env_file=None, database_url=SecretStr(args.url), schema_name=SCHEMA)  # type: ignore[call-arg]
    db = Database.connect(
        url, schema=SCHEMA, lock_timeout=base.lock_timeout, statement_timeout=timedelta(minutes=10)
    )
    dsn = make_conninfo(args.url, options=f"-c search_path={SCHEMA}")
    # Queued jobs kept for the workers before each window: a window lasts as long as its
    # task, and a worker that found the queue empty would measure nothing.
    keep_queued = int(args.clients * 2000 * max(args.seconds, 60))
    lines = []

    def top_up() -> None:
        with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
            have = conn.execute(
                text("SELECT count(*) FROM jobs WHERE status = 'queued'")
            ).scalar_one()
            if have < keep_queued:
                conn.execute(text(_QUEUED), {"n": keep_queued - have})

    def vacuum() -> None:
        with db.autocommit() as raw:
            raw.execute(f"VACUUM ANALYZE {quote_ident(SCHEMA)}.jobs")
            raw.execute(f"VACUUM ANALYZE {quote_ident(SCHEMA)}.job_events")

    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        migrate(db)
        top_up()
        vacuum()
        _say(f"{keep_queued:,} queued jobs")
        pauses = [float(p) for p in args.pauses.split(",")]
        loops: list[tuple[str, str, int, Callable[[], tuple[int, list[float]]]]] = []
        for task in tasks:
            fill, rows = (_EXPIRED, args.expired) if task == "purge" else (_STALE, args.stale)
            loops += [
                (
                    f"{task}, pause {p:g}",
                    fill,
                    rows,
                    _task(db, base.model_copy(update={"batch_pause": p}), task),
                )
                for p in pauses
            ]
        if args.peers:
            loops.append(("river cleaner", _EXPIRED, args.expired, lambda: _river(dsn, seed=1)))
            loops.append(
                (
                    f"oban pruner ({args.oban_ticks} ticks)",
                    _EXPIRED,
                    args.expired,
                    lambda: _oban(dsn, args.oban_ticks),
                )
            )
        ratios: dict[str, list[tuple[float, float]]] = {}
        for label, fill, rows, maintenance in [each for _ in range(args.rounds) for each in loops]:
            top_up()
            with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
                conn.execute(text(fill), {"n": rows})
            vacuum()
            # The workers alone on this very table, backlog in place, just before the task:
            # a bigger table is a slower one on a server whose cache it outgrows, and that
            # is not the task's doing.
            _say(f"{label}: {rows:,} rows; workers alone for {args.seconds:g} s, then with it")
            pairs, latencies, seconds = _workers(
                dsn, args.clients, lambda: time.sleep(args.seconds)
            )
            alone, alone_p99 = pairs / seconds, _p99(latencies)
            pairs, latencies, seconds, removed, longest = _while_working(
                maintenance, dsn, args.clients
            )
            rate, with_p99 = pairs / seconds, _p99(latencies)
            ratios.setdefault(label, []).append((rate / alone, with_p99 / alone_p99))
            lines.append(
                f"{label:<24} {alone:>8,.0f} {alone_p99:>7.1f} {rate:>8,.0f} {with_p99:>7.1f}"
                f" {rate / alone:>8.2f} {with_p99 / alone_p99:>7.2f}"
                f" {removed / seconds:>9,.0f} {seconds:>8.1f} {longest:>10.1f}"
            )
            with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
                # What a loop left (Oban's ticks drain only part of the backlog), and the
                # jobs mark-stale moved, go, so every loop starts from the same table.
                leftover = (
                    "SELECT id FROM jobs WHERE queue = 'crashed'"
                    " OR (status = 'succeeded' AND finished_at < now() - interval '30 days')"
                )
                conn.execute(text(f"DELETE FROM job_events WHERE job_id IN ({leftover})"))
                conn.execute(text(f"DELETE FROM jobs WHERE id IN ({leftover})"))
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        db.dispose()
    print(
        f"interference benchmark: {args.clients} worker processes claiming and completing"
        f" through the SQL API; purge of {args.expired:,} expired jobs (with their events),"
        f" mark-stale of {args.stale:,} silent running jobs;"
        f" {os.cpu_count()} CPUs, load average {os.getloadavg()[1]:.1f}"
    )
    header = (
        ("maintenance", 24),
        ("alone/s", 8),
        ("p99 ms", 7),
        ("with/s", 8),
        ("p99 ms", 7),
        ("tps x", 8),
        ("p99 x", 7),
        ("rows/s", 9),
        ("seconds", 8),
        ("longest tx", 10),
    )
    print(f"{header[0][0]:<24} " + " ".join(f"{h:>{w}}" for h, w in header[1:]))
    print("\n".join(lines))
    if args.rounds > 1:
        print(f"\nover {args.rounds} rounds: median (lowest-highest)")
        print(f"{'maintenance':<24} {'tps x':>18} {'p99 x':>18}")
        for label, pairs_of in ratios.items():
            tps, p99 = ([pair[i] for pair in pairs_of] for i in (0, 1))
            print(f"{label:<24} {_spread(tps):>18} {_spread(p99):>18}")
    return 0


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    raise SystemExit(main())
