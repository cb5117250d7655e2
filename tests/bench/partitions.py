"""``python -m tests.bench.partitions``: ledger retention, row by row against a partition drop.

Prints, for each ledger size of ``--rows`` (1 M and 10 M events by default), on
one server and in one run (a measurement; no timed assertion anywhere):

- the plain layout: a ledger of N events over 30 days (N/4 succeeded jobs, four
  events each, finished evenly over the 30 days), then one day past retention:
  ``purge`` (the task as scheduled, default batch sizing and pacing) deletes
  that day's jobs with their N/30 events; then one ``DELETE`` of the next day's
  events by ``at`` (one statement, no batches: the fastest row-by-row form);
  then the ``VACUUM`` their dead rows call for;
- the partitioned layout (``RECONCILER_EVENTS_PARTITIONING=day``) with the same
  events: the ``partitions`` task drops that day's partition (N/30 events), and
  one drop transaction alone (the next day's partition);
- the migration path at N events: ``partition_events`` on the plain schema
  (VALIDATE, the concurrent unique index, and the swap, whose ACCESS EXCLUSIVE
  transaction is timed on its own).

Built with set-based SQL (``generate_series``) in schemas
``reconciler_bench_part_plain`` and ``reconciler_bench_part_day``, from the
real migrations, dropped at the end of each size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from reconciler import partitions
from reconciler.db import normalise_url, redact
from reconciler.migrate import migrate
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.bench.__main__ import LOCAL_URL, TEST_URL_ENV, _connect, _drop

PLAIN = "reconciler_bench_part_plain"
DAILY = "reconciler_bench_part_day"
DAYS = 30
DAY = timedelta(days=1)


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _session(url: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, application_name="reconciler-bench")
    conn.execute(sql.SQL("SET search_path = {}, pg_temp").format(sql.Identifier(schema)))
    return conn


def _settings(url: str, schema: str, **values: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(url),
        schema_name=schema,
        run_time_budget=timedelta(hours=1),
        **values,
    )


def _size(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))"
        " FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace"
        " AND c.relname LIKE 'job_events%' AND c.relkind = 'r'"
    ).fetchone()
    return str(row[0]) if row else "?"


def _one_size(raw_url: str, url: Any, rows: int, out: list[str]) -> None:
    plain_settings = _settings(raw_url, PLAIN)
    daily_settings = _settings(
        raw_url, DAILY, events_partitioning="day", retention_events=timedelta(days=DAYS)
    )
    plain = _connect(url, PLAIN, plain_settings)
    daily = _connect(url, DAILY, daily_settings)
    try:
        for db in (plain, daily):
            _drop(db)
            migrate(db)
        jobs = rows // 4
        per_day = rows // DAYS
        now = plain.now()
        base = now - timedelta(days=DAYS + 1)  # the ledger spans [base, base + 30 d)
        _say(f"{rows:,} events: {jobs:,} jobs over {DAYS} days, 4 events each (plain layout)")
        started = time.monotonic()
        with _session(raw_url, PLAIN) as conn:
            conn.execute(
                "INSERT INTO jobs (kind, status, attempt, max_attempts, created_at, run_at,"
                " finished_at)"
                " SELECT 'bench', 'succeeded', 1, 3, f - interval '3 s', f - interval '3 s', f"
                " FROM (SELECT %(base)s + (g - 1) * %(span)s / %(n)s + interval '3 s' AS f"
                "       FROM generate_series(1, %(n)s) g) s",
                {"base": base, "span": timedelta(days=DAYS), "n": jobs},
            )
            conn.execute(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor)"
                " SELECT j.id, (ARRAY[NULL, 'queued', 'running', 'running'])[k + 1],"
                "        (ARRAY['queued', 'running', 'running', 'succeeded'])[k + 1],"
                "        j.finished_at - (3 - k) * interval '1 s', 'bench'"
                " FROM jobs j, generate_series(0, 3) k ORDER BY j.id, k"
            )
            conn.execute("VACUUM ANALYZE jobs, job_events")
            plain_size = _size(conn)
        _say(f"built in {time.monotonic() - started:.0f} s; the partitioned copy")
        started = time.monotonic()
        cutover = partitions.partition_events(daily, unit="day", ahead=DAY).cutover
        assert cutover is not None
        # The same events, shifted to start at the partitioned schema's cutover (its first
        # daily partition; the history partition before it stays empty).
        shift = cutover - base
        with _session(raw_url, DAILY) as conn:
            conn.execute(
                "SELECT count(*) FROM job_events_partitions_ensure(%s, 'day')",
                [cutover + timedelta(days=DAYS + 10)],
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO job_events (job_id, from_status, to_status, at, actor)"
                    " SELECT job_id, from_status, to_status, at + %s, actor FROM {}"
                    " ORDER BY id"
                ).format(sql.Identifier(PLAIN, "job_events")),
                [shift],
            )
            conn.execute("VACUUM ANALYZE job_events")
            parts = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'job_events'::regclass"
            ).fetchone()
        _say(f"copied in {time.monotonic() - started:.0f} s ({parts[0] if parts else '?'} parts)")

        _say("purge, plain layout: one day's jobs with their events")
        purge = run_task(plain, plain_settings, "purge", now=base + timedelta(days=DAYS + 1))
        assert purge.status == "ok", purge.error
        purged_jobs = purge.transitions.get("succeeded->purged", 0)

        _say("one DELETE of the next day's events by `at`")
        with _session(raw_url, PLAIN) as conn:
            started = time.monotonic()
            deleted = conn.execute(
                "DELETE FROM job_events WHERE at >= %s AND at < %s",
                [base + DAY, base + 2 * DAY],
            ).rowcount
            delete_s = time.monotonic() - started
            # What the row-by-row deletes leave to do: their dead rows, for VACUUM.
            started = time.monotonic()
            conn.execute("VACUUM job_events")
            vacuum_s = time.monotonic() - started

        _say("partitions task, partitioned layout: drop the day's partition")
        with _session(raw_url, DAILY) as conn:
            in_day = conn.execute(
                "SELECT count(*) FROM job_events WHERE at < %s", [cutover + DAY]
            ).fetchone()
        drop = run_task(daily, daily_settings, "partitions", now=cutover + timedelta(days=DAYS + 1))
        assert drop.status == "ok", drop.error
        assert len(drop.details["partitions_dropped"]) == 2, drop.details  # history + day 1
        assert drop.details["partitions_created"] == [], drop.details
        # The drop transaction alone (its ACCESS EXCLUSIVE on job_events): the next day's.
        with _session(raw_url, DAILY) as conn, conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '1s'")
            started = time.monotonic()
            next_day = conn.execute(
                "SELECT name, estimated_rows FROM job_events_partition_drop_oldest(%s)",
                [cutover + 2 * DAY],
            ).fetchone()
        drop_tx_ms = (time.monotonic() - started) * 1000
        assert next_day is not None

        _say("the migration path: partition_events on the plain schema")
        swap_s: list[float] = []
        real_swap = partitions._swap

        def timed_swap(*a: Any, **kw: Any) -> None:
            began = time.monotonic()
            try:
                real_swap(*a, **kw)
            finally:
                swap_s.append(time.monotonic() - began)

        partitions._swap = timed_swap
        try:
            started = time.monotonic()
            converted = partitions.partition_events(plain, unit="day", ahead=timedelta(days=7))
            convert_s = time.monotonic() - started
        finally:
            partitions._swap = real_swap
        assert converted.converted

        day_rows = in_day[0] if in_day else 0
        purge_s = purge.duration_ms / 1000
        drop_s = drop.duration_ms / 1000
        out += [
            f"Ledger of {rows:,} events over {DAYS} days ({per_day:,} a day; {plain_size} "
            "with its indexes), one day past retention:",
            f"  {'':<44} {'events':>9} {'seconds':>8} {'events/s':>10}",
            f"  {'purge task, plain layout (+ ' + f'{purged_jobs:,} jobs)':<44}"
            f" {purged_jobs * 4:>9,} {purge_s:>8.2f} {purged_jobs * 4 / purge_s:>10,.0f}",
            f"  {'one DELETE by at, plain layout (no batches)':<44}"
            f" {deleted:>9,} {delete_s:>8.2f} {deleted / delete_s:>10,.0f}",
            f"  {'then VACUUM job_events (their dead rows)':<44}"
            f" {purged_jobs * 4 + deleted:>9,} {vacuum_s:>8.2f}",
            f"  {'partitions task: drop the day (a whole run)':<44}"
            f" {day_rows:>9,} {drop_s:>8.2f} {day_rows / drop_s:>10,.0f}",
            f"  {'  of which one drop transaction':<44}"
            f" {next_day[1]:>9,} {drop_tx_ms / 1000:>8.3f}"
            f" {next_day[1] / drop_tx_ms * 1000:>10,.0f}",
            f"  migrate to the daily layout at {rows - purged_jobs * 4 - deleted:,} events:"
            f" {convert_s:.1f} s in all, of which the swap (ACCESS EXCLUSIVE) "
            f"{swap_s[-1] * 1000:.0f} ms",
            "",
        ]
    finally:
        for db in (plain, daily):
            _drop(db)
            db.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.partitions", description=__doc__)
    parser.add_argument("--url", default=os.environ.get(TEST_URL_ENV) or LOCAL_URL)
    parser.add_argument(
        "--rows",
        default="1000000,10000000",
        help="ledger sizes, comma-separated (1000000,10000000)",
    )
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    url = normalise_url(args.url)
    raw_url = url.render_as_string(hide_password=False).replace("+psycopg", "")
    out: list[str] = []
    started = time.monotonic()
    with psycopg.connect(raw_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    load = os.getloadavg()
    for rows in [int(r) for r in args.rows.split(",")]:
        _say(f"{redact(url)}: {rows:,} ledger rows")
        _one_size(raw_url, url, rows, out)
    print(
        f"PostgreSQL {version[0] if version else '?'}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} at the start; {time.monotonic() - started:.0f} s in all\n"
    )
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
