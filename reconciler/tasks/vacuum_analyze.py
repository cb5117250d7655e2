"""vacuum-analyze: ``VACUUM (ANALYZE)`` of the job tables, and what it achieved.

What it changes: nothing in the rows. It vacuums ``jobs``, ``job_events`` and
``runs`` (reclaiming the space of deleted and updated rows, and refreshing the
planner's statistics), and reports dead rows before and after per table.

Why: a queue table is updated several times per job; without vacuum its dead
rows pile up and every claim scans through them. Autovacuum often falls
behind on such tables, which is why every runbook vacuums by hand.

Honest reporting: when dead rows could not be removed because an old
transaction still needs them (its snapshot holds back the xmin horizon), the
run says so and names the backends that hold it, instead of claiming success.
When PostgreSQL skips a table (the role may not vacuum it), the run fails.

Safe to re-run: yes; VACUUM takes no lock that blocks workers' reads or
writes. It runs on an autocommit session with no timeouts set, so it asks
for ``SKIP_LOCKED``: a table someone holds a conflicting lock on (DDL, a
``LOCK TABLE``) is skipped with a warning, which fails the run, instead of
the run waiting for the lock without end. The task's lease is renewed before
each table; a VACUUM that outlasts the lease's TTL lets another replica start
one, which then waits for the first one's lock on the table: slower, never
wrong. A dry run only reports the dead rows it would try to reclaim.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from reconciler.sqlfiles import query
from reconciler.tasks.base import Task, TaskContext, TaskFailed

__all__ = ["TABLES", "TASK"]

TABLES = ("jobs", "job_events", "runs")
# VACUUM VERBOSE says, per table: "tuples: R removed, N remain, K are dead but not yet removable"
_NOT_REMOVABLE = re.compile(r"(\d+) are dead but not yet removable")


def _stats(
    conn: psycopg.Connection[Any], schema: str, tables: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            query("tasks/vacuum_analyze", "table_stats"),
            {"schema": schema, "tables": list(tables)},
        )
        return {row.pop("table_name"): row for row in cur.fetchall()}


def _vacuum(conn: psycopg.Connection[Any], schema: str, name: str) -> list[tuple[str, str]]:
    """VACUUM (ANALYZE, VERBOSE) one table; its notices as (severity, message).

    A notice's Diagnostic can only be read inside the handler (psycopg frees it
    afterwards), so the handler copies the text out.
    """
    notices: list[tuple[str, str]] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        notices.append((notice.severity_nonlocalized or "", notice.message_primary or ""))

    conn.add_notice_handler(keep)
    try:
        conn.execute(
            sql.SQL("VACUUM (ANALYZE, VERBOSE, SKIP_LOCKED) {}").format(
                sql.Identifier(schema, name)
            )
        )
    finally:
        conn.remove_notice_handler(keep)
    return notices


def execute(ctx: TaskContext) -> None:
    # A profile's run (reconciler/profiles/tasks.py) names its own schema and tables.
    schema = ctx.params.get("schema") or ctx.db.schema
    tables = tuple(ctx.params.get("tables") or TABLES)
    details: dict[str, Any] = {}
    with ctx.db.autocommit() as conn:
        before = _stats(conn, schema, tables)
        if ctx.dry_run:
            ctx.progress.details["tables"] = {
                name: {"dead_rows_before": before.get(name, {}).get("dead_rows", 0)}
                for name in tables
            }
            ctx.progress.notes.extend(_notes(ctx.progress.details))
            return
        for name in tables:
            if ctx.stop_reason() == "shutdown":
                ctx.progress.stopped = "shutdown"
                break
            with ctx.db.transaction() as lease_tx:
                ctx.renew_lease(lease_tx)
            notices = _vacuum(conn, schema, name)
            skipped = [
                message
                for severity, message in notices
                if severity == "WARNING" and "skipping" in message
            ]
            if skipped:
                raise TaskFailed(f"VACUUM skipped {schema}.{name}: {skipped[0]}")
            not_removable = sum(
                int(m.group(1)) for _, message in notices for m in _NOT_REMOVABLE.finditer(message)
            )
            details[name] = {"not_removable": not_removable}
            ctx.progress.batches += 1
        after = _stats(conn, schema, tables)
        blocked = any(d["not_removable"] for d in details.values())
        holders: list[dict[str, Any]] = []
        if blocked:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query("tasks/vacuum_analyze", "xmin_holders"))
                holders = cur.fetchall()
    for name in details:  # the tables vacuumed (all, unless shutdown came first)
        details[name].update(
            dead_rows_before=before.get(name, {}).get("dead_rows", 0),
            dead_rows_after=after.get(name, {}).get("dead_rows", 0),
            live_rows=after.get(name, {}).get("live_rows", 0),
            total_bytes=after.get(name, {}).get("total_bytes", 0),
        )
    ctx.progress.details["tables"] = details
    ctx.progress.details["reclaimed_all"] = not blocked
    if blocked:
        ctx.progress.details["xmin_holders"] = holders
    ctx.progress.other_work += len(details)
    ctx.progress.notes.extend(_notes(ctx.progress.details))


def _notes(details: dict[str, Any]) -> list[str]:
    """Per table its dead rows before (and after); who holds back what could not go."""
    lines = []
    for name, info in details.get("tables", {}).items():
        line = f"{name:<12} dead rows {info.get('dead_rows_before', 0)}"
        if "dead_rows_after" in info:
            line += f" -> {info['dead_rows_after']}"
        if info.get("not_removable"):
            line += f" ({info['not_removable']} not removable yet)"
        lines.append(line)
    lines.extend(
        f"held back by pid {h['pid']} ({h['application_name'] or '?'}, {h['state']}, "
        f"transaction open {h['xact_age_s']} s)"
        for h in details.get("xmin_holders", [])
    )
    return lines


TASK = Task(
    name="vacuum-analyze",
    summary="VACUUM (ANALYZE) the job tables; report dead rows before and after",
    execute=execute,
)
