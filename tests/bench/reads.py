"""The operator's reads on the bench's tables: ``check`` and ``stats`` (printed, not asserted).

Monitoring runs ``check`` every minute and people run ``stats`` at 3 a.m.: both
must cost what the live queue costs, not what retention keeps. Each is called
through its real function (``evaluate``, ``collect``) a few times per table,
taking turns between the small and the large table; the median is printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from reconciler.db import Database
from reconciler.ops.check import evaluate
from reconciler.ops.stats import collect
from reconciler.schedule import load_schedule
from reconciler.settings import Settings

__all__ = ["READ_REPEATS", "ReadTime", "read_times"]

READ_REPEATS = 5


@dataclass(frozen=True)
class ReadTime:
    read: str
    ms: tuple[float, ...]  # the median per table, in the order given


def read_times(dbs: list[Database], settings: Settings) -> list[ReadTime]:
    schedule = load_schedule(None)
    reads: list[tuple[str, Callable[[Database], object]]] = [
        ("check", lambda db: evaluate(db, settings, schedule)),
        ("stats", lambda db: collect(db, since=timedelta(hours=24), settings=settings)),
    ]
    timings = [[[] for _ in dbs] for _ in reads]  # type: list[list[list[float]]]
    for _, read in reads:  # warm up
        for db in dbs:
            read(db)
    for _ in range(READ_REPEATS):
        for t, db in enumerate(dbs):
            for r, (_, read) in enumerate(reads):
                started = time.perf_counter()
                read(db)
                timings[r][t].append((time.perf_counter() - started) * 1000)
    return [
        ReadTime(name, tuple(statistics.median(ms) for ms in timings[r]))
        for r, (name, _) in enumerate(reads)
    ]
