"""The dashboard's page load times on the bench's tables (printed, not asserted).

Each page is fetched through the real ASGI app (Starlette's TestClient, no
network), a few times per table, taking turns between the small and the large
table so that both see the same machine; the median is printed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from starlette.testclient import TestClient

from reconciler.db import Database
from reconciler.settings import Settings
from reconciler.web import create_app

__all__ = ["PAGE_REPEATS", "PageTime", "page_times"]

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
