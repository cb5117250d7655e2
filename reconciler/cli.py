"""The ``reconciler`` command line: ``run``, ``migrate``, ``tasks``, ``policies``,
``daemon``, ``schedule``, ``status`` and ``demo``; the operator's commands
(``stats``, ``jobs``, ``dead-letter``, ``errors``, ``workers``, ``pause``,
``resume``, ``purge``, ``check``) live in :mod:`reconciler.ops`.

Exit codes: 0 ok, 1 a task failed, 2 usage or configuration error. A user's
mistake gets one line on stderr saying what is wrong and how to fix it, never
a traceback. Human output is short and readable; ``--json`` prints one JSON
object for scripts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import OperationalError

from reconciler import __version__
from reconciler.app import SchemaBehind, Target, ensure_schema, open_database
from reconciler.daemon import DaemonConfigError, serve
from reconciler.db import Database, DatabaseUnavailable, first_line
from reconciler.demo import run_demo
from reconciler.durations import duration_arg
from reconciler.embedded import EmbeddedUnavailable
from reconciler.leases import TaskBusy
from reconciler.logs import configure_logging, get_logger
from reconciler.metrics import QueueCollector, exposition
from reconciler.migrate import MigrationBlocked, MigrationError, migrate, pending
from reconciler.ops.args import batch_size_arg, job_id_arg
from reconciler.ops.cli import OpsError, add_ops_commands
from reconciler.ops.output import emit_json
from reconciler.partitions import partition_events
from reconciler.profiles import ProfileError, bind_profile, configured, open_profile, select
from reconciler.profiles.check import describe, explain
from reconciler.profiles.live import Bound
from reconciler.profiles.ops import HANDLERS as FOREIGN_HANDLERS
from reconciler.profiles.ops import PROFILE_FREE
from reconciler.profiles.ops import unsupported as foreign_unsupported
from reconciler.runner import run_task
from reconciler.schedule import Schedule, ScheduleError, load_schedule, next_runs
from reconciler.schedule import render as render_schedule
from reconciler.settings import Settings, describe_error, load_settings
from reconciler.status import collect as collect_status
from reconciler.status import render as render_status
from reconciler.tasks import TASKS, TaskResult
from reconciler.web.serve import add_web_command, cmd_web

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake in what the user asked for; exit 2 with this one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reconciler",
        description="Keeps a PostgreSQL job queue healthy: stale jobs, retries, dead letters, "
        "retention and vacuum. Configuration: RECONCILER_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run one task now, exactly as the daemon would")
    run.add_argument("task", metavar="TASK", help=f"one of: {', '.join(TASKS)}")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would change (counts and sample job ids); write nothing",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument(
        "--batch-size",
        type=batch_size_arg,
        metavar="N",
        help="rows per transaction (default: RECONCILER_BATCH_SIZE)",
    )
    run.add_argument(
        "--time-budget",
        type=duration_arg,
        metavar="DURATION",
        help="stop starting batches after this long, e.g. 20s",
    )
    run.add_argument("--actor", help="who to record in job_events (default: reconciler:TASK)")
    run.add_argument(
        "--profile",
        metavar="NAME",
        help="the queue table to work on (RECONCILER_PROFILES; needed when it lists several)",
    )
    run.set_defaults(handler=cmd_run, needs="database")

    prof = sub.add_parser(
        "profiles", help="list the configured queue tables; 'profiles check' validates them"
    )
    prof.add_argument("action", nargs="?", choices=["check"], help="check against the database")
    prof.add_argument("name", nargs="?", metavar="NAME", help="only this profile")
    prof.add_argument("--json", action="store_true", help="print one JSON object")
    prof.set_defaults(handler=cmd_profiles, needs="database")

    mig = sub.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    mig.add_argument("--json", action="store_true", help="print one JSON object")
    mig.add_argument(
        "--check", action="store_true", help="apply nothing; exit 1 when migrations are pending"
    )
    mig.set_defaults(handler=cmd_migrate, needs="database")

    tasks = sub.add_parser("tasks", help="list the tasks, a line each")
    tasks.add_argument("--json", action="store_true", help="print one JSON object")
    tasks.set_defaults(handler=cmd_tasks, needs="nothing")

    add_ops_commands(sub)  # the operator's toolkit: stats, jobs, dead-letter, ... (reconciler/ops/)

    sub.add_parser(
        "daemon",
        help="run every task on its schedule until SIGTERM (RECONCILER_SCHEDULE_FILE)",
    ).set_defaults(handler=cmd_daemon, needs="settings")
    sched = sub.add_parser("schedule", help="show the effective schedule and the next runs")
    sched.add_argument("--json", action="store_true", help="print one JSON object")
    sched.set_defaults(handler=cmd_schedule, needs="settings")
    metrics = sub.add_parser(
        "metrics", help="print the queue's Prometheus gauges once (the daemon serves /metrics)"
    )
    metrics.set_defaults(handler=cmd_metrics, needs="database")
    stat = sub.add_parser("status", help="per task: last run, next run, overdue or not")
    stat.add_argument("--json", action="store_true", help="print one JSON object")
    stat.set_defaults(handler=cmd_status, needs="database")
    demo = sub.add_parser(
        "demo", help="watch the reconciler heal a simulated queue (own schema; start here)"
    )
    demo.add_argument(
        "--duration",
        type=duration_arg,
        default=timedelta(seconds=60),
        metavar="DURATION",
        help="how long to run (default 60s)",
    )
    demo.add_argument("--json", action="store_true", help="print only a JSON summary at the end")
    demo.add_argument(
        "--schema",
        default="reconciler_demo",
        help="the demo's schema, dropped and rebuilt (default reconciler_demo)",
    )
    demo.set_defaults(handler=cmd_demo, needs="settings")
    add_web_command(sub)  # the dashboard (reconciler/web/)
    return parser


# --- output -----------------------------------------------------------------------------


def _out() -> Console:
    return Console(soft_wrap=True, highlight=False)


def _print_result(result: TaskResult, target: Target) -> None:
    out = _out()
    batches = f"{result.batches} batch{'es' if result.batches != 1 else ''}"
    task = result.task if result.profile == "native" else f"{result.task} for {result.profile}"
    if result.dry_run:
        head = f"{task} (dry run, nothing written): would change {result.changed} job(s)"
    else:
        head = f"{task}: changed {result.changed} job(s) in {batches}"
    out.print(f"{head} ({result.duration_ms} ms) on {target.describe()}")
    for transition, count in sorted(result.transitions.items()):
        out.print(f"  {transition.replace('->', ' -> '):<24} {count}")
    if result.sample_ids:
        out.print(f"  e.g. job ids {', '.join(map(str, result.sample_ids))}")
    if result.stopped == "time_budget":
        out.print("  stopped at the time budget; the rest is left for the next run")
    if result.stopped == "dry_run_limit":
        out.print(f"  (the preview stops at {result.changed}; there are more)")
    for note in result.notes:
        out.print(f"  {note}")
    if result.error:
        out.print(f"  failed: {result.error}")


# --- commands ---------------------------------------------------------------------------


def _require_schema(db: Database, target: Target) -> None:
    """Refuse a schema that is missing or behind (exit 2); set up the embedded one."""
    try:
        applied = ensure_schema(db, target)
    except SchemaBehind as exc:
        raise UsageError(str(exc)) from None
    if applied:
        sys.stderr.write(
            f"reconciler: set up schema {db.schema!r} in the {target.describe()} "
            f"({', '.join(applied)})\n"
        )


def cmd_run(args: argparse.Namespace, settings: Settings, db: Database, target: Target) -> int:
    if args.task not in TASKS:
        raise UsageError(f"unknown task {args.task!r}; known tasks: {', '.join(TASKS)}")
    _require_schema(db, target)
    actor = args.actor or None
    profile = _profile(settings, db, args.profile)
    try:
        result = run_task(
            db,
            settings,
            args.task,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
            time_budget=args.time_budget,
            actor=actor,
            profile=profile,
        )
    except TaskBusy as busy:
        # Not waiting is deliberate: the other run does the same work, and a
        # script can retry; exit 1 like any run that did not do its job.
        if args.json:
            emit_json(
                {
                    "task": busy.task,
                    "status": "busy",
                    "holder": busy.holder,
                    "lease_expires_at": busy.expires_at.isoformat(),
                }
            )
        else:
            sys.stderr.write(f"reconciler: {busy}\n")
        return EXIT_FAILED
    if args.json:
        emit_json(result.to_dict())
    else:
        _print_result(result, target)
    return EXIT_OK if result.status == "ok" else EXIT_FAILED


def _native_ids(args: argparse.Namespace) -> None:
    """The reconciler's own job ids are whole numbers: checked once the profile is known."""
    try:
        if getattr(args, "ids", None):
            args.ids = [job_id_arg(v) for v in args.ids]
        if isinstance(getattr(args, "id", None), str):
            args.id = job_id_arg(args.id)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(str(exc)) from None


def _profile(settings: Settings, db: Database, name: str | None) -> Bound | None:
    try:
        return open_profile(settings, db, name)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None


def cmd_profiles(args: argparse.Namespace, settings: Settings, db: Database, target: Target) -> int:
    try:
        profiles = [select(settings, args.name)] if args.name else configured(settings)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    if args.action != "check":
        if args.json:
            emit_json({"profiles": [describe(p) for p in profiles]})
            return EXIT_OK
        for p in profiles:
            states = ", ".join(f"{k}={v}" for k, v in p.states.items())
            _out().print(escape(f"{p.name:<16} {p.kind:<14} {p.qualified}  ({p.source})  {states}"))
        return EXIT_OK
    _require_schema(db, target)
    report, missing = [], 0
    for p in profiles:
        try:
            bound = bind_profile(db, p)
        except ProfileError as exc:
            raise UsageError(str(exc)) from None
        findings = [] if bound is None else explain(db, settings, bound)
        missing += sum(not f.served for f in findings)
        report.append((p, findings))
    if args.json:
        emit_json(
            {
                "profiles": [
                    {**describe(p), "statements": [f.to_dict() for f in fs]} for p, fs in report
                ],
                "missing_indexes": missing,
            }
        )
        return EXIT_FAILED if missing else EXIT_OK
    out = _out()
    for p, findings in report:
        out.print(escape(f"{p.name}: {p.qualified} matches the profile"))
        if p.kind == "native":
            out.print("  the reconciler's own schema: its migrations create every index it needs")
        for f in findings:
            if f.note:
                out.print(f"  {f.task:<12} nothing to run: {f.note}")
            elif f.served:
                out.print(f"  {f.task:<12} index-served")
            else:
                out.print(f"  {f.task:<12} NO INDEX: reads all of {', '.join(f.scans)}; add:")
                out.print(escape(f"      {f.index}"))
    return EXIT_FAILED if missing else EXIT_OK


def cmd_migrate(args: argparse.Namespace, settings: Settings, db: Database, target: Target) -> int:
    if args.check:
        missing = pending(db)
        if args.json:
            emit_json({"schema": db.schema, "pending": missing})
        else:
            _out().print(
                f"schema {db.schema!r}: "
                + (f"{len(missing)} pending: {', '.join(missing)}" if missing else "up to date")
            )
        return EXIT_FAILED if missing else EXIT_OK
    result = migrate(
        db, lock_timeout=settings.migrate_lock_timeout, deadline=settings.migrate_deadline
    )
    ledger = None
    if settings.events_partitioning != "none":
        ledger = partition_events(
            db,
            unit=settings.events_partitioning,
            ahead=settings.events_partitions_ahead,
            lock_timeout=settings.migrate_lock_timeout,
            deadline=settings.migrate_deadline,
        )
    if args.json:
        emit_json(
            {
                "schema": result.schema,
                "applied": list(result.applied),
                "version": result.current_version,
                "lock_retries": result.lock_retries,
                **(
                    {
                        "events_partitioned": ledger.converted,
                        "cutover": ledger.cutover.isoformat() if ledger.cutover else None,
                        "partitions_created": list(ledger.created),
                    }
                    if ledger is not None
                    else {}
                ),
            }
        )
        return EXIT_OK
    if result.applied:
        _out().print(
            f"schema {result.schema!r} on {target.describe()}: applied "
            f"{', '.join(result.applied)}; now at version {result.current_version}"
        )
    else:
        _out().print(
            f"schema {result.schema!r} on {target.describe()}: already up to date "
            f"at version {result.current_version}"
        )
    if ledger is not None and ledger.converted:
        assert ledger.cutover is not None
        _out().print(
            f"job_events is now partitioned by {settings.events_partitioning}: the old table is "
            f"partition job_events_history (events before {ledger.cutover.isoformat()}); "
            f"created {', '.join(ledger.created)}"
        )
    elif ledger is not None and ledger.created:
        _out().print(f"job_events partitions created ahead: {', '.join(ledger.created)}")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace, settings: Settings, db: Database, target: Target) -> int:
    _require_schema(db, target)
    snapshot = QueueCollector(db)
    if snapshot.snapshot()[1]:
        raise UsageError(f"database error on {target.describe()}: the metrics could not be read")
    registry = CollectorRegistry()
    registry.register(snapshot)
    sys.stdout.write(exposition(registry).decode())
    return EXIT_OK


def cmd_tasks(args: argparse.Namespace) -> int:
    if args.json:
        emit_json({"tasks": [{"name": t.name, "summary": t.summary} for t in TASKS.values()]})
        return EXIT_OK
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("task", style="bold")
    table.add_column("what it does")
    for task in TASKS.values():
        table.add_row(task.name, task.summary)
    _out().print(table)
    return EXIT_OK


def _load_schedule(settings: Settings) -> Schedule:
    try:
        return load_schedule(settings.schedule_file)
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None


def cmd_schedule(args: argparse.Namespace, settings: Settings) -> int:
    schedule = _load_schedule(settings)
    now = datetime.now(UTC)
    if args.json:
        upcoming = next_runs(schedule, now)
        emit_json(
            {
                "schedule_file": str(schedule.path),
                "tasks": [{**e.to_dict(), "next_run": upcoming[e.task]} for e in schedule.entries],
            }
        )
    else:
        render_schedule(schedule, now, _out())
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings, db: Database, target: Target) -> int:
    schedule = _load_schedule(settings)
    _require_schema(db, target)
    try:
        names = [p.name for p in configured(settings)]
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    now, statuses = collect_status(db, schedule, names)
    if args.json:
        emit_json({"now": now, "tasks": [s.to_dict() for s in statuses]})
    else:
        render_status(now, statuses, _out())
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return serve(settings, _load_schedule(settings))
    except (DaemonConfigError, ValueError, EmbeddedUnavailable) as exc:
        raise UsageError(str(exc)) from None


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return run_demo(settings, duration=args.duration, as_json=args.json, schema=args.schema)
    except (ValueError, EmbeddedUnavailable, DatabaseUnavailable) as exc:
        raise UsageError(str(exc)) from None


EXIT_UNKNOWN = 3  # `check` only: the monitoring-plugin convention for "could not tell"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reconciler`` and ``python -m reconciler``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if _is_check(args):
        return _check_main(args)
    try:
        return _main(args)
    except UsageError as exc:
        sys.stderr.write(f"reconciler: {exc}\n")
        return EXIT_USAGE
    except OpsError as exc:  # an operator's command refused, or was not confirmed
        sys.stderr.write(f"reconciler: {exc}\n")
        return exc.code
    except TaskBusy as exc:  # e.g. `jobs reset-stuck` while the daemon runs mark-stale
        sys.stderr.write(f"reconciler: {exc}; try again in a moment\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("reconciler: interrupted\n")
        return 130


def _is_check(argv: Sequence[str]) -> bool:
    commands = [a for a in argv if not a.startswith("-")]
    return bool(commands) and commands[0] == "check"


def _check_main(argv: list[str]) -> int:
    """``reconciler check`` for monitoring: every way it cannot judge the queue is UNKNOWN.

    A configuration error, an unreachable database or a bug in check itself must not read
    as "warning" (1) or "critical" (2): it exits 3 with one line saying why, on stdout
    where Nagios-style plugins are read (and as JSON with --json).
    """
    as_json = "--json" in argv
    try:
        code = _main(argv)
    except SystemExit as exc:  # argparse: its own message is on stderr already
        if exc.code in (0, None):
            return 0
        return _unknown("bad arguments (see the line above)", as_json)
    except (UsageError, OpsError, TaskBusy) as exc:
        return _unknown(str(exc), as_json)
    except KeyboardInterrupt:
        return _unknown("interrupted", as_json)
    except Exception as exc:  # a monitor must get an answer, not a traceback
        get_logger("reconciler.check").error("check.crashed", exc_info=True)
        return _unknown(f"internal error: {type(exc).__name__}: {first_line(exc)}", as_json)
    return code if code in (0, 1, 2) else EXIT_UNKNOWN


def _unknown(why: str, as_json: bool) -> int:
    if as_json:
        emit_json({"status": "unknown", "exit_code": EXIT_UNKNOWN, "error": why, "findings": []})
    else:
        sys.stdout.write(f"reconciler check: UNKNOWN: {why}\n")
    return EXIT_UNKNOWN


def _main(argv: Sequence[str]) -> int:
    for position, arg in enumerate(argv, start=1):
        # Bytes that are not UTF-8 reach Python as lone surrogates; no database takes them.
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"argument {position} ({arg.encode('utf-8', 'replace').decode()!r}) is not "
                "valid UTF-8; fix its encoding"
            ) from None
    args = build_parser().parse_args(argv)
    # One dispatch: every command's parser names its handler and what it needs first
    # (nothing, the settings, a database, or a database whose schema is current).
    if args.needs == "nothing":
        return int(args.handler(args))
    try:
        settings = load_settings()
    except (ValidationError, SettingsError) as exc:
        raise UsageError(describe_error(exc)) from None
    configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets())
    if args.needs == "settings":
        return int(args.handler(args, settings))
    try:
        db, target = open_database(settings)
    except (ValueError, EmbeddedUnavailable) as exc:
        raise UsageError(str(exc)) from None
    try:
        db.ping()
        if args.needs == "schema":  # the operator's commands (reconciler/ops/)
            _require_schema(db, target)
            # Retry policies are the reconciler's own, for every profile (by kind, or task name).
            # The dashboard picks its profile per request (?profile=NAME, reconciler/web/).
            shared = args.handler in PROFILE_FREE or args.handler is cmd_web
            profile = None if shared else _profile(settings, db, getattr(args, "profile", None))
            if profile is None:
                _native_ids(args)
                return int(args.handler(args, settings, db))
            foreign = FOREIGN_HANDLERS.get(args.handler)
            if foreign is None:
                command = " ".join(filter(None, (args.command, getattr(args, "ops_action", None))))
                raise UsageError(foreign_unsupported(command, profile))
            return int(foreign(args, settings, db, profile))
        return int(args.handler(args, settings, db, target))
    except DatabaseUnavailable as exc:
        raise UsageError(str(exc)) from None
    except MigrationBlocked as exc:  # not a mistake: locks held elsewhere; run it again later
        sys.stderr.write(f"reconciler: {exc}\n")
        return EXIT_FAILED
    except MigrationError as exc:
        raise UsageError(str(exc)) from None
    except OperationalError as exc:
        raise UsageError(f"database error on {target.describe()}: {first_line(exc.orig)}") from None
    finally:
        db.dispose()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
