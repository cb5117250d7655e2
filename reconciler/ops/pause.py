"""``reconciler pause`` and ``resume``: stop and restart handing out queues' jobs.

A pause is a row in ``paused_queues``; ``claim()`` hands out no job of a
paused queue, so workers simply find nothing there, while running jobs finish
and the reconciler's maintenance (stale jobs, retries, dead letters, purge)
goes on. It replaces the runbooks' "scale the workers to zero" and "set the
worker secret to PAUSED". ``stats``, ``check`` and ``jobs show`` show pauses.

``--all`` is the runbooks' "stop all job processing": one row with queue
``*``, which covers every queue, including a queue first used after the
pause. While it is there, resuming one queue is refused (the queue would
stay paused); ``resume --all`` lifts every pause, ``*`` included.

A queue that has no job is refused unless ``--force``: a typo must not leave
the real queue running while the operator believes it paused.

Each pause and resume writes a ``queue_pause_events`` row (queue, action,
time, actor, reason) in the same statement; ``pause --history`` lists them.
Safe to re-run: pausing a paused queue, or ``resume --all`` with nothing
paused, changes nothing and records nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from reconciler.db import Database
from reconciler.ops.confirm import OpsError
from reconciler.ops.output import console, emit_json, table
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query

# SQLSTATE of a lock_timeout that ran out.
LOCK_NOT_AVAILABLE = "55P03"

__all__ = [
    "ALL_QUEUES",
    "cmd_pause",
    "cmd_resume",
    "pause",
    "pause_history",
    "paused_queues",
    "queue_label",
    "resume",
]

ALL_QUEUES = "*"
"""The queue of the ``paused_queues`` row that pauses every queue."""


def queue_label(queue: str) -> str:
    """A paused queue as people read it: ``*`` is "all queues"."""
    return "all queues" if queue == ALL_QUEUES else queue


def paused_queues(db: Database) -> list[dict[str, Any]]:
    """The pauses in force, ``*`` first, each with its queued jobs."""
    return db.rows(query("ops/pause", "list"))


def pause_history(db: Database, *, queues: list[str] | None, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` pauses and resumes, newest first (of ``queues`` and of ``*``)."""
    return db.rows(query("ops/pause", "history"), {"queues": queues, "limit": limit})


def _queues(args: argparse.Namespace, verb: str) -> list[str]:
    """The queues named, or ``[*]`` for ``--all``."""
    if args.all and args.queues:
        raise OpsError(f"{verb}: give queue names or --all, not both")
    if ALL_QUEUES in args.queues:
        raise OpsError(f"{verb}: '*' stands for every queue; use reconciler {verb} --all")
    if args.all:
        return [ALL_QUEUES]
    if not args.queues:
        raise OpsError(f"{verb}: name the queues (e.g. reconciler {verb} email), or --all")
    return list(dict.fromkeys(args.queues))


def _print(changed: list[str], verb: str, db: Database, as_json: bool, dry_run: bool) -> None:
    paused = paused_queues(db)
    if as_json:
        emit_json({verb: changed, "dry_run": dry_run, "paused": paused})
        return
    out = console()
    done = "would be " if dry_run else ""
    names = ", ".join(map(queue_label, changed)) if changed else "nothing to change"
    out.print(f"{done}{verb}d: {names}")
    out.print(
        table(
            f"paused queues ({len(paused)})",
            ("queue", "paused at", "by", "reason", "queued jobs"),
            [
                (queue_label(p["queue"]), p["paused_at"], p["paused_by"], p["reason"], p["queued"])
                for p in paused
            ],
            right=("queued jobs",),
        )
    )


def _history(args: argparse.Namespace, db: Database) -> int:
    if args.all:
        raise OpsError("pause --history: name queues to narrow it, or nothing for every queue")
    rows = pause_history(db, queues=list(args.queues) or None, limit=args.limit)
    if args.json:
        emit_json({"history": rows})
        return 0
    console().print(
        table(
            f"pauses and resumes, newest first ({len(rows)}; --limit N for more)",
            ("at", "queue", "action", "by", "reason"),
            [
                (r["at"], queue_label(r["queue"]), r["action"], r["actor"], r["reason"])
                for r in rows
            ],
        )
    )
    return 0


def cmd_pause(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    if args.history:
        return _history(args, db)
    queues = _queues(args, "pause")
    actor = args.actor or default_actor()
    changed = pause(
        db,
        queues,
        force=args.force or args.all,
        actor=actor,
        reason=args.reason,
        dry_run=args.dry_run,
    )
    _print(sorted(changed), "pause", db, args.json, dry_run=args.dry_run)
    return 0


def pause(
    db: Database,
    queues: list[str],
    *,
    force: bool,
    actor: str,
    reason: str | None,
    dry_run: bool,
) -> list[str]:
    """Pause ``queues`` (``[*]``: every queue) with their events; the queues it paused (or,
    a dry run, would pause). A queue with no job is refused unless ``force``."""
    if not force:
        with db.transaction() as conn:
            empty = list(
                conn.execute(text(query("ops/pause", "without_jobs")), {"queues": queues}).scalars()
            )
        if empty:
            raise OpsError(
                f"queue {empty[0]!r} has no jobs (a typo?); pass --force to pause it anyway"
            )
    already = {p["queue"] for p in paused_queues(db)}
    if dry_run:
        return [q for q in queues if q not in already]
    try:
        with db.transaction() as conn:
            conn.execute(text(query("ops/pause", "wait_for_claims")))
            return _record(conn, "pause", queues, db, actor, reason)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        raise OpsError(
            "nothing paused: a transaction that called claim() has been open for longer than "
            "RECONCILER_LOCK_TIMEOUT, and a pause waits for every claim under way (so that no "
            "job of a paused queue is handed out after it); try again, or find it with: "
            "SELECT pid, xact_start, query FROM pg_stat_activity ORDER BY xact_start",
            code=1,
        ) from None


def _record(
    conn: Connection,
    action: str,
    queues: list[str] | None,
    db: Database,
    actor: str,
    reason: str | None,
) -> list[str]:
    """Pause or resume ``queues`` (None: every pause) with their events, in ``conn``'s
    transaction; the queues changed."""
    return list(
        conn.execute(
            text(query("ops/pause", action)),
            {
                "queues": queues,
                "now": db.now(),
                "actor": actor,
                "reason": reason,
            },
        ).scalars()
    )


def cmd_resume(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    named = _queues(args, "resume")
    queues = None if args.all else named  # None: every pause, '*' and single queues alike
    changed = resume(
        db, queues, actor=args.actor or default_actor(), reason=args.reason, dry_run=args.dry_run
    )
    _print(changed, "resume", db, args.json, dry_run=args.dry_run)
    return 0


def resume(
    db: Database, queues: list[str] | None, *, actor: str, reason: str | None, dry_run: bool
) -> list[str]:
    """Resume ``queues`` (None: every pause) with their events; the queues it resumed (or,
    a dry run, would resume), sorted. Refused while ``*`` pauses them all anyway."""
    paused = {p["queue"]: p for p in paused_queues(db)}
    if queues is not None:
        every = paused.get(ALL_QUEUES)
        if every is not None:
            raise OpsError(
                f"cannot resume {queues[0]!r} alone: all queues are paused (pause --all by "
                f"{every['paused_by']} at {every['paused_at']:%Y-%m-%d %H:%M:%S}); "
                "to resume them: reconciler resume --all"
            )
        not_paused = [q for q in queues if q not in paused]
        if not_paused:
            raise OpsError(
                f"queue {not_paused[0]!r} is not paused; "
                f"paused: {', '.join(sorted(paused)) or 'none'}"
            )
    if dry_run:
        return sorted(paused if queues is None else queues)
    with db.transaction() as conn:
        return sorted(_record(conn, "resume", queues, db, actor, reason))
