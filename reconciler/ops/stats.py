"""``reconciler stats``: the queue at a glance, as the runbooks' dashboards show it.

Read-only. Depth by queue, priority and status (live and dead jobs all of them;
succeeded and cancelled ones finished since ``--since``, so the read is bounded by
the queue and the window, not by retention; the whole table's size is the
planner's estimate); per queue and priority the
oldest due job's wait against the priority's latency target (critical < 1 s,
high < 5 s, default < 30 s, low < 2 min, bulk best effort); status changes
per hour; average and p95 duration and failure rate by kind, since
``--since`` (default 24 h); paused queues (``*``, shown as "all queues",
pauses every queue). ``--watch`` redraws in place.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from rich.console import Group
from rich.live import Live
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.output import age, console, emit_json, table
from reconciler.ops.pause import ALL_QUEUES, paused_queues, queue_label
from reconciler.ops.vocabulary import PRIORITIES
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["cmd_stats", "collect", "render", "watch"]


def collect(
    db: Database,
    *,
    since: timedelta,
    settings: Settings,
    now: datetime | None = None,
    per_kind: bool = True,
) -> dict[str, Any]:
    """Every number of ``stats``, read at one database time. ``per_kind=False`` leaves out
    the durations and failure rates by kind (the dashboard's overview does not show them,
    and at 1M jobs they are a third of the read)."""
    now = now or db.now()
    binds = {"now": now, "since": now - since}

    def rows(name: str) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(text(query("ops/stats", name)), binds)]

    with db.transaction() as conn:
        depth = rows("depth")
        size = rows("table_size")
        oldest = rows("oldest_due")
        throughput = rows("throughput")
        durations = rows("durations") if per_kind else []
        failures = rows("failure_rate") if per_kind else []
    for row in oldest:
        target = settings.latency_target(row["priority"])
        row["priority_name"] = PRIORITIES[row["priority"]]
        row["target_s"] = target.total_seconds() if target else None
        row["late"] = bool(target and row["oldest_wait"] > target)
    return {
        "now": now,
        "since": now - since,
        "depth": depth,
        "jobs_estimate": size[0]["jobs_estimate"] if size else None,
        "oldest_due": oldest,
        "throughput": throughput,
        "durations": durations,
        "failure_rate": failures,
        "paused": paused_queues(db),
    }


def render(stats: dict[str, Any]) -> Group:
    """The tables people read."""
    statuses = ("queued", "running", "failed", "stale", "dead", "succeeded", "cancelled")
    by_queue: dict[tuple[str, int], dict[str, int]] = {}
    for row in stats["depth"]:
        by_queue.setdefault((row["queue"], row["priority"]), {})[row["status"]] = row["jobs"]
    paused = {p["queue"] for p in stats["paused"]}
    every = ALL_QUEUES in paused
    parts: list[Any] = [
        table(
            f"depth by queue and priority at {stats['now']:%Y-%m-%d %H:%M:%S}"
            + (" (ALL QUEUES PAUSED)" if every else "")
            + f"; succeeded and cancelled: finished since {stats['since']:%Y-%m-%d %H:%M}"
            + (
                f"; about {stats['jobs_estimate']:,} jobs in the table"
                if stats.get("jobs_estimate") is not None
                else ""
            ),
            ("queue", "priority", *statuses),
            [
                (
                    f"{queue} (paused)" if every or queue in paused else queue,
                    PRIORITIES[priority],
                    *(counts.get(s, 0) for s in statuses),
                )
                for (queue, priority), counts in sorted(by_queue.items())
            ],
            right=statuses,
        ),
        table(
            "oldest due job per queue and priority",
            ("queue", "priority", "due", "oldest waits", "target", "state"),
            [
                (
                    r["queue"],
                    r["priority_name"],
                    r["due"],
                    r["oldest_wait"],
                    age(r["target_s"]) if r["target_s"] else "best effort",
                    "paused" if r["paused"] else ("LATE" if r["late"] else "ok"),
                )
                for r in stats["oldest_due"]
            ],
            right=("due", "oldest waits", "target"),
        ),
    ]
    hours = sorted({r["hour"] for r in stats["throughput"]}, reverse=True)
    changes = sorted({r["status"] for r in stats["throughput"]})
    counts = {(r["hour"], r["status"]): r["jobs"] for r in stats["throughput"]}
    parts.append(
        table(
            "status changes per hour",
            ("hour", *changes),
            [(h, *(counts.get((h, s), 0) for s in changes)) for h in hours],
            right=changes,
        )
    )
    rates = {r["kind"]: r for r in stats["failure_rate"]}
    kinds = sorted({r["kind"] for r in stats["durations"]} | set(rates))
    durations = {r["kind"]: r for r in stats["durations"]}
    parts.append(
        table(
            "by kind: duration of succeeded jobs, failure rate of attempts",
            ("kind", "succeeded", "avg s", "p95 s", "attempts failed", "failure rate"),
            [
                (
                    k,
                    durations.get(k, {}).get("succeeded", 0),
                    durations.get(k, {}).get("avg_s"),
                    durations.get(k, {}).get("p95_s"),
                    rates.get(k, {}).get("failed", 0),
                    f"{float(rates[k]['failure_rate']) * 100:.1f} %" if k in rates else "-",
                )
                for k in kinds
            ],
            right=("succeeded", "avg s", "p95 s", "attempts failed", "failure rate"),
        )
    )
    if stats["paused"]:
        parts.append(
            table(
                "paused queues",
                ("queue", "paused at", "by", "reason", "queued jobs"),
                [
                    (
                        queue_label(p["queue"]),
                        p["paused_at"],
                        p["paused_by"],
                        p["reason"],
                        p["queued"],
                    )
                    for p in stats["paused"]
                ],
                right=("queued jobs",),
            )
        )
    return Group(*parts)


def watch(
    draw: Callable[[], Group],
    *,
    interval: timedelta,
    rounds: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw ``draw()`` in place every ``interval`` until Ctrl-C (or ``rounds`` redraws)."""
    with Live(draw(), console=console(), auto_refresh=False, screen=False) as live:
        done = 1
        while rounds is None or done < rounds:
            sleep(interval.total_seconds())
            live.update(draw(), refresh=True)
            done += 1


def cmd_stats(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    if args.json:
        emit_json(collect(db, since=args.since, settings=settings))
        return 0
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):
            watch(
                lambda: render(collect(db, since=args.since, settings=settings)),
                interval=args.interval,
            )
        return 0
    console().print(render(collect(db, since=args.since, settings=settings)))
    return 0
