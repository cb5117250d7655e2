"""``reconciler policies``: show the retry policies, change a priority's, add or drop a kind's.

The policies (table ``retry_policies``) are what enqueue() takes max_attempts from and
what every failed or stale job's retry time (``jobs.retry_at``) is computed from; the SQL
is ``sql/ops/policies.sql``. A change applies to jobs enqueued afterwards (max_attempts)
and to every backoff: the command recomputes the retry time of the jobs already waiting,
in batches of RECONCILER_BATCH_SIZE, once the new policy is committed (jobs failing
meanwhile take the new policy from the trigger). A value the table's CHECKs refuse is one
line naming the rules, exit 2.
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

__all__ = ["cmd_delete", "cmd_set", "cmd_show", "recompute_retry_times", "rows"]

_RULES = (
    "rejected: max-attempts 1 to 1000, initial-delay >= 0, max-delay >= initial-delay, "
    "multiplier >= 1 and 0 <= jitter < 1"
)


def rows(db: Database) -> list[dict[str, Any]]:
    return db.rows(query("ops/policies", "list"))


def recompute_retry_times(db: Database, batch_size: int) -> int:
    """Every waiting job's retry time from the policies as they are now; how many changed.

    One short transaction per batch, walking the waiting jobs in finish order, so a
    backlog of any size never holds a long transaction or locks it all at once.
    """
    after: tuple[object, int] = ("-infinity", 0)
    changed: int = 0
    while True:
        with db.transaction() as conn:
            batch = conn.execute(
                text(query("ops/policies", "recompute_retry_times")),
                {"after_at": after[0], "after_id": after[1], "batch_size": batch_size},
            ).one()
        changed += int(batch.changed)
        if batch.seen < batch_size:
            break
        after = (batch.last_at, batch.last_id)
    with db.transaction() as conn:
        changed += len(
            conn.execute(text(query("ops/policies", "recompute_retry_times_unfinished"))).all()
        )
    return changed


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
    changed = recompute_retry_times(db, settings.batch_size)
    return cmd_show(args, settings, db, retry_times_changed=changed)


def cmd_delete(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    with db.transaction() as conn:
        gone = conn.execute(text(query("ops/policies", "delete_kind")), {"kind": args.kind}).all()
    if not gone:
        raise OpsError(f"no policy for kind {args.kind!r}; see: reconciler policies")
    changed = recompute_retry_times(db, settings.batch_size)
    return cmd_show(args, settings, db, retry_times_changed=changed)


def cmd_show(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    *,
    retry_times_changed: int | None = None,
) -> int:
    """The policies; after a change, also how many waiting jobs' retry times moved."""
    found = rows(db)
    if args.json:
        shown: dict[str, Any] = {"policies": found}
        if retry_times_changed is not None:
            shown["retry_times_changed"] = retry_times_changed
        emit_json(shown)
        return 0
    if retry_times_changed is not None:
        console().print(f"retry times recomputed: {retry_times_changed} waiting job(s) changed")
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
