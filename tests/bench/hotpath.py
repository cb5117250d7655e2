"""``python -m tests.bench.hotpath``: what each guarantee costs the workers' claim + complete.

The server's own time per pair, without a client in the way: one backend runs a
``DO`` loop of ``claim(n => 1)`` + ``complete()``, a ``COMMIT`` after each pair,
``synchronous_commit`` off (the flush wait is the disk's, not the statements'), on a
table of due jobs of one queue. The same loop runs on copies of the schema, each built
by ``migrate`` and then with one mechanism taken away, and on Procrastinate's
``procrastinate_fetch_job_v2`` + ``procrastinate_finish_job_v1`` (its schema applied by
its own ``SchemaManager``):

- as shipped;
- as before migration 202612041100 (two ``BEFORE UPDATE`` triggers, the transition
  guard's and the retry time's, each with its own ``WHEN``);
- without the row rules (the ``jobs_row_valid`` CHECK);
- without the ``BEFORE UPDATE`` trigger (``jobs_before_update``: the transition guard
  and the retry time; every update prepares and evaluates its ``WHEN``, and its mere
  presence makes every update lock its row first);
- without the four indexes of ``jobs`` that no claim or completion writes to
  (``jobs_claim_idx``, ``jobs_requeue_idx``, ``jobs_dead_letter_idx``,
  ``jobs_idempotency_key_idx``), which every update still opens and whose predicates
  it still prepares.

Every copy is vacuumed before each of its loops (so no loop walks the dead index entries
of the last) and a checkpoint precedes each loop (so each writes the same full-page
images); the loops are interleaved round by round, and each figure is the median over
the rounds, with the WAL written per pair. A measurement, not a test: the copies
without a guarantee are for measuring it, never shipped. Each lives in a schema of its
own, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from reconciler.db import normalise_url, redact
from tests.bench.__main__ import LOCAL_URL, TEST_URL_ENV
from tests.bench.peers import (
    QUEUE,
    _checkpoint,
    _drop_schema,
    _in_schema,
    _setup_procrastinate,
    due_jobs_schema,
)

PREFIX = "reconciler_bench_hot_"
PROCRASTINATE = PREFIX + "procrastinate"


@dataclass(frozen=True)
class Variant:
    name: str
    schema: str
    changes: tuple[str, ...]  # run after migrate, in the variant's schema
    before: int | None = None  # migrate only the files older than this version


@dataclass
class Figures:
    us_per_pair: list[float] = field(default_factory=list)
    wal_per_pair: list[float] = field(default_factory=list)


VARIANTS = (
    Variant("as shipped", PREFIX + "shipped", ()),
    Variant("before 202612041100", PREFIX + "two_triggers", (), before=202612041100),
    Variant(
        "without the row rules",
        PREFIX + "no_rules",
        ("ALTER TABLE jobs DROP CONSTRAINT jobs_row_valid",),
    ),
    Variant(
        "without the update trigger",
        PREFIX + "no_update_trigger",
        ("DROP TRIGGER jobs_before_update ON jobs",),
    ),
    Variant(
        "without 4 idle indexes",
        PREFIX + "no_idle_indexes",
        (
            "DROP INDEX jobs_claim_idx, jobs_requeue_idx, jobs_dead_letter_idx,"
            " jobs_idempotency_key_idx",
        ),
    ),
)

RECONCILER_LOOP = """
DO $$
DECLARE
    taken record;
BEGIN
    FOR i IN 1..{pairs} LOOP
        SELECT c.id, c.claim_token INTO taken
        FROM claim(worker => 'w1', queues => ARRAY['{queue}'], n => 1) c;
        IF taken.id IS NULL THEN
            RAISE EXCEPTION 'the queue ran dry after % pairs', i - 1;
        END IF;
        PERFORM complete(taken.id, taken.claim_token);
        COMMIT;
    END LOOP;
END
$$"""

PROCRASTINATE_LOOP = """
DO $$
DECLARE
    taken bigint;
BEGIN
    FOR i IN 1..{pairs} LOOP
        SELECT j.id INTO taken FROM procrastinate_fetch_job_v2(ARRAY['{queue}'], {worker}) j;
        IF taken IS NULL THEN
            RAISE EXCEPTION 'the queue ran dry after % pairs', i - 1;
        END IF;
        PERFORM procrastinate_finish_job_v1(taken, 'succeeded', false);
        COMMIT;
    END LOOP;
END
$$"""


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _measure(url: str, schema: str, loop: str, table: str) -> tuple[float, float]:
    """Seconds and WAL bytes of one loop, the table vacuumed and a checkpoint made first
    (so that every loop writes the same full-page images: the first change to each page
    after a checkpoint)."""
    with psycopg.connect(_in_schema(url, schema), autocommit=True) as conn:
        conn.execute(f"VACUUM {table}")
    _checkpoint(url)
    with psycopg.connect(_in_schema(url, schema), autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        wal_before = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        begun = time.perf_counter()
        conn.execute(loop)
        seconds = time.perf_counter() - begun
        wal = conn.execute(
            "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn",
            [wal_before[0] if wal_before else "0/0"],
        ).fetchone()
    return seconds, float(wal[0]) if wal else 0.0


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.hotpath", description=__doc__)
    parser.add_argument("--url", default=os.environ.get(TEST_URL_ENV) or LOCAL_URL)
    parser.add_argument("--pairs", type=int, default=4_000, help="pairs per loop (4,000)")
    parser.add_argument("--rounds", type=int, default=5, help="loops per system (5)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="due jobs per system (0: enough for every round, and 100,000 more)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    url = normalise_url(args.url).render_as_string(hide_password=False).replace("+psycopg", "")
    jobs = args.jobs or args.pairs * args.rounds + 100_000
    figures: dict[str, Figures] = {}
    try:
        _say(f"{redact(normalise_url(args.url))}: {jobs:,} due jobs per system")
        for variant in VARIANTS:
            due_jobs_schema(
                url, variant.schema, jobs, before=variant.before, changes=variant.changes
            )
        worker = _setup_procrastinate(url, jobs, 1, schema=PROCRASTINATE)
        loops = [
            (v.name, v.schema, RECONCILER_LOOP.format(pairs=args.pairs, queue=QUEUE), "jobs")
            for v in VARIANTS
        ]
        loops.append(
            (
                "procrastinate",
                PROCRASTINATE,
                PROCRASTINATE_LOOP.format(pairs=args.pairs, queue=QUEUE, worker=worker),
                "procrastinate_jobs",
            )
        )
        for round_ in range(1, args.rounds + 1):
            for name, schema, loop, table in loops:
                seconds, wal = _measure(url, schema, loop, table)
                got = figures.setdefault(name, Figures())
                got.us_per_pair.append(seconds / args.pairs * 1e6)
                got.wal_per_pair.append(wal / args.pairs)
                _say(f"round {round_} {name}: {got.us_per_pair[-1]:.0f} us a pair")
        with psycopg.connect(url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]) if row else "?"
    finally:
        for variant in VARIANTS:
            _drop_schema(url, variant.schema)
        _drop_schema(url, PROCRASTINATE)
    _report(args, figures, version)
    return 0


def _report(args: argparse.Namespace, figures: dict[str, Figures], version: str) -> None:
    median = {name: statistics.median(f.us_per_pair) for name, f in figures.items()}
    shipped = median["as shipped"]
    print(
        f"hot path: the server's time per claim + complete, one backend, a COMMIT after each"
        f" pair, synchronous_commit off; {args.pairs:,} pairs a loop, {args.rounds} interleaved"
        f" rounds; PostgreSQL {version}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[1]:.1f}"
    )
    print(
        f"{'system':<28}{'us/pair':>9}{'lowest':>8}{'highest':>8}{'vs shipped':>12}"
        f"{'WAL B/pair':>12}{'procrastinate x':>17}"
    )
    for name, f in figures.items():
        print(
            f"{name:<28}{median[name]:>9.0f}{min(f.us_per_pair):>8.0f}"
            f"{max(f.us_per_pair):>8.0f}{median[name] - shipped:>+12.0f}"
            f"{statistics.median(f.wal_per_pair):>12,.0f}"
            f"{median['procrastinate'] / median[name]:>16.2f}x"
        )


if __name__ == "__main__":
    raise SystemExit(main())
