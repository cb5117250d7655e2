"""The command lines of ``reconciler jobs``, ``enqueue`` and ``dead-letter``."""

from __future__ import annotations

from typing import Any

from reconciler.durations import duration_arg
from reconciler.ops import dead_letter, enqueue, export, jobs
from reconciler.ops.args import job_key_arg, names_arg, positive_int_arg
from reconciler.ops.cli_parts import (
    add_change_options,
    add_due_options,
    add_json,
    group,
    leaf,
)
from reconciler.ops.filter import add_filter_arguments

__all__ = ["add_job_commands"]


def add_job_commands(sub: Any) -> None:
    """jobs (list, show, requeue, retry-failed, cancel, reset-stuck, mark-succeeded),
    enqueue, and dead-letter (list, errors, export, replay, purge)."""
    g = group(sub, "jobs", "list, show, requeue, retry, cancel or reset jobs")
    p = leaf(g, "list", jobs.cmd_list, "jobs matching the filters, newest first")
    add_filter_arguments(p, limit_default=50)
    add_json(p, lines=True)
    p = leaf(g, "show", jobs.cmd_show, "one job with its whole history (job_events)")
    p.add_argument("id", type=job_key_arg, metavar="ID")
    add_json(p)
    p = leaf(
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
    add_due_options(p)
    add_change_options(p)
    p = leaf(
        g,
        "mark-succeeded",
        jobs.cmd_mark_succeeded,
        "mark jobs succeeded by hand, with --reason (queued, running, failed, stale, dead)",
        "Mark jobs succeeded by hand (the work was done another way). Needs job ids and "
        "--reason. A running job's worker is fenced out.",
    )
    p.add_argument("ids", nargs="+", type=job_key_arg, metavar="ID", help="job ids")
    add_change_options(p)
    p = leaf(
        g,
        "retry-failed",
        jobs.cmd_retry_failed,
        "requeue every failed job of the filters (default --status failed)",
    )
    add_filter_arguments(p)
    p.add_argument("--keep-attempts", action="store_true", help="keep attempt count and error")
    add_due_options(p)
    add_change_options(p)
    p = leaf(
        g,
        "cancel",
        jobs.cmd_cancel,
        "queued, running, failed or stale jobs become cancelled",
        "Cancel jobs by id and/or filter. A running job's worker is fenced out: its "
        "heartbeat, complete and fail return false.",
    )
    add_filter_arguments(p, ids=True)
    add_change_options(p)
    p = leaf(
        g,
        "reset-stuck",
        jobs.cmd_reset_stuck,
        "running jobs (by id, or silent for longer than --older-than) become stale",
        "Run the mark-stale task for these running jobs (ids), or with this timeout (running "
        "jobs whose last heartbeat is older): they become stale, their workers are fenced "
        "out, and the requeue task (or dead-letter) takes them from there.",
    )
    p.add_argument("ids", nargs="*", type=job_key_arg, metavar="ID", help="job ids")
    p.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="DURATION",
        help="heartbeat age, e.g. 10m (required without ids)",
    )
    p.add_argument("--queue", action="append", type=names_arg, metavar="QUEUE")
    p.add_argument("--kind", action="append", type=names_arg, metavar="KIND")
    p.add_argument("--tenant", action="append", type=names_arg, metavar="TENANT")
    add_change_options(p)

    # enqueue ---------------------------------------------------------------------------
    p = leaf(
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
    add_due_options(p)
    add_change_options(p, reason=False)

    # dead-letter -----------------------------------------------------------------------
    g = group(sub, "dead-letter", "list, group, export, replay or purge dead jobs")
    p = leaf(g, "list", dead_letter.cmd_list, "dead jobs, newest first")
    add_filter_arguments(p, ids=True, status=False, limit_default=50)
    add_json(p, lines=True)
    p = leaf(g, "errors", dead_letter.cmd_errors, "dead jobs grouped by error, kind and tenant")
    add_filter_arguments(p, status=False)
    add_json(p, lines=True)
    p = leaf(
        g,
        "export",
        export.cmd_export,
        "dead jobs with their history as JSON lines, a backup before purging",
    )
    add_filter_arguments(p, ids=True, status=False)
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write here (never replaced); default stdout"
    )
    p.add_argument("--actor", help="who to record (default: cli:<os user>)")
    add_json(p)
    p = leaf(g, "replay", dead_letter.cmd_replay, "requeue dead jobs (ids and/or filters)")
    add_filter_arguments(p, ids=True, status=False)
    p.add_argument("--all", action="store_true", help="every dead job, when no filter is given")
    p.add_argument("--keep-attempts", action="store_true", help="keep attempt count and error")
    add_due_options(p)
    add_change_options(p)
    p = leaf(
        g,
        "purge",
        dead_letter.cmd_purge,
        "delete dead jobs; refuses those without an export (see export) unless --no-backup",
    )
    add_filter_arguments(p, ids=True, status=False)
    p.add_argument("--all", action="store_true", help="every dead job, when no filter is given")
    p.add_argument("--no-backup", action="store_true", help="delete even jobs never exported")
    add_change_options(p)

    # the rest --------------------------------------------------------------------------
