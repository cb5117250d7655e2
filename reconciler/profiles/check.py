"""``reconciler profiles`` and ``profiles check``: each profile against the live database.

``check`` binds every profile (reconciler/profiles/live.py: tables, columns,
types and status values exist) and asks PostgreSQL how it would run each of
the profile's task statements, with sequential scans switched off: a plan
that still reads the whole table has no index that can serve it. For each
such statement it prints the exact ``CREATE INDEX CONCURRENTLY`` that would;
the reconciler never runs DDL on a table it does not own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.heartbeat import HeartbeatRule
from reconciler.profiles.live import Bound
from reconciler.profiles.model import Profile
from reconciler.profiles.statements import ident, literal
from reconciler.profiles.tasks import statement, unsupported
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["Finding", "advice", "describe", "explain"]

# The statements a profile's tasks run, by task; purge is checked once (one status).
TASKS = ("mark-stale", "requeue", "dead-letter", "purge")


@dataclass(frozen=True)
class Finding:
    task: str
    served: bool  # True: an index serves the statement (or it has nothing to do)
    scans: tuple[str, ...]  # the plan's full scans of the profile's tables
    index: str | None  # the CREATE INDEX CONCURRENTLY that would serve it
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "index_served": self.served,
            "full_scans": list(self.scans),
            "create_index": self.index,
            "note": self.note,
        }


def describe(profile: Profile) -> dict[str, Any]:
    """One profile as ``profiles`` lists it."""
    return {
        "name": profile.name,
        "kind": profile.kind,
        "table": profile.qualified,
        "states": dict(profile.states),
        "columns": dict(profile.columns),
        "heartbeat_table": (
            f"{profile.worker_table.schema}.{profile.worker_table.table}"
            if profile.worker_table
            else None
        ),
        "source": profile.source,
    }


def advice(bound: Bound, task: str) -> str | None:
    """The index that serves ``task``'s statement on the profile's table."""
    p = bound.profile
    table = f"{ident(p.schema)}.{ident(p.table)}".replace("\\:", ":")
    if p.kind == "procrastinate":
        # mark-stale walks Procrastinate's own partial index on todo/doing jobs by id;
        # purge walks the finishing events older than the retention, oldest first.
        events = f"{ident(p.schema)}.{ident('procrastinate_events')}".replace("\\:", ":")
        return f"CREATE INDEX CONCURRENTLY ON {events} (at);" if task == "purge" else None

    def where(*states: str) -> str:
        values = [literal(p.states[s]).replace("\\:", ":") for s in states if s in p.states]
        col = ident(p.status).replace("\\:", ":")
        return f"{col} = {values[0]}" if len(values) == 1 else f"{col} IN ({', '.join(values)})"

    def col(role: str) -> str:
        return ident(p.columns[role]).replace("\\:", ":")

    if task == "mark-stale":
        if p.worker_table is not None:
            key = ident(p.id).replace("\\:", ":")
        elif p.column("heartbeat") and p.column("started_at"):
            key = f"(coalesce({col('heartbeat')}, {col('started_at')}))"
        else:
            key = col("heartbeat") if p.column("heartbeat") else col("started_at")
        return f"CREATE INDEX CONCURRENTLY ON {table} ({key}) WHERE {where('running')};"
    if task == "requeue":
        key = col("finished_at") if p.column("finished_at") else ident(p.id).replace("\\:", ":")
        return f"CREATE INDEX CONCURRENTLY ON {table} ({key}) WHERE {where('failed', 'stale')};"
    if task == "dead-letter":
        key = ident(p.id).replace("\\:", ":")
        return f"CREATE INDEX CONCURRENTLY ON {table} ({key}) WHERE {where('failed', 'stale')};"
    if task == "purge":
        status = ident(p.status).replace("\\:", ":")
        return f"CREATE INDEX CONCURRENTLY ON {table} ({status}, {col('finished_at')});"
    return None


def explain(db: Database, settings: Settings, bound: Bound) -> list[Finding]:
    """How each of the profile's statements would run: index-served or not, and the fix."""
    findings = []
    p = bound.profile
    tables = {p.table} | ({p.worker_table.table} if p.worker_table else set())
    if p.kind == "procrastinate":
        tables |= {"procrastinate_workers", "procrastinate_events"}
    now = db.now()
    for task in TASKS:
        why = unsupported(bound, task)
        if why is not None:
            findings.append(Finding(task, True, (), None, note=why))
            continue
        sql = statement(db, bound, task)
        binds: dict[str, Any] = {
            "now": now,
            "actor": "reconciler:profiles-check",
            "run_id": None,
            "batch_size": settings.batch_size,
            "profile": p.name,
            "table_name": p.qualified,
            "only_ids": None,
            "status": (p.states[p.finished_states[0]] if p.finished_states else p.states["queued"]),
            "horizon": now,
            **HeartbeatRule.from_settings(settings).binds(),
        }
        with db.transaction(rollback=True) as conn:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), binds).scalar_one()
            partial = set(
                conn.execute(
                    text(query("profiles/catalog", "partial_indexes")),
                    {"schema": p.schema, "tables": sorted(tables)},
                ).scalars()
            )
        parsed = plan if isinstance(plan, list) else json.loads(plan)
        scans = tuple(sorted(_full_scans(parsed, tables, partial)))
        findings.append(Finding(task, not scans, scans, None if not scans else advice(bound, task)))
    return findings


def _full_scans(plan: Any, tables: set[str], partial: set[str]) -> set[str]:
    """The profile's tables that a plan reads whole.

    A sequential scan reads the whole table; so does an index scan with no index
    condition, unless its index is partial (its predicate narrows the rows).
    """
    found: set[str] = set()
    if isinstance(plan, list):
        for item in plan:
            found |= _full_scans(item, tables, partial)
    elif isinstance(plan, dict):
        if plan.get("Relation Name") in tables:
            node = plan.get("Node Type")
            narrowed = (
                "Index Cond" in plan or "Recheck Cond" in plan or plan.get("Index Name") in partial
            )
            if node == "Seq Scan" or (node in _INDEX_SCANS and not narrowed):
                found.add(str(plan["Relation Name"]))
        for value in plan.values():
            if isinstance(value, (list, dict)):
                found |= _full_scans(value, tables, partial)
    return found


_INDEX_SCANS = ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
