"""``python -m tests.bench.backlog``: does a batch cost the same whatever the backlog?

For each task and each backlog size (``--sizes``, default 10,000, 1,000,000
and 10,000,000 eligible rows; ``--big-tasks`` limits the largest to mark-stale
and purge), a fresh schema ``reconciler_bench_backlog`` (from the migrations)
holds a busy queue's live rows and that many rows eligible for the task, with
two ``job_events`` rows each, vacuumed and analysed. Then one run of the task,
as the daemon would run it (batch sizing toward ``RECONCILER_BATCH_TARGET``)
but with no pause between batches (``RECONCILER_BATCH_PAUSE=0``, the raw rate)
and a time budget of ``--budget`` (the run stops starting batches after it).

Printed: rows moved, rows/s, batches, the median and the longest batch
transaction, and the rows per batch on average (sizing grows the batches
from ``RECONCILER_BATCH_SIZE`` toward the target). Flat means the same rows/s
and batch times at 10 k as at 10 M: no plan reads or sorts the whole eligible
set. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

from pydantic import SecretStr

from reconciler.db import Database, normalise_url, quote_ident
from reconciler.migrate import migrate
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.bench.fill import LIVE_ROWS, eligible_rows, insert_rows, vacuum_analyze
from tests.bench.measure import batch_timer
from tests.bench.statements import task_statements

SCHEMA = "reconciler_bench_backlog"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
TASKS = ("mark-stale", "requeue", "dead-letter", "purge")


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _size(n: int) -> str:
    return f"{n // 1000:,}k" if n < 1_000_000 else f"{n / 1_000_000:g}M"


def _one(url: str, task: str, eligible: int, budget: timedelta) -> str:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(url),
        schema_name=SCHEMA,
        batch_pause=0,
        run_time_budget=budget,
    )
    db = Database.connect(
        normalise_url(url),
        schema=SCHEMA,
        lock_timeout=settings.lock_timeout,
        statement_timeout=timedelta(minutes=60),
    )
    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        migrate(db)
        now = db.now()
        _say(f"{task}: {eligible:,} eligible rows")
        insert_rows(db, now, [*LIVE_ROWS, *eligible_rows(task, eligible)])
        vacuum_analyze(db)
        now = db.now()
        watched = task_statements(db, settings, task, now=now, batch_size=settings.batch_size)
        begun = time.perf_counter()
        with batch_timer(db.engine, watched) as tx_ms:
            result = run_task(db, settings, task, now=now, time_budget=budget)
        seconds = time.perf_counter() - begun
        per_batch = result.changed // max(result.batches, 1)
        rate = result.changed / seconds
        return (
            f"{task:<12} {_size(eligible):>9} {result.changed:>10,} {rate:>9,.0f}"
            f" {result.batches:>8} {statistics.median(tx_ms or [0]):>9.1f}"
            f" {max(tx_ms or [0]):>10.1f} {per_batch:>9,}"
        )
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        db.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.backlog")
    parser.add_argument(
        "--url", default=os.environ.get("RECONCILER_TEST_DATABASE_URL") or LOCAL_URL
    )
    parser.add_argument(
        "--sizes", default="10000,1000000,10000000", help="eligible rows, comma-separated"
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help="tasks, comma-separated")
    parser.add_argument(
        "--big-tasks",
        default="mark-stale,purge",
        help="the tasks measured at the largest size (mark-stale,purge)",
    )
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per run (10)")
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    sizes = sorted(int(s) for s in args.sizes.split(","))
    big = set(args.big_tasks.split(","))
    lines = []
    for task in args.tasks.split(","):
        for n in sizes:
            if n == sizes[-1] and len(sizes) > 1 and task not in big:
                continue
            lines.append(_one(args.url, task, n, timedelta(seconds=args.budget)))
    print(
        f"backlog benchmark: one run per task and backlog, batch sizing on, no pause,"
        f" {args.budget:g} s budget; {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[1]:.1f}"
    )
    print(
        f"{'task':<12} {'eligible':>9} {'rows':>10} {'rows/s':>9} {'batches':>8}"
        f" {'median ms':>9} {'longest ms':>10} {'per batch':>9}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
