"""``check``'s table health: bloat and autovacuum lag of the queue tables.

A queue table churns: every job is inserted, updated several times and
deleted, so it lives on autovacuum. Three findings, read from the catalog and
the cumulative statistics only (``sql/ops/table_health.sql``; nothing scans a
table, so they cost the same on 10 M rows as on 10):

- ``autovacuum_lag``: a table whose dead rows are past its autovacuum trigger
  and that has not been vacuumed for ``RECONCILER_CHECK_VACUUM_LAG`` (or ever),
  with at least ``RECONCILER_CHECK_VACUUM_MIN_DEAD`` of them and no VACUUM running
  on it now: autovacuum is not keeping up (or is off
  for the table, which the finding says). Every scan of it reads the dead rows.
- ``table_bloat``: a table at least ``RECONCILER_CHECK_BLOAT_RATIO`` times the
  size its live rows need, and at least ``RECONCILER_CHECK_BLOAT_MIN_BYTES``
  (the estimate is the heap's twin of the reindex task's index estimate). A
  VACUUM makes that space reusable but does not give it back; ``pg_repack`` or
  ``VACUUM FULL`` (an exclusive lock) does.
- ``index_bloat``: indexes of the tables over the same ratio and size (the
  reindex task's own estimate, so the finding and ``reconciler run reindex``
  agree), and INVALID leftovers of an interrupted concurrent build, which
  every write maintains and no read uses; the reindex task fixes both.

Each is a warning at most: bloat and a lagging autovacuum make everything
slower, they do not stop jobs, and they are for the day shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from reconciler.ops.output import age
from reconciler.sqlfiles import query

__all__ = ["HealthRules", "table_health"]


@dataclass(frozen=True)
class HealthRules:
    """The thresholds (from the settings) the three findings apply."""

    vacuum_lag: timedelta
    vacuum_min_dead: int
    bloat_ratio: float
    bloat_min_bytes: int


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


def _vacuum(rows: Sequence[Any], now: datetime, rules: HealthRules) -> tuple[str, int, str]:
    lagging = []
    for r in rows:
        if r.dead <= r.vacuum_trigger or r.dead < rules.vacuum_min_dead or r.vacuuming:
            continue
        if r.last_vacuum is not None and now - r.last_vacuum <= rules.vacuum_lag:
            continue
        when = (
            "never vacuumed"
            if r.last_vacuum is None
            else f"last vacuumed {age(now - r.last_vacuum)} ago"
        )
        off = "; autovacuum is off for this table" if r.autovacuum_off else ""
        lagging.append(
            f"{r.table_name}: {r.dead} dead rows past its autovacuum trigger "
            f"({r.vacuum_trigger}), {when}{off}"
        )
    if lagging:
        return "warning", len(lagging), "; ".join(lagging)
    dead = sum(r.dead for r in rows)
    running = [r.table_name for r in rows if r.vacuuming]
    return (
        "ok",
        0,
        f"autovacuum keeps up ({dead} dead rows in all)"
        + (f"; vacuuming now: {', '.join(running)}" if running else ""),
    )


def _bloat(rows: Sequence[Any], what: str, rules: HealthRules) -> list[str]:
    return [
        f"{r.name} {_mib(r.bytes)}, {r.ratio:.1f}x what its {r.live} {what} need"
        for r in rows
        if r.ratio >= rules.bloat_ratio and r.bytes >= rules.bloat_min_bytes
    ]


@dataclass(frozen=True)
class _Sized:
    name: str
    bytes: int
    ratio: float
    live: int


def table_health(
    conn: Connection, schema: str, tables: Sequence[str], now: datetime, rules: HealthRules
) -> list[tuple[str, str, Any, Any, str]]:
    """(check, level, value, threshold, message) for autovacuum lag, table and index bloat."""
    binds = {"schema": schema, "tables": list(tables), "now": now}
    found: list[tuple[str, str, Any, Any, str]] = []

    vacuum = conn.execute(text(query("ops/table_health", "vacuum")), binds).all()
    level, count, message = _vacuum(vacuum, now, rules)
    found.append(("autovacuum_lag", level, count, age(rules.vacuum_lag), message))

    heaps = [
        _Sized(r.table_name, r.bytes, r.ratio, r.live)
        for r in conn.execute(text(query("ops/table_health", "table_bloat")), binds).all()
    ]
    bloated = _bloat(heaps, "rows", rules)
    found.append(
        (
            "table_bloat",
            "warning" if bloated else "ok",
            len(bloated),
            rules.bloat_ratio,
            "; ".join(bloated) + " (VACUUM makes it reusable; pg_repack gives it back)"
            if bloated
            else f"no table over {rules.bloat_ratio}x its live rows' size",
        )
    )

    raw = {"schema": schema, "tables": list(tables)}
    indexes = [
        _Sized(r.index_name, r.bytes, r.ratio, r.entries)
        for r in conn.exec_driver_sql(query("tasks/reindex", "bloat"), raw).all()
    ]
    # An index being built right now is invalid on purpose: not a leftover.
    building = {
        r.table_name
        for r in conn.exec_driver_sql(query("tasks/reindex", "building"), {"schema": schema})
    }
    invalid = [
        r
        for r in conn.exec_driver_sql(query("tasks/reindex", "invalid"), {"schema": schema}).all()
        if r.table_name in tables and r.table_name not in building
    ]
    problems = _bloat(indexes, "entries", rules) + [
        f"{r.index_name} is INVALID ({_mib(r.bytes)}; the leftover of an interrupted "
        "concurrent build)"
        for r in invalid
    ]
    found.append(
        (
            "index_bloat",
            "warning" if problems else "ok",
            len(problems),
            rules.bloat_ratio,
            "; ".join(problems) + "; reconciler run reindex rebuilds and drops them"
            if problems
            else f"no index over {rules.bloat_ratio}x its entries' size, none invalid",
        )
    )
    return found
