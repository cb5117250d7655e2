"""``reconciler policies``: show the retry policies, change a priority's, add or drop a kind's.

The policies (table ``retry_policies``) are what enqueue() takes max_attempts from and
what the requeue task computes backoff with; the SQL is ``sql/ops/policies.sql``. A
change applies to jobs enqueued afterwards and to every later backoff decision. A value
the table's CHECKs refuse is one line naming the rules, exit 2.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from reconciler.db import Database
from reconciler.durations import format_duration
from reconciler.ops.confirm import OpsError
from reconciler.ops.output import console, emit_json, table
from reconciler.ops.vocabulary import PRIORITIES
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["cmd_delete", "cmd_set", "cmd_show", "rows"]

_RULES = (
    "rejected: max-attempts 1 to 1000, initial-delay >= 0, max-delay >= initial-delay, "
    "multiplier >= 1 and 0 <= jitter < 1"
)


def rows(db: Database) -> list[dict[str, Any]]:
    return db.rows(query("ops/policies", "list"))


def cmd_set(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    values = {
        "max_attempts": args.max_attempts,
        "initial_delay_s": args.initial_delay.total_seconds() if args.initial_delay else None,
        "max_delay_s": args.max_delay.total_seconds() if args.max_delay else None,
        "multiplier": args.multiplier,
        "jitter": args.jitter,
    }
    try:
        with db.transaction() as conn:
            if args.kind is not None:
                conn.execute(text(query("ops/policies", "set_kind")), {"kind": args.kind, **values})
            else:
                conn.execute(
                    text(query("ops/policies", "set_priority")),
                    {"priority": args.priority, **values},
                )
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "23514":  # check_violation
            raise OpsError(_RULES) from None
        raise
    return cmd_show(args, settings, db)


def cmd_delete(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    with db.transaction() as conn:
        gone = conn.execute(text(query("ops/policies", "delete_kind")), {"kind": args.kind}).all()
    if not gone:
        raise OpsError(f"no policy for kind {args.kind!r}; see: reconciler policies")
    return cmd_show(args, settings, db)


def cmd_show(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    found = rows(db)
    if args.json:
        emit_json({"policies": found})
        return 0
    lines = [
        (
            f"kind {row['kind']}"
            if row["kind"]
            else f"priority {row['priority']} ({PRIORITIES[row['priority']]})",
            str(row["max_attempts"]),
            format_duration(timedelta(seconds=row["initial_delay_s"])),
            format_duration(timedelta(seconds=row["max_delay_s"])),
            f"x{row['multiplier']:g}",
            f"{row['jitter']:g}",
        )
        for row in found
    ]
    columns = ("applies to", "max attempts", "initial delay", "max delay", "multiplier", "jitter")
    console().print(
        table(
            "retry policies (a kind's row wins over its priority's)",
            columns,
            lines,
            right=columns[1:],
        )
    )
    return 0
