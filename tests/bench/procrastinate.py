"""``python -m tests.bench.procrastinate``: the procrastinate profile on Procrastinate's schema.

The same questions as ``python -m tests.bench`` asks of the native tasks, on
a ``procrastinate_jobs`` table of ``--rows`` jobs (finished ones within
retention, each with Procrastinate's three events; a few live ones), its
schema applied with Procrastinate's own CLI and the one index ``profiles
check`` advises (``procrastinate_events (at)``):

- idle cost: mark-stale and purge with nothing eligible (median of runs);
- full runs: ``--eligible-pct`` of the rows as jobs of a dead worker
  (mark-stale retries each through ``procrastinate_retry_job``) and as
  finished jobs past retention (purge deletes them with their events),
  batched through ``run_task``, against one plain statement over the same
  rows in one transaction (rolled back): rows/s and the longest transaction.

Progress goes to stderr, the figures to stdout; the schemas are dropped at
the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from psycopg.conninfo import make_conninfo
from pydantic import SecretStr
from sqlalchemy import text

from reconciler.db import Database, normalise_url, quote_ident
from reconciler.migrate import migrate
from reconciler.profiles import bind_profile
from reconciler.profiles.live import Bound
from reconciler.profiles.procrastinate import profile as procrastinate_profile
from reconciler.profiles.tasks import statement
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.sqlfiles import locking
from tests.bench.measure import Timed, batch_timer
from tests.bench.statements import Statement

PQ_SCHEMA = "reconciler_bench_pq"
OWN_SCHEMA = "reconciler_bench_pq_own"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
REPO = Path(__file__).resolve().parents[2]
IDLE_REPEATS = 11
LIVE_DOING, LIVE_TODO = 200, 1000

# The finished bulk: succeeded within retention (spread over ten days), three events each.
_FILL = """
WITH jobs AS (
    INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
    SELECT 'default', 'crunch', jsonb_build_object('n', g), 'succeeded', 1
    FROM generate_series(1, :rows) g
    RETURNING id
)
INSERT INTO procrastinate_events (job_id, type, at)
SELECT j.id, e.type::procrastinate_job_event_type,
       CAST(:now AS timestamptz) - make_interval(secs => (j.id % 864000)::double precision)
         - e.back
FROM jobs j
CROSS JOIN (VALUES ('deferred', interval '2 minutes'), ('started', interval '1 minute'),
                   ('succeeded', interval '0')) AS e (type, back)
"""
_LIVE = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, worker_id)
SELECT 'default', 'crunch', '{}', 'doing', (SELECT min(id) FROM procrastinate_workers)
FROM generate_series(1, :doing);
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)
SELECT 'default', 'crunch', '{}', 'todo' FROM generate_series(1, :todo)
"""
# Eligible: jobs of a worker silent for a day, and succeeded jobs whose events are 40 days old.
_ELIGIBLE_STALLED = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, worker_id)
SELECT 'default', 'crunch', '{}', 'doing', :dead_worker FROM generate_series(1, :n)
"""
_ELIGIBLE_OLD = """
WITH jobs AS (
    INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
    SELECT 'default', 'crunch', '{}', 'succeeded', 1 FROM generate_series(1, :n)
    RETURNING id
)
INSERT INTO procrastinate_events (job_id, type, at)
SELECT id, 'succeeded', CAST(:now AS timestamptz) - interval '40 days' FROM jobs
"""
# The runbook way, one statement each, no batches, no ledger.
_PLAIN_STALE = """
UPDATE procrastinate_jobs SET status = 'todo', attempts = attempts + 1,
       scheduled_at = CAST(:now AS timestamptz)
WHERE status = 'doing' AND worker_id = :dead_worker
"""
_PLAIN_PURGE = """
DELETE FROM procrastinate_jobs
WHERE status = 'succeeded' AND id IN (
    SELECT job_id FROM procrastinate_events GROUP BY job_id
    HAVING max(at) < CAST(:horizon AS timestamptz))
"""


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.procrastinate")
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs (1,000,000)")
    parser.add_argument("--eligible-pct", type=float, default=3.0, help="eligible per task (3)")
    parser.add_argument(
        "--url", default=os.environ.get("RECONCILER_TEST_DATABASE_URL") or LOCAL_URL
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the schemas afterwards")
    return parser.parse_args(argv)


def _apply_procrastinate(url: str) -> None:
    dsn = make_conninfo(url, options=f"-c search_path={PQ_SCHEMA}")
    env = {**os.environ, "RECONCILER_PQ_DSN": dsn, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "procrastinate",
            "--app",
            "tests.procrastinate_app.app",
            "schema",
            "--apply",
        ],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )


def _pq(db: Database, sql: str, **binds: object) -> None:
    with db.transaction(statement_timeout=timedelta(hours=1)) as conn:
        conn.execute(text(f"SET LOCAL search_path = {quote_ident(PQ_SCHEMA)}"))
        for part in sql.split(";"):
            if part.strip():
                conn.execute(text(part), binds)


def _vacuum(db: Database) -> None:
    with db.autocommit() as conn:
        for table in ("procrastinate_jobs", "procrastinate_events", "procrastinate_workers"):
            conn.execute(f"VACUUM ANALYZE {quote_ident(PQ_SCHEMA)}.{quote_ident(table)}")


def _statements(db: Database, bound: Bound, task: str) -> list[Statement]:
    sql = statement(db, bound, task)
    return [Statement(task, locking(sql, wait=False) if task == "mark-stale" else sql, {})]


def _idle(db: Database, settings: Settings, bound: Bound, task: str) -> tuple[float, float]:
    runs, batches = [], []
    run_task(db, settings, task, profile=bound)
    for _ in range(IDLE_REPEATS):
        with batch_timer(db.engine, _statements(db, bound, task)) as timed:
            begun = time.perf_counter()
            result = run_task(db, settings, task, profile=bound)
            runs.append((time.perf_counter() - begun) * 1000)
        if result.changed:
            raise RuntimeError(f"idle {task} was not idle: {result.to_dict()}")
        batches.extend(timed)
    return statistics.median(runs), statistics.median(batches)


def _plain(db: Database, sql: str, **binds: object) -> Timed:
    with db.transaction(statement_timeout=timedelta(hours=1), rollback=True) as conn:
        conn.execute(text(f"SET LOCAL search_path = {quote_ident(PQ_SCHEMA)}"))
        begun = time.perf_counter()
        rows = conn.execute(text(sql), binds).rowcount
        seconds = time.perf_counter() - begun
    _vacuum(db)
    return Timed(rows, seconds)


def _full(
    db: Database, settings: Settings, bound: Bound, task: str
) -> tuple[Timed, int, float, float]:
    with batch_timer(db.engine, _statements(db, bound, task)) as timed:
        begun = time.perf_counter()
        result = run_task(db, settings, task, profile=bound, time_budget=timedelta(hours=1))
        seconds = time.perf_counter() - begun
    if result.status != "ok" or result.stopped != "done":
        raise RuntimeError(f"{task} did not finish: {result.to_dict()}")
    return Timed(result.changed, seconds), result.batches, max(timed), statistics.median(timed)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(args.url),
        schema_name=OWN_SCHEMA,
        **overrides,
    )
    db = Database.connect(
        normalise_url(args.url),
        schema=OWN_SCHEMA,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
        application_name="reconciler-bench",
    )
    started = time.monotonic()
    try:
        with db.engine.begin() as conn:
            for schema in (PQ_SCHEMA, OWN_SCHEMA):
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
            conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(PQ_SCHEMA)}")
        migrate(db)
        _apply_procrastinate(args.url)
        now: datetime = db.now()
        _say(f"{args.rows:,} Procrastinate jobs with three events each")
        _pq(
            db,
            "INSERT INTO procrastinate_workers (last_heartbeat)"
            " SELECT now() FROM generate_series(1, 20)",
        )
        _pq(db, _FILL, rows=args.rows - LIVE_DOING - LIVE_TODO, now=now)
        _pq(db, _LIVE, doing=LIVE_DOING, todo=LIVE_TODO)
        _pq(db, "CREATE INDEX ON procrastinate_events (at)")  # the advised index
        _vacuum(db)
        bound = bind_profile(db, procrastinate_profile(PQ_SCHEMA))
        assert bound is not None
        _say("idle runs")
        idle = {task: _idle(db, settings, bound, task) for task in ("mark-stale", "purge")}
        eligible = round(args.rows * args.eligible_pct / 100)
        _say(f"{eligible:,} eligible jobs per task")
        with db.transaction() as conn:
            dead = conn.execute(
                text(
                    f"INSERT INTO {quote_ident(PQ_SCHEMA)}.procrastinate_workers (last_heartbeat)"
                    " VALUES (now() - interval '1 day') RETURNING id"
                )
            ).scalar_one()
        _pq(db, _ELIGIBLE_STALLED, n=eligible, dead_worker=dead)
        _pq(db, _ELIGIBLE_OLD, n=eligible, now=now)
        _vacuum(db)
        _say("full runs")
        rows = []
        plain = _plain(db, _PLAIN_STALE, now=now, dead_worker=dead)
        rows.append(("mark-stale", *_full(db, settings, bound, "mark-stale"), plain))
        horizon = now - settings.retention_succeeded
        plain = _plain(db, _PLAIN_PURGE, horizon=horizon)
        rows.append(("purge", *_full(db, settings, bound, "purge"), plain))
        with db.engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
    finally:
        if not args.keep:
            with db.engine.begin() as conn:
                for schema in (PQ_SCHEMA, OWN_SCHEMA):
                    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        db.dispose()
    print(
        f"procrastinate profile benchmark: PostgreSQL {version}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[1]:.1f}), batch size {settings.batch_size}, "
        f"{time.monotonic() - started:.0f} s in all"
    )
    print(
        f"Table: {args.rows:,} procrastinate_jobs ({LIVE_DOING} doing, {LIVE_TODO} todo, the rest"
        f" succeeded within retention), {3 * args.rows:,} events; then {eligible:,} jobs of a"
        " dead worker and as many succeeded past retention."
    )
    print()
    print(f"Idle runs (nothing eligible), median of {IDLE_REPEATS}, milliseconds")
    print(f"{'task':<12} {'run':>8} {'batch':>8}")
    for task, (run_ms, batch_ms) in idle.items():
        print(f"{task:<12} {run_ms:>8.1f} {batch_ms:>8.2f}")
    print()
    print("Full runs over the eligible rows")
    print(
        f"{'task':<12} {'rows':>7} {'rows/s':>8} {'seconds':>8} {'batches':>8} "
        f"{'longest tx ms':>13} {'median ms':>9}  {'plain statement rows/s (s)':>26}"
    )
    for task, timed, batches, longest, median, base in rows:
        print(
            f"{task:<12} {timed.rows:>7,} {timed.rows_per_s:>8,.0f} {timed.seconds:>8.2f} "
            f"{batches:>8} {longest:>13.1f} {median:>9.1f}  "
            f"{f'{base.rows_per_s:,.0f} ({base.seconds:.2f})':>26}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
