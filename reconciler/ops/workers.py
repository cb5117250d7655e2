"""``reconciler workers``: per worker, its running jobs, last claim and last heartbeat.

Read-only. A worker is what the job table knows of it: the ``locked_by`` of
running jobs. It is flagged probably dead when every one of its jobs has been
silent longer than its heartbeat timeout, by the same rule as the mark-stale
task's (reconciler/heartbeat.py: per kind, else queue, else the default), so
exactly those jobs are the ones mark-stale will make stale. The heartbeat
budget is runbook 000's: expected heartbeats per minute, per tenant and in
total, of the live running jobs at a given heartbeat interval
(``--heartbeat-interval``, default ``RECONCILER_OPS_HEARTBEAT_INTERVAL``).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.heartbeat import HeartbeatRule, spliced
from reconciler.ops.output import age, console, emit_json, table
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["cmd_workers", "worker_report"]


def worker_report(
    db: Database, *, now: datetime, rule: HeartbeatRule, interval: timedelta
) -> dict[str, Any]:
    binds = {"now": now, "interval_s": interval.total_seconds(), **rule.binds()}
    with db.transaction() as conn:
        workers = [
            dict(r._mapping)
            for r in conn.execute(text(spliced(query("ops/workers", "workers"))), binds)
        ]
        tenants = [
            dict(r._mapping)
            for r in conn.execute(text(spliced(query("ops/workers", "heartbeat_budget"))), binds)
        ]
    running = sum(t["running_jobs"] for t in tenants)
    return {
        "now": now,
        "heartbeat_timeout_s": rule.default.total_seconds(),
        "heartbeat_timeout_overrides_s": {
            **{f"kind:{k}": t.total_seconds() for k, t in rule.kinds.items()},
            **{f"queue:{q}": t.total_seconds() for q, t in rule.queues.items()},
        },
        "workers": workers,
        "probably_dead": [w["worker"] for w in workers if w["probably_dead"]],
        "heartbeat_budget": {
            "interval_s": interval.total_seconds(),
            "running_jobs": running,
            "expected_per_minute": round(running * 60 / interval.total_seconds(), 2),
            "tenants": tenants,
        },
    }


def cmd_workers(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    report = worker_report(
        db,
        now=db.now(),
        rule=HeartbeatRule.from_settings(settings, only=args.timeout),
        interval=args.heartbeat_interval or settings.ops_heartbeat_interval,
    )
    if args.json:
        emit_json(report)
        return 0
    out = console()
    out.print(
        table(
            f"workers ({len(report['workers'])}; heartbeat timeout "
            f"{age(report['heartbeat_timeout_s'])}"
            f"{' and overrides' if report['heartbeat_timeout_overrides_s'] else ''})",
            ("worker", "running", "last claim", "last heartbeat", "silent for", "state"),
            [
                (
                    w["worker"],
                    w["running_jobs"],
                    w["last_claim_at"],
                    w["last_heartbeat_at"],
                    w["silent_for"],
                    "probably dead" if w["probably_dead"] else "alive",
                )
                for w in report["workers"]
            ],
            right=("running",),
        )
    )
    budget = report["heartbeat_budget"]
    out.print(
        table(
            f"heartbeat budget at one heartbeat every {age(budget['interval_s'])}: "
            f"{budget['expected_per_minute']} per minute in total",
            ("tenant", "live running jobs", "heartbeats per minute"),
            [
                (t["tenant_id"], t["running_jobs"], t["expected_per_minute"])
                for t in budget["tenants"]
            ],
            right=("live running jobs", "heartbeats per minute"),
        )
    )
    return 0
