"""``python -m tests.bench``: build a job table, time every transition task, print the figures.

Progress goes to stderr, the figures to stdout. The schemas ``reconciler_bench``
(the large table) and ``reconciler_bench_small`` (100,000 jobs, for the idle
comparison) are created from the real migrations and dropped at the end
(``--keep`` keeps them for a look with psql).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from pydantic import SecretStr
from sqlalchemy import URL, text

from reconciler.db import Database, normalise_url, quote_ident, redact
from reconciler.logs import configure_logging
from reconciler.migrate import migrate
from reconciler.settings import Settings
from tests.bench.fill import LIVE_ROWS, add_eligible, add_idle, vacuum_analyze
from tests.bench.measure import IDLE_REPEATS, FullRun, Idle, full_run, idle_runs
from tests.bench.reads import READ_REPEATS, ReadTime, read_times
from tests.bench.statements import TRANSITION_TASKS
from tests.bench.web import PAGE_REPEATS, PageTime, page_times

SCHEMA = "reconciler_bench"
# The small table of the idle comparison lives in a schema of its own.
SMALL_SCHEMA = "reconciler_bench_small"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
TEST_URL_ENV = "RECONCILER_TEST_DATABASE_URL"
SMALL_ROWS = 100_000
_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - the whole run's log sink


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Time the reconciler's transition tasks on a large job table.",
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="jobs in the large table (1,000,000)"
    )
    parser.add_argument(
        "--eligible-pct",
        type=float,
        default=3.0,
        help="then, per task, this percent of --rows added as eligible rows (3)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(TEST_URL_ENV) or LOCAL_URL,
        help=f"postgresql:// URL (${TEST_URL_ENV}, else {LOCAL_URL})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows per batch (the settings' default)"
    )
    parser.add_argument(
        "--batch-pause",
        type=float,
        default=0.0,
        help="rest this many times each batch's duration after it (0: the batching cost alone)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the schemas afterwards")
    args = parser.parse_args(argv)
    if args.rows < SMALL_ROWS:
        parser.error(f"--rows must be at least {SMALL_ROWS:,}, the small table's size")
    if not 0 < args.eligible_pct <= 20:
        parser.error("--eligible-pct must be above 0 and at most 20")
    return args


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _idle_table(idle: dict[str, list[Idle]], rows: int) -> list[str]:
    big = f"{rows // 1000:,}k" if rows < 1_000_000 else f"{rows / 1_000_000:g}M"
    lines = [
        f"Idle runs (nothing eligible), median of {IDLE_REPEATS}, milliseconds",
        f"{'task':<12} {'run 100k':>9} {'run ' + big:>9} {'batch 100k':>11} {'batch ' + big:>11}",
    ]
    for task in TRANSITION_TASKS:
        s, g = idle[task]
        lines.append(
            f"{task:<12} {s.run_ms:>9.1f} {g.run_ms:>9.1f} {s.batch_ms:>11.2f} {g.batch_ms:>11.2f}"
        )
    return lines


def _pages_table(pages: list[PageTime], rows: int) -> list[str]:
    big = f"{rows // 1000:,}k" if rows < 1_000_000 else f"{rows / 1_000_000:g}M"
    lines = [
        f"Dashboard page loads (reconciler web), median of {PAGE_REPEATS}, milliseconds",
        f"{'page':<40} {'100k':>8} {big:>8}",
    ]
    lines += [f"{p.page:<40} {p.ms[0]:>8.1f} {p.ms[1]:>8.1f}" for p in pages]
    return lines


def _reads_table(reads: list[ReadTime], rows: int) -> list[str]:
    big = f"{rows // 1000:,}k" if rows < 1_000_000 else f"{rows / 1_000_000:g}M"
    lines = [
        f"Operator reads (check, stats), median of {READ_REPEATS}, milliseconds",
        f"{'read':<40} {'100k':>8} {big:>8}",
    ]
    lines += [f"{r.read:<40} {r.ms[0]:>8.1f} {r.ms[1]:>8.1f}" for r in reads]
    return lines


def _full_table(runs: list[FullRun]) -> list[str]:
    lines = [
        "Full runs over the eligible rows",
        f"{'':<12} {'':>7} {'batched, through run_task':^42}  {'one transaction (baselines)':^37}",
        f"{'task':<12} {'rows':>7} {'rows/s':>8} {'seconds':>8} {'batches':>8} "
        f"{'longest tx':>10} {'median':>6}  {'statement':>18} {'plain UPDATE/DELETE':>19}",
        f"{'':<12} {'':>7} {'':>8} {'':>8} {'':>8} {'ms':>10} {'ms':>6}  "
        f"{'rows/s (seconds)':>18} {'rows/s (seconds)':>19}",
    ]
    for r in runs:
        lines.append(
            f"{r.task:<12} {r.batched.rows:>7,} {r.batched.rows_per_s:>8,.0f} "
            f"{r.batched.seconds:>8.2f} {r.batches:>8} {r.longest_batch_ms:>10.1f} "
            f"{r.median_batch_ms:>6.1f}  "
            f"{f'{r.unbatched.rows_per_s:,.0f} ({r.unbatched.seconds:.2f})':>18} "
            f"{f'{r.plain.rows_per_s:,.0f} ({r.plain.seconds:.2f})':>19}"
        )
        if not r.batched.rows == r.unbatched.rows == r.plain.rows:
            lines.append(
                f"  ! {r.task}: rows differ: batched {r.batched.rows}, statement "
                f"{r.unbatched.rows}, plain {r.plain.rows}"
            )
    return lines


def _connect(url: URL, schema: str, settings: Settings) -> Database:
    return Database.connect(
        url,
        schema=schema,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
        application_name="reconciler-bench",
    )


def _drop(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(db.schema)} CASCADE")


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    # The figures are for the defaults: no RECONCILER_* variable of the shell applies.
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    # Full runs measure what batching costs against one transaction, so they do not rest
    # between batches (RECONCILER_BATCH_PAUSE; python -m tests.bench.interference measures
    # what resting buys the workers) unless --batch-pause says so.
    overrides: dict[str, object] = {"batch_pause": args.batch_pause}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    # The tasks log as the daemon does (JSON lines; dead-letter writes one per job, see
    # python -m tests.bench.logs), to /dev/null so that they cost what formatting costs
    # and do not bury the figures. Unconfigured, structlog would print coloured console
    # lines to stdout, a slower renderer than the daemon's.
    configure_logging(fmt="json", stream=_DEVNULL)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(args.url),
        schema_name=SCHEMA,
        **overrides,  # type: ignore[arg-type]
    )
    url = normalise_url(args.url)
    db = _connect(url, SCHEMA, settings)
    small_db = _connect(url, SMALL_SCHEMA, settings)
    started = time.monotonic()
    try:
        for each in (db, small_db):
            _drop(each)
            migrate(each)
        with db.engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        now = db.now()
        _say(f"{redact(url)}: {SMALL_ROWS:,} jobs in {SMALL_SCHEMA}, {args.rows:,} in {SCHEMA}")
        for each, rows in ((small_db, SMALL_ROWS), (db, args.rows)):
            add_idle(each, now, rows, live=True)
            vacuum_analyze(each)
        _say("idle runs, taking turns between the two tables")
        idle = {task: idle_runs([small_db, db], settings, task, now) for task in TRANSITION_TASKS}
        _say("dashboard pages, taking turns between the two tables")
        pages = page_times([small_db, db], settings)
        _say("check and stats, taking turns between the two tables")
        reads = read_times([small_db, db], settings)
        _drop(small_db)
        per_task = round(args.rows * args.eligible_pct / 100)
        _say(f"adding {per_task:,} eligible jobs per task to {SCHEMA}")
        add_eligible(db, now, per_task)
        vacuum_analyze(db)
        runs: list[FullRun] = []
        # Last task of the cycle first, so no run's output lands in the next one's
        # view: mark-stale's fresh stale jobs would sit in requeue's backoff.
        for task in reversed(TRANSITION_TASKS):
            _say(f"full run of {task}")
            runs.insert(0, full_run(db, settings, task, now))
        elapsed = time.monotonic() - started
    finally:
        if not args.keep:
            _drop(db)
            _drop(small_db)
        db.dispose()
        small_db.dispose()

    live = sum(r.count for r in LIVE_ROWS)
    print(
        f"reconciler benchmark: PostgreSQL {version}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[1]:.1f} over the last 5 minutes), "
        f"first batch {settings.batch_size} (then sized toward"
        f" {settings.batch_target.total_seconds() * 1000:g} ms), pause {settings.batch_pause:g},"
        f" {elapsed:.0f} s in all"
    )
    print(
        f"Tables: {SMALL_ROWS:,} and {args.rows:,} jobs, all but {live:,} live ones "
        f"(running, queued, failed in backoff) finished within retention, two job_events "
        f"rows per job; then {per_task:,} eligible jobs per task ({args.eligible_pct:g} %) "
        f"added to the large one."
    )
    print()
    print("\n".join(_idle_table(idle, args.rows)))
    print()
    print("\n".join(_full_table(runs)))
    print()
    print("\n".join(_pages_table(pages, args.rows)))
    print()
    print("\n".join(_reads_table(reads, args.rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
