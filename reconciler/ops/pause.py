"""``reconciler pause`` and ``resume``: stop and restart handing out a queue's jobs.

A pause is a row in ``paused_queues``; ``claim()`` hands out no job of a
paused queue, so workers simply find nothing there, while running jobs finish
and the reconciler's maintenance (stale jobs, retries, dead letters, purge)
goes on. It replaces the runbooks' "scale the workers to zero" and "set the
worker secret to PAUSED". ``stats`` and ``check`` show paused queues.

A queue that has no job is refused unless ``--force``: a typo must not leave
the real queue running while the operator believes it paused. ``--all``
pauses every queue that has jobs now; a queue first used later is not paused.
Safe to re-run: pausing a paused queue or resuming a running one changes
nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.common import OpsError
from reconciler.ops.output import console, emit_json, table
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["cmd_pause", "cmd_resume", "paused_queues"]


def paused_queues(db: Database) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        return [dict(r._mapping) for r in conn.execute(text(query("ops/pause", "list")))]


def _queues(db: Database, args: argparse.Namespace, verb: str) -> list[str]:
    if args.all and args.queues:
        raise OpsError(f"{verb}: give queue names or --all, not both")
    if args.all:
        if verb == "resume":
            return [p["queue"] for p in paused_queues(db)]
        with db.transaction() as conn:
            return list(conn.execute(text(query("ops/pause", "known_queues"))).scalars())
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
    out.print(f"{done}{verb}d: {', '.join(changed) if changed else 'nothing to change'}")
    out.print(
        table(
            f"paused queues ({len(paused)})",
            ("queue", "paused at", "by", "reason", "queued jobs"),
            [
                (p["queue"], p["paused_at"], p["paused_by"], p["reason"], p["queued"])
                for p in paused
            ],
            right=("queued jobs",),
        )
    )


def cmd_pause(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    queues = _queues(db, args, "pause")
    if not args.force and not args.all:
        with db.transaction() as conn:
            empty = list(
                conn.execute(text(query("ops/pause", "without_jobs")), {"queues": queues}).scalars()
            )
        if empty:
            raise OpsError(
                f"queue {empty[0]!r} has no jobs (a typo?); pass --force to pause it anyway"
            )
    already = {p["queue"] for p in paused_queues(db)}
    if args.dry_run:
        _print([q for q in queues if q not in already], "pause", db, args.json, dry_run=True)
        return 0
    with db.transaction() as conn:
        changed = list(
            conn.execute(
                text(query("ops/pause", "pause")),
                {
                    "queues": queues,
                    "now": db.now(),
                    "actor": args.actor or default_actor(),
                    "reason": args.reason,
                },
            ).scalars()
        )
    _print(sorted(changed), "pause", db, args.json, dry_run=False)
    return 0


def cmd_resume(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    queues = _queues(db, args, "resume")
    paused = {p["queue"] for p in paused_queues(db)}
    not_paused = [q for q in queues if q not in paused]
    if not_paused and not args.all:
        raise OpsError(
            f"queue {not_paused[0]!r} is not paused; paused: {', '.join(sorted(paused)) or 'none'}"
        )
    if args.dry_run:
        _print(sorted(queues), "resume", db, args.json, dry_run=True)
        return 0
    with db.transaction() as conn:
        changed = list(
            conn.execute(text(query("ops/pause", "resume")), {"queues": queues}).scalars()
        )
    _print(sorted(changed), "resume", db, args.json, dry_run=False)
    return 0
