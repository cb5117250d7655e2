"""The pieces every operator's command line is built from: --json, the change options,
the due options, and leaf and group parsers that name their handler (``set_defaults``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from reconciler.db import Database
from reconciler.durations import duration_arg, moment_arg
from reconciler.ops.args import batch_size_arg
from reconciler.settings import Settings

__all__ = ["Handler", "add_change_options", "add_due_options", "add_json", "group", "leaf"]

Handler = Callable[[argparse.Namespace, Settings, Database], int]


def add_json(parser: argparse.ArgumentParser, lines: bool = False) -> None:
    what = "JSON lines, one object per row" if lines else "one JSON object"
    parser.add_argument("--json", action="store_true", help=f"print {what}")


def add_due_options(parser: argparse.ArgumentParser) -> None:
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


def add_change_options(parser: argparse.ArgumentParser, *, reason: bool = True) -> None:
    """What every command that changes jobs takes (``enqueue`` has no ``--reason``)."""
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
    if reason:
        parser.add_argument("--reason", help="a note kept in each job's event, e.g. a ticket")
    parser.add_argument(
        "--batch-size",
        type=batch_size_arg,
        metavar="N",
        help="jobs per transaction (default: RECONCILER_BATCH_SIZE)",
    )
    add_json(parser)


def leaf(
    sub: Any, name: str, handler: Handler, help_text: str, description: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description or help_text
    )
    parser.set_defaults(handler=handler, needs="schema")
    parser.add_argument(
        "--profile",
        metavar="NAME",
        help="the queue table (RECONCILER_PROFILES; needed when it lists several)",
    )
    return parser


def group(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    inner = parser.add_subparsers(dest="ops_action", metavar="ACTION", parser_class=type(parser))
    inner.required = True
    return inner
