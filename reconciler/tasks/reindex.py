"""reindex: drop invalid index leftovers, ``REINDEX CONCURRENTLY`` the bloated indexes.

What it changes: no rows. First it drops, with ``DROP INDEX CONCURRENTLY``, every
index of the reconciler's schema that is INVALID: the leftover of a
``CREATE INDEX CONCURRENTLY`` or ``REINDEX CONCURRENTLY`` that failed or was
cancelled (a known failure of other queues' reindexers, whose leftovers then cost
every write and serve no read). Then it rebuilds, one at a time with
``REINDEX INDEX CONCURRENTLY``, each index of the queue tables (``jobs`` and
``job_events``; ``params.tables`` to choose) whose estimated bloat is at least
``min_ratio`` (2.0: twice the size of the same entries freshly built) and whose size
is at least ``min_bytes`` (8 MiB: below that a rebuild gains nothing measurable).
The estimate is ``sql/tasks/reindex.sql``'s ``bloat``: pages from ``pg_class``
against the pages its entries need, from ``pg_stats`` widths; pgstattuple is not
installed by default. It reports each index's size before and after.

Why: a queue table's indexes see every job inserted, moved and deleted; B-tree
pages emptied by a purge are reused only for keys in their range, so indexes on
ever-growing keys (ids, times) bloat, and every claim and task walks the bloat.

Safe to re-run: yes. Nothing runs while any index of the schema is being built
(``pg_stat_progress_create_index``: a migration, another reindex), so a build in
progress is never taken for a leftover, and never two at once; the task's lease
keeps replicas apart and is renewed before each statement. A statement that cannot
take its lock within ``RECONCILER_LOCK_TIMEOUT`` fails the run; a REINDEX
interrupted leaves an invalid ``_ccnew`` index, which the next run drops. A dry run
reports what it would do.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from reconciler.db import quote_ident
from reconciler.sqlfiles import query
from reconciler.tasks.base import Task, TaskContext

__all__ = ["MIN_BYTES", "MIN_RATIO", "TABLES", "TASK"]

# The queue's hot tables: every job passes through their indexes several times.
TABLES = ("jobs", "job_events")
# Rebuild an index at twice the size its entries need: half of it is empty pages.
MIN_RATIO = 2.0
# And only from 8 MiB: a smaller index is cached whole, rebuilding it gains nothing.
MIN_BYTES = 8 * 1024 * 1024


def _rows(conn: psycopg.Connection[Any], name: str, **binds: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query("tasks/reindex", name), binds)
        return cur.fetchall()


def execute(ctx: TaskContext) -> None:
    schema = ctx.db.schema
    tables = list(ctx.params.get("tables") or TABLES)
    min_ratio = float(ctx.params.get("min_ratio", MIN_RATIO))
    min_bytes = int(ctx.params.get("min_bytes", MIN_BYTES))
    details: dict[str, Any] = {"dropped": {}, "reindexed": {}}
    ctx.progress.details.update(details)
    with ctx.db.autocommit() as conn:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false)",
            [f"{int(ctx.settings.lock_timeout.total_seconds() * 1000)}ms"],
        )
        building = _rows(conn, "building", schema=schema)
        if building:
            ctx.progress.notes.append(
                f"an index build is running on {building[0]['table_name']} "
                f"(pid {building[0]['pid']}, {building[0]['command']}): nothing done"
            )
            ctx.progress.details["skipped"] = "index build in progress"
            return
        invalid = _rows(conn, "invalid", schema=schema)
        bloated = [
            row
            for row in _rows(conn, "bloat", schema=schema, tables=tables)
            if row["ratio"] >= min_ratio and row["bytes"] >= min_bytes
        ]
        if ctx.dry_run:
            details["dropped"] = {r["index_name"]: {"bytes": r["bytes"]} for r in invalid}
            details["reindexed"] = {
                r["index_name"]: {"bytes_before": r["bytes"], "ratio": r["ratio"]} for r in bloated
            }
        for row in invalid:
            if ctx.dry_run or ctx.stop_reason() is not None:
                break
            _renew(ctx)
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    sql.Identifier(schema, row["index_name"])
                )
            )
            details["dropped"][row["index_name"]] = {"bytes": row["bytes"]}
            ctx.progress.other_work += 1
            ctx.progress.batches += 1
        for row in bloated:
            if ctx.dry_run or ctx.stop_reason() is not None:
                break
            _renew(ctx)
            name = row["index_name"]
            conn.execute(
                sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(schema, name))
            )
            (after,) = _rows(conn, "size", index=f"{quote_ident(schema)}.{quote_ident(name)}")
            details["reindexed"][name] = {
                "bytes_before": row["bytes"],
                "bytes_after": after["bytes"],
                "ratio": row["ratio"],
            }
            ctx.progress.other_work += 1
            ctx.progress.batches += 1
    ctx.progress.details.update(details)
    ctx.progress.notes.extend(_notes(details))


def _renew(ctx: TaskContext) -> None:
    with ctx.db.transaction() as lease_tx:
        ctx.renew_lease(lease_tx)


def _notes(details: dict[str, Any]) -> list[str]:
    lines = [
        f"dropped invalid index {name} ({info['bytes']} bytes)"
        for name, info in details["dropped"].items()
    ]
    for name, info in details["reindexed"].items():
        line = f"{name}: estimated bloat x{info['ratio']}, {info['bytes_before']} bytes"
        if "bytes_after" in info:
            line += f" -> {info['bytes_after']}"
        lines.append(line)
    return lines


TASK = Task(
    name="reindex",
    summary="drop invalid index leftovers; REINDEX CONCURRENTLY the bloated queue indexes",
    execute=execute,
)
