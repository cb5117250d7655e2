"""The operator's commands on the command line: their arguments, and which function runs each.

``reconciler.cli`` adds these sub-commands with :func:`add_ops_commands`. Every leaf
parser names its function with ``set_defaults(handler=..., needs="schema")``, the one
dispatch of the whole command line; the logic lives in one module per command group.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from reconciler.durations import duration_arg
from reconciler.ops import (
    check,
    errors,
    pause,
    policies,
    purge,
    stats,
    workers,
)
from reconciler.ops.args import (
    finite_float_arg,
    positive_int_arg,
    statuses_arg,
)
from reconciler.ops.cli_jobs import add_job_commands
from reconciler.ops.cli_parts import add_change_options, add_json, leaf
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import add_filter_arguments

__all__ = ["OpsError", "add_ops_commands"]


def add_ops_commands(sub: Any) -> None:
    """Add stats, jobs, dead-letter, errors, workers, pause, resume, purge and check."""
    p = leaf(sub, "stats", stats.cmd_stats, "queue depth, waits, throughput, durations, failures")
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
    add_json(p)

    # jobs ------------------------------------------------------------------------------
    add_job_commands(sub)  # jobs, enqueue, dead-letter: reconciler/ops/cli_jobs.py

    p = leaf(sub, "errors", errors.cmd_errors, "failed attempts grouped by message and kind")
    p.add_argument(
        "--since",
        type=duration_arg,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="how far back (default 1h)",
    )
    add_filter_arguments(p, status=False)
    add_json(p, lines=True)

    p = leaf(
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
    add_json(p)

    for name, handler, text in (
        ("pause", pause.cmd_pause, "stop handing out the jobs of queues (claim() skips them)"),
        ("resume", pause.cmd_resume, "hand out the jobs of paused queues again"),
    ):
        p = leaf(sub, name, handler, text)
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
        add_json(p)

    p = leaf(
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
    add_change_options(p)

    pol = leaf(sub, "policies", policies.cmd_show, "show or change retry policies")
    add_json(pol)
    pol_sub = pol.add_subparsers(dest="ops_action", metavar="ACTION", parser_class=type(pol))
    p = leaf(pol_sub, "set", policies.cmd_set, "change a priority's policy, or add/change a kind's")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--priority", type=int, choices=range(5), help="0 critical .. 4 bulk")
    who.add_argument("--kind", help="a job kind; its policy wins over its priority's")
    p.add_argument("--max-attempts", type=positive_int_arg, metavar="N")
    p.add_argument("--initial-delay", type=duration_arg, metavar="DURATION")
    p.add_argument("--max-delay", type=duration_arg, metavar="DURATION")
    p.add_argument("--multiplier", type=finite_float_arg, metavar="X", help="1 or more")
    p.add_argument("--jitter", type=finite_float_arg, metavar="F", help="0 <= F < 1, e.g. 0.1")
    add_json(p)
    p = leaf(
        pol_sub, "delete", policies.cmd_delete, "remove a kind's policy (its priority's applies)"
    )
    p.add_argument("--kind", required=True)
    add_json(p)

    p = leaf(sub, "check", check.cmd_check, "alert conditions; exit 0 ok, 1 warning, 2 critical")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also list the conditions that are ok"
    )
    add_json(p)
