"""The dashboard's page load times on the bench's tables (printed, not asserted).

Each page is fetched through the real ASGI app (Starlette's TestClient, no
network), a few times per table, taking turns between the small and the large
table so that both see the same machine; the median is printed.

``python -m tests.bench.web [--rows N] [--url URL] [--keep | --reuse]`` times
the pages alone on one table of ``--rows`` jobs (schema ``reconciler_bench_web``,
filled as ``python -m tests.bench`` fills its tables): ``--keep`` leaves it for
a second measurement with ``--reuse`` (before and after a change, same rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy import text
from starlette.testclient import TestClient

from reconciler.db import Database, normalise_url, quote_ident, redact
from reconciler.migrate import migrate
from reconciler.settings import Settings
from reconciler.web import create_app

__all__ = ["PAGE_REPEATS", "PageTime", "main", "page_times"]

PAGE_REPEATS = 5


@dataclass(frozen=True)
class PageTime:
    page: str
    ms: tuple[float, ...]  # the median per table, in the order given


def _pages(db: Database) -> list[str]:
    """The pages, with a job id and a keyset position from the middle of the table."""
    row = db.rows("SELECT min(id) AS lo, max(id) AS hi FROM jobs")[0]
    middle = (row["lo"] + row["hi"]) // 2
    return [
        "/",
        "/jobs",
        "/jobs?status=dead",
        "/jobs?queue=default&kind=report",
        f"/jobs?before={middle}",
        "/jobs?error=timeout",
        f"/jobs/{middle}",
        "/dead-letter",
        "/runs",
    ]


def page_times(dbs: list[Database], settings: Settings) -> list[PageTime]:
    clients = [TestClient(create_app(settings, db=db)) for db in dbs]
    pages = [_pages(db) for db in dbs]
    timings: list[list[list[float]]] = [[[] for _ in dbs] for _ in pages[0]]
    for client, its_pages in zip(clients, pages, strict=True):  # warm up: templates compiled
        for page in its_pages:
            client.get(page)
    for _ in range(PAGE_REPEATS):
        for t, client in enumerate(clients):
            for p, page in enumerate(pages[t]):
                started = time.perf_counter()
                response = client.get(page)
                timings[p][t].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{page}: HTTP {response.status_code}")
    return [
        PageTime(page, tuple(statistics.median(ms) for ms in timings[p]))
        for p, page in enumerate(pages[-1])
    ]


SCHEMA = "reconciler_bench_web"


def main(argv: Sequence[str] | None = None) -> int:
    from tests.bench.fill import add_idle, vacuum_analyze

    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.web", description="Time the dashboard's pages on one table."
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs (1,000,000)")
    parser.add_argument(
        "--url",
        default=os.environ.get("RECONCILER_TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/test",
        help="postgresql:// URL ($RECONCILER_TEST_DATABASE_URL)",
    )
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument("--keep", action="store_true", help="keep the table afterwards")
    kept.add_argument("--reuse", action="store_true", help="time the table a --keep run left")
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        del os.environ[name]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(args.url),
        schema_name=SCHEMA,
    )
    url = normalise_url(args.url)
    db = Database.connect(
        url,
        schema=SCHEMA,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
        application_name="reconciler-bench-web",
    )
    try:
        if not args.reuse:
            with db.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
            migrate(db)
            print(f"filling {args.rows:,} jobs on {redact(url)}", file=sys.stderr, flush=True)
            add_idle(db, db.now(), args.rows, live=True)
            vacuum_analyze(db)
        with db.engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        rows = db.rows("SELECT count(*) AS n FROM jobs")[0]["n"]
        pages = page_times([db], settings)
    finally:
        if not (args.keep or args.reuse):
            with db.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        db.dispose()
    print(
        f"Dashboard page loads, median of {PAGE_REPEATS}, milliseconds: PostgreSQL {version}, "
        f"{rows:,} jobs, {os.cpu_count()} CPUs (load average {os.getloadavg()[1]:.1f})"
    )
    for p in pages:
        print(f"{p.page:<40} {p.ms[0]:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
