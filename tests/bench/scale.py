"""``python -m tests.bench.scale``: what issue 11 changed, measured before and after.

Prints, on one server and in one run (no timed assertion anywhere):

- requeue with ``--backoff`` jobs waiting in backoff, none due: a run of the task
  (``retry_at`` through ``jobs_retry_due_idx``), the selection as it was before
  (each waiting job's backoff computed at read time), and a plain one-statement
  ``UPDATE`` of the due jobs as the baseline;
- claim() latency (p50/p99) for a small queue behind ``--backlog`` due jobs of
  another queue, with that queue paused, and with ``--backlog``/2 critical jobs
  of the small queue due in an hour: the claim() of this build, and the claim()
  of the first migration (created beside it as ``claim_v0``);
- the share of heartbeats that are HOT updates;
- claim + complete through the SQL API, two client threads, pairs/s, against
  Procrastinate's ``procrastinate_fetch_job_v2`` + ``procrastinate_finish_job_v1``
  (its schema applied by its own ``SchemaManager``) in the same loop.

The schema ``reconciler_bench_scale`` is built from the real migrations and
dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from reconciler.db import normalise_url, redact
from reconciler.migrate import migrate
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.sqlfiles import data_dir
from tests.bench.__main__ import LOCAL_URL, TEST_URL_ENV, _connect, _drop

SCHEMA = "reconciler_bench_scale"

# requeue's selection before retry_at (sql/tasks/requeue.sql at 608c251's parent):
# every waiting job's backoff computed per row, then compared with now.
REQUEUE_BEFORE = """
SELECT j.id
FROM jobs j
CROSS JOIN LATERAL (
    SELECT coalesce(
        (SELECT backoff(j.attempt - j.attempt_base, p.initial_delay, p.max_delay,
                        p.multiplier, p.jitter, j.id)
         FROM policy_for(j.kind, j.priority) p),
        interval '0') AS delay
) b
WHERE j.status IN ('failed', 'stale')
  AND j.attempt - j.attempt_base < j.max_attempts
  AND coalesce(j.finished_at, j.updated_at) + b.delay <= %(now)s
ORDER BY j.finished_at, j.id
LIMIT 1000
FOR UPDATE OF j SKIP LOCKED
"""
REQUEUE_PLAIN = """
UPDATE jobs SET status = 'queued', run_at = %(now)s, finished_at = NULL
WHERE status IN ('failed', 'stale') AND retry_at <= %(now)s
"""


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _session(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, application_name="reconciler-bench")
    conn.execute(sql.SQL("SET search_path = {}, pg_temp").format(sql.Identifier(SCHEMA)))
    return conn


def _ms(conn: psycopg.Connection[Any], run: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of ``run`` per repeat, each in a transaction rolled back."""
    times = []
    for _ in range(repeats):
        conn.execute("BEGIN")
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
        conn.execute("ROLLBACK")
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _claim_v0(conn: psycopg.Connection[Any]) -> None:
    """The first migration's claim(), beside this build's, as claim_v0."""
    initial = (data_dir("sql") / "migrations" / "202612021900_initial.sql").read_text()
    start = initial.index("CREATE FUNCTION claim(")
    end = initial.index("$$;", initial.index("AS $$", start)) + 3
    body = initial[start:end].replace("claim.", "claim_v0.")  # its arguments, qualified
    conn.execute(body.replace("CREATE FUNCTION claim(", "CREATE FUNCTION claim_v0("))


def _claims(
    conn: psycopg.Connection[Any], fn: str, queues: list[str] | None, repeats: int
) -> tuple[float, float]:
    query = sql.SQL("SELECT * FROM {}('bench', %s, 1)").format(sql.Identifier(fn))

    def once() -> None:
        rows = conn.execute(query, [queues]).fetchall()
        assert len(rows) == 1, f"{fn}({queues}) claimed {len(rows)}"

    times = _ms(conn, once, repeats)
    return _p(times, 0.5), _p(times, 0.99)


def _tps(url: str, seconds: float, clients: int) -> float:
    """claim() + complete() per second, each pair its own transaction pair, ``clients`` threads."""
    done = [0] * clients
    stop = threading.Event()

    def work(i: int) -> None:
        with _session(url) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT id, claim_token FROM claim(%s, ARRAY['tps'], 1)", [f"w{i}"]
                ).fetchone()
                if row is None:
                    break
                conn.execute("SELECT complete(%s, %s)", [row[0], row[1]])
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


PEER_SCHEMA = "reconciler_bench_procrastinate"


def _procrastinate_tps(url: str, seconds: float, clients: int, jobs: int) -> float:
    """Procrastinate's own fetch + finish functions, on the same server and loop shape:
    its schema applied by its own SchemaManager in a schema of its own, ``jobs`` jobs."""
    import procrastinate

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(
                sql.Identifier(PEER_SCHEMA)
            )
        )
    options = {"options": f"-c search_path={PEER_SCHEMA}"}
    app = procrastinate.App(
        connector=procrastinate.SyncPsycopgConnector(conninfo=url, kwargs=options)
    )
    with app.open():
        app.schema_manager.apply_schema()
    done = [0] * clients
    stop = threading.Event()
    try:
        with psycopg.connect(url, autocommit=True, options=options["options"]) as conn:
            conn.execute(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
                " SELECT 'tps', 'bench', '{}', 'todo' FROM generate_series(1, %s)",
                [jobs],
            )
            conn.execute("VACUUM ANALYZE procrastinate_jobs")

        def work(i: int) -> None:
            with psycopg.connect(url, autocommit=True, options=options["options"]) as conn:
                row = conn.execute("SELECT procrastinate_register_worker_v1()").fetchone()
                assert row is not None
                worker = row[0]
                while not stop.is_set():
                    job = conn.execute(
                        "SELECT id FROM procrastinate_fetch_job_v2(ARRAY['tps'], %s)", [worker]
                    ).fetchone()
                    if job is None or job[0] is None:
                        break
                    conn.execute(
                        "SELECT procrastinate_finish_job_v1(%s, 'succeeded', false)", [job[0]]
                    )
                    done[i] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        return sum(done) / (time.perf_counter() - started)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(PEER_SCHEMA))
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scale", description=__doc__)
    parser.add_argument("--url", default=os.environ.get(TEST_URL_ENV) or LOCAL_URL)
    parser.add_argument("--backoff", type=int, default=100_000, help="jobs in backoff (100k)")
    parser.add_argument("--backlog", type=int, default=400_000, help="other queue (400k)")
    parser.add_argument("--repeats", type=int, default=200, help="claims per figure (200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="tps run length (10)")
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(args.url),
        schema_name=SCHEMA,
    )
    url = normalise_url(args.url)
    db = _connect(url, SCHEMA, settings)
    raw_url = url.render_as_string(hide_password=False).replace("+psycopg", "")
    out: list[str] = []
    try:
        _drop(db)
        migrate(db)
        now = db.now()
        _say(f"{redact(url)}: {args.backoff:,} failed jobs in backoff")
        with _session(raw_url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            conn.execute(
                "INSERT INTO jobs (kind, status, attempt, max_attempts, finished_at)"
                " SELECT 'bench', 'failed', 1, 3, %(now)s FROM generate_series(1, %(n)s)",
                {"now": now, "n": args.backoff},
            )
            conn.execute("VACUUM ANALYZE jobs")
            runs = []
            for _ in range(9):
                result = run_task(db, settings, "requeue", now=now)
                assert result.transitions == {}, result.transitions
                runs.append(result.duration_ms)
            before = _ms(conn, lambda: conn.execute(REQUEUE_BEFORE, {"now": now}).fetchall(), 3)
            plain = _ms(conn, lambda: conn.execute(REQUEUE_PLAIN, {"now": now}), 9)
            out += [
                f"Requeue, {args.backoff:,} jobs in backoff, none due, ms (median):",
                f"  requeue run (retry_at, jobs_retry_due_idx) {statistics.median(runs):>9.1f}",
                f"  selection before retry_at (one batch)      {statistics.median(before):>9.1f}",
                f"  plain UPDATE of the due jobs (baseline)    {statistics.median(plain):>9.1f}",
                "",
            ]
            conn.execute("DELETE FROM jobs")

            _say(f"claim: {args.backlog:,} older due jobs in queue 'big', 200 in 'small'")
            _claim_v0(conn)
            conn.execute(
                "INSERT INTO jobs (kind, queue, priority, run_at, max_attempts)"
                " SELECT 'bench', q.queue, mod(g, 5), %(now)s - q.age"
                "        + mod(g, 3600) * interval '1 second', 3"
                " FROM (VALUES ('big', %(n)s, interval '1 day'),"
                "              ('small', 200, interval '1 hour')) q (queue, n, age),"
                " LATERAL generate_series(1, q.n) g",
                {"now": now, "n": args.backlog},
            )
            conn.execute("VACUUM ANALYZE jobs")
            cases: list[tuple[str, list[str] | None]] = [("behind another queue", ["small"])]
            figures: dict[str, dict[str, tuple[float, float]]] = {}
            for label, queues in cases:
                figures[label] = {
                    fn: _claims(conn, fn, queues, args.repeats) for fn in ("claim_v0", "claim")
                }
            conn.execute("INSERT INTO paused_queues (queue, paused_by) VALUES ('big', 'bench')")
            figures["'big' paused, any queue"] = {
                fn: _claims(conn, fn, None, args.repeats) for fn in ("claim_v0", "claim")
            }
            conn.execute("DELETE FROM paused_queues")
            # The due jobs are of lower priorities: a walk by priority meets the future
            # critical ones first.
            conn.execute("DELETE FROM jobs WHERE queue = 'big' OR priority = 0")
            conn.execute(
                "INSERT INTO jobs (kind, queue, priority, run_at, max_attempts)"
                " SELECT 'bench', 'small', 0, %(now)s + interval '1 hour', 3"
                " FROM generate_series(1, %(n)s)",
                {"now": now, "n": args.backlog // 2},
            )
            conn.execute("VACUUM ANALYZE jobs")
            figures[f"{args.backlog // 2:,} critical due in 1 h ahead"] = {
                fn: _claims(conn, fn, ["small"], args.repeats) for fn in ("claim_v0", "claim")
            }
            out.append(
                f"claim(n => 1) of the small queue, ms, p50 / p99 over {args.repeats} claims:"
            )
            out.append(f"  {'case':<34} {'before (claim_v0)':>18} {'after (claim)':>16}")
            for label, by_fn in figures.items():
                b, a = by_fn["claim_v0"], by_fn["claim"]
                out.append(f"  {label:<34} {b[0]:>8.2f} / {b[1]:>7.2f} {a[0]:>7.2f} / {a[1]:>7.2f}")
            out.append("")
            conn.execute("DELETE FROM jobs")

            _say("heartbeats and claim + complete")
            conn.execute("SELECT enqueue('bench') FROM generate_series(1, 2000)")
            held = conn.execute("SELECT id, claim_token FROM claim('hb', NULL, 1000)").fetchall()
            held += conn.execute("SELECT id, claim_token FROM claim('hb', NULL, 1000)").fetchall()

            def counts() -> tuple[int, int]:
                conn.execute("SELECT pg_stat_force_next_flush()")
                row = conn.execute(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                    " WHERE relid = to_regclass('jobs')"
                ).fetchone()
                assert row is not None
                return int(row[0]), int(row[1])

            upd0, hot0 = counts()
            for job_id, token in held:
                conn.execute("SELECT heartbeat(%s, %s)", [job_id, token])
            upd1, hot1 = counts()
            out.append(
                f"Heartbeats: {upd1 - upd0:,} updates, {hot1 - hot0:,} HOT "
                f"({(hot1 - hot0) / max(1, upd1 - upd0):.0%})"
            )
            conn.execute(
                "INSERT INTO jobs (kind, queue, max_attempts)"
                " SELECT 'bench', 'tps', 3 FROM generate_series(1, 400000)"
            )
            conn.execute("VACUUM ANALYZE jobs")
        tps = _tps(raw_url, args.seconds, 2)
        _say("Procrastinate's fetch + finish, same loop")
        peer = _procrastinate_tps(raw_url, args.seconds, 2, 400_000)
        out += [
            "Take + finish one job per pair of autocommit statements, 2 client threads, "
            "400k due jobs, pairs/s:",
            f"  reconciler claim() + complete()                          {tps:>7,.0f}",
            f"  procrastinate_fetch_job_v2 + procrastinate_finish_job_v1 {peer:>7,.0f}"
            f"  (reconciler {tps / peer:.2f}x)",
        ]
    finally:
        _drop(db)
        db.dispose()
    print(
        f"reconciler scale benchmark: PostgreSQL {version[0] if version else '?'}, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[1]:.1f})"
    )
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
