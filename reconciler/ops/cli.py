"""The operator's commands on the command line: their arguments, and which function runs each.

``reconciler.cli`` adds these sub-commands with :func:`add_ops_commands`. Every leaf
parser names its function with ``set_defaults(handler=..., needs="schema")``, the one
dispatch of the whole command line; the logic lives in one module per command group.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from reconciler.db import Database
from reconciler.durations import duration_arg, moment_arg
from reconciler.ops import (
    check,
    dead_letter,
    enqueue,
    errors,
    jobs,
    pause,
    policies,
    purge,
    stats,
    workers,
)
from reconciler.ops.args import (
    batch_size_arg,
    finite_float_arg,
    names_arg,
    positive_int_arg,
    statuses_arg,
)
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import add_filter_arguments
from reconciler.settings import Settings

__all__ = ["OpsError", "add_ops_commands"]

Handler = Callable[[argparse.Namespace, Settings, Database], int]


def _json(parser: argparse.ArgumentParser, lines: bool = False) -> None:
    what = "JSON lines, one object per row" if lines else "one JSON object"
    parser.add_argument("--json", action="store_true", help=f"print {what}")


def _due_options(parser: argparse.ArgumentParser) -> None:
    """When a requeued job becomes due: now (default), at a time, or after a delay."""
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--at",
        type=moment_arg,
        metavar="TIME",
        help="due at this time, with its zone, e.g. 2026-12-03T02:00Z (default: now)",
    )
    when.add_argument(
        "--in", dest="in_", type=duration_arg, metavar="DURATION", help="due after, e.g. 2h"
    )


def _change_options(parser: argparse.ArgumentParser) -> None:
    """What every command that changes jobs takes."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would change (the same statement, rolled back); write nothing",
    )
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="do not ask, however many jobs (RECONCILER_OPS_CONFIRM_THRESHOLD)",
    )
    parser.add_argument("--actor", help="who to record in job_events (default: cli:<os user>)")
    parser.add_argument("--reason", help="a note kept in each job's event, e.g. a ticket")
    parser.add_argument(
        "--batch-size",
        type=batch_size_arg,
        metavar="N",
        help="jobs per transaction (default: RECONCILER_BATCH_SIZE)",
    )
    _json(parser)


def _leaf(
    sub: Any, name: str, handler: Handler, help_text: str, description: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description or help_text
    )
    parser.set_defaults(handler=handler, needs="schema")
    return parser


def _group(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    inner = parser.add_subparsers(dest="ops_action", metavar="ACTION", parser_class=type(parser))
    inner.required = True
    return inner


def add_ops_commands(sub: Any) -> None:
    """Add stats, jobs, dead-letter, errors, workers, pause, resume, purge and check."""
    p = _leaf(sub, "stats", stats.cmd_stats, "queue depth, waits, throughput, durations, failures")
    p.add_argument(
        "--since",
        type=duration_arg,
        default=timedelta(hours=24),
        metavar="DURATION",
        help="window of throughput, durations and failure rates (default 24h)",
    )
    p.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C")
    p.add_argument(
        "--interval",
        type=duration_arg,
        default=timedelta(seconds=2),
        metavar="DURATION",
        help="redraw every (default 2s)",
    )
    _json(p)

    # jobs ------------------------------------------------------------------------------
    g = _group(sub, "jobs", "list, show, requeue, retry, cancel or reset jobs")
    p = _leaf(g, "list", jobs.cmd_list, "jobs matching the filters, newest first")
    add_filter_arguments(p, limit_default=50)
    _json(p, lines=True)
    p = _leaf(g, "show", jobs.cmd_show, "one job with its whole history (job_events)")
    p.add_argument("id", type=positive_int_arg, metavar="ID")
    _json(p)
    p = _leaf(
        g,
        "requeue",
        jobs.cmd_requeue,
        "failed, stale, dead or cancelled jobs back to queued, due now",
        "Put jobs back to queued, due now (or --at/--in). The retry budget and error are reset "
        "unless --keep-attempts. Takes job ids and/or the filters. A succeeded job is replayed "
        "as a new attempt only when named by id or by --status succeeded.",
    )
    add_filter_arguments(p, ids=True)
    p.add_argument("--keep-attempts", action="store_true", help="keep attempt count and error")
    _due_options(p)
    _change_options(p)
    p = _leaf(
        g,
        "mark-succeeded",
        jobs.cmd_mark_succeeded,
        "mark jobs succeeded by hand, with --reason (queued, running, failed, stale, dead)",
        "Mark jobs succeeded by hand (the work was done another way). Needs job ids and "
        "--reason. A running job's worker is fenced out.",
    )
    p.add_argument("ids", nargs="+", type=positive_int_arg, metavar="ID", help="job ids")
    _change_options(p)
    p = _leaf(
        g,
        "retry-failed",
        jobs.cmd_retry_failed,
        "requeue every failed job of the filters (default --status failed)",
    )
    add_filter_arguments(p)
    p.add_argument("--keep-attempts", action="store_true", help="keep attempt count and error")
    _due_options(p)
    _change_options(p)
    p = _leaf(
        g,
        "cancel",
        jobs.cmd_cancel,
        "queued, running, failed or stale jobs become cancelled",
        "Cancel jobs by id and/or filter. A running job's worker is fenced out: its "
        "heartbeat, complete and fail return false.",
    )
    add_filter_arguments(p, ids=True)
    _change_options(p)
    p = _leaf(
        g,
        "reset-stuck",
        jobs.cmd_reset_stuck,
        "running jobs (by id, or silent for longer than --older-than) become stale",
        "Run the mark-stale task for these running jobs (ids), or with this timeout (running "
        "jobs whose last heartbeat is older): they become stale, their workers are fenced "
        "out, and the requeue task (or dead-letter) takes them from there.",
    )
    p.add_argument("ids", nargs="*", type=positive_int_arg, metavar="ID", help="job ids")
    p.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="DURATION",
        help="heartbeat age, e.g. 10m (required without ids)",
    )
    p.add_argument("--queue", action="append", type=names_arg, metavar="QUEUE")
    p.add_argument("--kind", action="append", type=names_arg, metavar="KIND")
    p.add_argument("--tenant", action="append", type=names_arg, metavar="TENANT")
    _change_options(p)

    # enqueue ---------------------------------------------------------------------------
    p = _leaf(
        sub,
        "enqueue",
        enqueue.cmd_enqueue,
        "add a job, or many from JSON lines on stdin (--jsonl), through enqueue()",
        "Add a job through the workers' own enqueue() (same defaults, retry policy and "
        "idempotency keys), or many: --jsonl reads one JSON object per line from stdin "
        "(kind, payload, queue, priority, run_at, max_attempts, idempotency_key, tenant_id); "
        "every line is checked before anything is written.",
    )
    p.add_argument("kind", nargs="?", metavar="KIND", help="the job's kind, e.g. report.build")
    p.add_argument("--jsonl", action="store_true", help="read the jobs from stdin, one per line")
    p.add_argument("--payload", metavar="JSON", help="the job's payload (default {})")
    p.add_argument("--queue", metavar="QUEUE", help="default: default")
    p.add_argument("--priority", metavar="P", help="0..4 or critical, high, default, low, bulk")
    p.add_argument("--max-attempts", type=positive_int_arg, metavar="N", help="default: policy")
    p.add_argument("--idempotency-key", metavar="KEY", help="unique per kind and tenant")
    p.add_argument("--tenant", metavar="TENANT")
    _due_options(p)
    p.add_argument("--dry-run", action="store_true", help="check and preview; write nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask, however many jobs")
    p.add_argument("--actor", help="who to record in job_events (default: cli:<os user>)")
    p.add_argument(
        "--batch-size",
        type=batch_size_arg,
        metavar="N",
        help="jobs per transaction (default: RECONCILER_BATCH_SIZE)",
    )
    _json(p)

    # dead-letter -----------------------------------------------------------------------
    g = _group(sub, "dead-letter", "list, group, export, replay or purge dead jobs")
    p = _leaf(g, "list", dead_letter.cmd_list, "dead jobs, newest first")
    add_filter_arguments(p, ids=True, status=False, limit_default=50)
    _json(p, lines=True)
    p = _leaf(g, "errors", dead_letter.cmd_errors, "dead jobs grouped by error, kind and tenant")
    add_filter_arguments(p, status=False)
    _json(p, lines=True)
    p = _leaf(
        g,
        "export",
        dead_letter.cmd_export,
        "dead jobs with their history as JSON lines, a backup before purging",
    )
    add_filter_arguments(p, ids=True, status=False)
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write here (never replaced); default stdout"
    )
    p.add_argument("--actor", help="who to record (default: cli:<os user>)")
    _json(p)
    p = _leaf(g, "replay", dead_letter.cmd_replay, "requeue dead jobs (ids and/or filters)")
    add_filter_arguments(p, ids=True, status=False)
    p.add_argument("--all", action="store_true", help="every dead job, when no filter is given")
    p.add_argument("--keep-attempts", action="store_true", help="keep attempt count and error")
    _due_options(p)
    _change_options(p)
    p = _leaf(
        g,
        "purge",
        dead_letter.cmd_purge,
        "delete dead jobs; refuses those without an export (see export) unless --no-backup",
    )
    add_filter_arguments(p, ids=True, status=False)
    p.add_argument("--all", action="store_true", help="every dead job, when no filter is given")
    p.add_argument("--no-backup", action="store_true", help="delete even jobs never exported")
    _change_options(p)

    # the rest --------------------------------------------------------------------------
    p = _leaf(sub, "errors", errors.cmd_errors, "failed attempts grouped by message and kind")
    p.add_argument(
        "--since",
        type=duration_arg,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="how far back (default 1h)",
    )
    add_filter_arguments(p, status=False)
    _json(p, lines=True)

    p = _leaf(
        sub, "workers", workers.cmd_workers, "workers, their jobs and heartbeats; heartbeat budget"
    )
    p.add_argument(
        "--timeout",
        type=duration_arg,
        metavar="DURATION",
        help="silent this long = probably dead, for every job (default: the heartbeat rule, "
        "RECONCILER_HEARTBEAT_TIMEOUT and its overrides)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=duration_arg,
        metavar="DURATION",
        help="the workers' interval (default RECONCILER_OPS_HEARTBEAT_INTERVAL)",
    )
    _json(p)

    for name, handler, text in (
        ("pause", pause.cmd_pause, "stop handing out the jobs of queues (claim() skips them)"),
        ("resume", pause.cmd_resume, "hand out the jobs of paused queues again"),
    ):
        p = _leaf(sub, name, handler, text)
        p.add_argument("queues", nargs="*", metavar="QUEUE")
        p.add_argument(
            "--all",
            action="store_true",
            help="every queue, also those first used later / lift every pause",
        )
        p.add_argument("--dry-run", action="store_true", help="show what would change")
        if name == "pause":
            p.add_argument("--force", action="store_true", help="also a queue with no jobs yet")
            p.add_argument(
                "--history",
                action="store_true",
                help="list past pauses and resumes, newest first (of the QUEUEs named, if any)",
            )
            p.add_argument(
                "--limit",
                type=positive_int_arg,
                default=20,
                metavar="N",
                help="--history: at most N rows (default 20)",
            )
        p.add_argument("--reason", help="why: shown by stats and check, kept in the history")
        p.add_argument("--actor", help="who, for the history (default: cli:<os user>)")
        _json(p)

    p = _leaf(
        sub,
        "purge",
        purge.cmd_purge,
        "delete finished jobs older than --older-than now (the purge task, ad hoc)",
    )
    p.add_argument(
        "--older-than",
        type=duration_arg,
        required=True,
        metavar="DURATION",
        help="finished longer ago than, e.g. 30d",
    )
    p.add_argument(
        "--status",
        action="append",
        type=statuses_arg,
        metavar="STATUS",
        help="succeeded, cancelled or dead (default: succeeded and cancelled)",
    )
    p.add_argument("--no-backup", action="store_true", help="also dead jobs never exported")
    _change_options(p)

    pol = _leaf(sub, "policies", policies.cmd_show, "show or change retry policies")
    _json(pol)
    pol_sub = pol.add_subparsers(dest="ops_action", metavar="ACTION", parser_class=type(pol))
    p = _leaf(
        pol_sub, "set", policies.cmd_set, "change a priority's policy, or add/change a kind's"
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--priority", type=int, choices=range(5), help="0 critical .. 4 bulk")
    who.add_argument("--kind", help="a job kind; its policy wins over its priority's")
    p.add_argument("--max-attempts", type=positive_int_arg, metavar="N")
    p.add_argument("--initial-delay", type=duration_arg, metavar="DURATION")
    p.add_argument("--max-delay", type=duration_arg, metavar="DURATION")
    p.add_argument("--multiplier", type=finite_float_arg, metavar="X", help="1 or more")
    p.add_argument("--jitter", type=finite_float_arg, metavar="F", help="0 <= F < 1, e.g. 0.1")
    _json(p)
    p = _leaf(
        pol_sub, "delete", policies.cmd_delete, "remove a kind's policy (its priority's applies)"
    )
    p.add_argument("--kind", required=True)
    _json(p)

    p = _leaf(sub, "check", check.cmd_check, "alert conditions; exit 0 ok, 1 warning, 2 critical")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also list the conditions that are ok"
    )
    _json(p)
