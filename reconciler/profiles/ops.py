"""The operator's commands on a profile's table: what the runbooks do by hand to such tables.

``stats``, ``jobs list/show/requeue/retry-failed/cancel/reset-stuck``,
``errors``, ``purge``, ``check`` and ``workers`` (where the table has a
worker column). The CLI's one dispatch (reconciler/cli.py) sends a command
here when ``--profile`` (or the only configured profile) is not ``native``;
:data:`HANDLERS` maps each native command's function to its counterpart, and
a command with none (``enqueue``, ``dead-letter export``, ...) is refused
with one line saying why (exit 2).

Statuses are named as everywhere else in the reconciler (queued, running,
failed, stale, dead, succeeded, cancelled) and mapped to the table's own
values. Changes go through :func:`reconciler.ops.changes.apply`: the same
preview, confirmation, batches, ``runs`` row and ``--dry-run`` as on native
jobs, each row written to the ledger by the statement that changes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from reconciler.db import Database
from reconciler.heartbeat import HeartbeatRule
from reconciler.ops import check, errors, jobs, policies, purge, stats, workers
from reconciler.ops.changes import Change, apply
from reconciler.ops.confirm import OpsError
from reconciler.ops.output import emit_json, emit_json_lines
from reconciler.ops.report import report_change
from reconciler.ops.table_health import table_health
from reconciler.profiles.live import Bound
from reconciler.profiles.statements import fill, ident, markers
from reconciler.profiles.tasks import queue_tables, search_path
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query

__all__ = ["HANDLERS", "PROFILE_FREE", "Handler", "unsupported"]

Handler = Callable[[argparse.Namespace, Settings, Database, Bound], int]


def _sql(bound: Bound, name: str) -> str:
    p = bound.profile
    values = markers(bound)
    values["timeout_s"] = query("profiles/table", "timeout_s")
    values["filter"] = query("profiles/ops", "filter")
    created = values.get("created_at_col")
    col = {
        role: f"j.{ident(p.columns[role])}" if role in p.columns else None
        for role in ("created_at", "run_at", "error", "tenant")
    }
    created = col["created_at"]
    values["created_at"] = created or "NULL::timestamptz"
    values["error"] = col["error"] or "NULL::text"
    values["tenant"] = col["tenant"] or "NULL::text"
    since = col["run_at"] or created
    values["waiting_since"] = (
        f"least({since}, CAST(:now AS timestamptz))" if since else "NULL::timestamptz"
    )
    values["newest_first"] = (
        f"{created} DESC, j.{ident(p.id)}" if created else f"j.{ident(p.id)} DESC"
    )
    if p.worker_table is not None:
        values["silent"] = (
            f"NOT EXISTS (SELECT 1 FROM {values['workers']} w WHERE w.{values['worker_id']}"
            f" = j.{values['worker_column']} AND w.{values['worker_heartbeat']}"
            " >= CAST(:now AS timestamptz) - make_interval(secs => {{timeout_s}}))"
        )
    else:
        values["silent"] = (
            f"{values['last_seen']} < CAST(:now AS timestamptz)"
            " - make_interval(secs => {{timeout_s}})"
        )
    now = "CAST(:now AS timestamptz)"
    requeued = []
    if "worker" in p.columns:
        requeued.append(f"{ident(p.columns['worker'])} = NULL")
    if "finished_at" in p.columns:
        requeued.append(f"{ident(p.columns['finished_at'])} = NULL")
    if "run_at" in p.columns:
        requeued.append(f"{ident(p.columns['run_at'])} = CAST(:due AS timestamptz)")
    if "attempts" in p.columns:
        a = ident(p.columns["attempts"])
        requeued.append(f"{a} = CASE WHEN CAST(:keep_attempts AS boolean) THEN j.{a} ELSE 0 END")
    if "error" in p.columns:
        e = ident(p.columns["error"])
        requeued.append(f"{e} = CASE WHEN CAST(:keep_attempts AS boolean) THEN j.{e} ELSE NULL END")
    values["set_requeued_by_hand"] = "".join(f", {s}" for s in requeued)
    finished = []
    if "worker" in p.columns:
        finished.append(f"{ident(p.columns['worker'])} = NULL")
    if "finished_at" in p.columns:
        finished.append(f"{ident(p.columns['finished_at'])} = {now}")
    values["set_finished"] = "".join(f", {s}" for s in finished)
    return fill(fill(query("profiles/ops", name), values), values)


def _values(bound: Bound, states: Sequence[str]) -> list[str]:
    return [bound.profile.states[s] for s in states if s in bound.profile.states]


def _filter(args: argparse.Namespace, bound: Bound, *, statuses: bool = True) -> dict[str, Any]:
    """The command's filters as the statements' binds; refuse one the table cannot take.

    ``statuses=False``: a change's --status chooses what it moves (:func:`_statuses`)."""
    p = bound.profile
    flat = [s for group in getattr(args, "status", None) or [] for s in group] if statuses else []
    for state in flat:
        if state not in p.states:
            raise OpsError(f"--status {state}: {p.qualified} has no {state} state ({p.name})")
    binds: dict[str, Any] = {"f_statuses": _values(bound, flat) or None}
    for option, role, key in (
        ("queue", "queue", "f_queues"),
        ("kind", "kind", "f_kinds"),
        ("tenant", "tenant", "f_tenants"),
    ):
        given = [v for group in getattr(args, option, None) or [] for v in group]
        if given and role not in p.columns:
            raise OpsError(f"--{option}: {p.qualified} has no {role} column (profile {p.name})")
        binds[key] = given or None
    ids = [str(i) for i in getattr(args, "ids", None) or []]
    binds["f_ids"] = ids or None
    return binds


def _statuses(
    args: argparse.Namespace,
    bound: Bound,
    allowed: Sequence[str],
    default: Sequence[str],
    command: str,
) -> tuple[list[str], bool]:
    """The table's values of the states a change moves: --status (each one the command
    takes and the table has), else the command's default; and whether --status was given."""
    p = bound.profile
    given = [s for group in getattr(args, "status", None) or [] for s in group]
    for state in given:
        if state not in allowed:
            raise OpsError(f"{command} takes {', '.join(allowed)} jobs, not {state}")
        if state not in p.states:
            raise OpsError(f"--status {state}: {p.qualified} has no {state} state ({p.name})")
    wanted = _values(bound, given or default)
    if not wanted:
        raise OpsError(f"{command}: {p.qualified} has none of the states {', '.join(allowed)}")
    return wanted, bool(given)


def _require_scope(binds: dict[str, Any], given: bool, command: str) -> None:
    """A change needs job ids or a filter: never every job of a state by accident."""
    if not given and not any(v for k, v in binds.items() if k != "f_statuses"):
        raise OpsError(f"{command} needs job ids or a filter (--status, --kind, ...)")


def _check_ids(
    db: Database, bound: Bound, ids: list[str] | None, wanted: list[str], command: str
) -> None:
    """Refuse a named job that does not exist, or whose status the command does not take."""
    if not ids:
        return
    found = {
        row["id"]: row["status"]
        for row in _rows(db, bound, _sql(bound, "statuses_of"), {"ids": ids})
    }
    for job in ids:
        if job not in found:
            raise OpsError(f"no job with id {job} in {bound.profile.qualified}")
        if found[job] not in wanted:
            raise OpsError(
                f"{command}: job {job} is {found[job]}; it takes {', '.join(wanted)} jobs"
            )


def _rows(db: Database, bound: Bound, sql: str, binds: dict[str, Any]) -> list[dict[str, Any]]:
    with db.transaction(rollback=True) as conn:
        path = search_path(db, bound)
        if path is not None:
            conn.execute(text("SELECT set_config('search_path', :sp, true)"), {"sp": path})
        return [dict(r._mapping) for r in conn.execute(text(sql), binds)]


def _base(db: Database, bound: Bound) -> dict[str, Any]:
    return {"now": db.now(), "profile": bound.profile.name, "table_name": bound.profile.qualified}


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        emit_json_lines(rows)
        return
    for row in rows:
        _say("  ".join(f"{'' if row[c] is None else row[c]}" for c in columns))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


# --- reading ------------------------------------------------------------------------


def foreign_list(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    binds = {**_base(db, b), **_filter(args, b), "limit": args.limit or 50}
    rows = _rows(db, b, _sql(b, "list"), binds)
    _print_rows(rows, args.json, ("id", "status", "queue", "kind", "attempts", "created_at"))
    return 0


def foreign_show(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    binds = {**_base(db, b), "id": str(args.id)}
    found = _rows(db, b, _sql(b, "show"), binds)
    if not found:
        raise OpsError(f"no job {args.id} in {b.profile.qualified} (profile {b.profile.name})")
    history = _rows(db, b, query("profiles/ops", "history"), binds)
    job = {"profile": b.profile.name, "job": found[0]["row"], "history": history}
    if args.json:
        emit_json(job)
        return 0
    _say(json.dumps(found[0]["row"], indent=2, default=str, ensure_ascii=False))
    for event in history:
        _say(
            f"{event['at']}  {event['from_status']} -> {event['to_status']}  {event['actor']}"
            f"  {json.dumps(event['reason'], default=str)}"
        )
    return 0


def foreign_stats(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    rows = _rows(db, b, _sql(b, "stats"), _base(db, b))
    if args.json:
        emit_json({"profile": b.profile.name, "table": b.profile.qualified, "statuses": rows})
        return 0
    _say(f"{b.profile.name}: {b.profile.qualified}")
    for row in rows:
        oldest = f"  oldest {round(row['oldest_s'])}s" if row["oldest_s"] is not None else ""
        _say(f"  {row['status']:<14} {row['queue'] or '':<16} {row['jobs']:>8}{oldest}")
    return 0


def foreign_errors(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    if "error" not in b.profile.columns:
        raise OpsError(
            f"errors: {b.profile.qualified} has no error column (profile {b.profile.name})"
        )
    base = _base(db, b)
    binds = {
        **base,
        "f_statuses": _values(b, ("failed", "dead")),
        "since": base["now"] - args.since,
        "limit": args.limit or 50,
    }
    rows = _rows(db, b, _sql(b, "errors"), binds)
    _print_rows(rows, args.json, ("jobs", "kind", "error"))
    return 0


def foreign_workers(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    if "worker" not in b.profile.columns:
        raise OpsError(
            f"workers: {b.profile.qualified} has no worker column (profile {b.profile.name})"
        )
    name = "workers_by_table" if b.profile.worker_table else "workers"
    rows = _rows(db, b, _sql(b, name), _base(db, b))
    _print_rows(rows, args.json, ("worker", "running", "last_seen", "silent_s"))
    return 0


def foreign_check(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    binds = {**_base(db, b), **HeartbeatRule.from_settings(settings).binds()}
    row = _rows(db, b, _sql(b, "check"), binds)[0]
    findings = []
    level = 0
    if row["silent"]:
        findings.append(f"{row['silent']} running job(s) silent past the heartbeat timeout")
        level = max(level, 1)
    if row["queued"] >= settings.check_backlog_critical:
        findings.append(
            f"{row['queued']} jobs queued (critical at {settings.check_backlog_critical})"
        )
        level = 2
    elif row["queued"] >= settings.check_backlog_warning:
        findings.append(
            f"{row['queued']} jobs queued (warning at {settings.check_backlog_warning})"
        )
        level = max(level, 1)
    if row["oldest_queued_s"] > settings.check_backlog_age.total_seconds():
        findings.append(f"the oldest queued job has waited {round(row['oldest_queued_s'])}s")
        level = max(level, 1)
    if b.profile.has("dead"):
        if row["dead"] >= settings.check_dead_letter_critical:
            findings.append(f"{row['dead']} dead jobs")
            level = 2
        elif row["dead"] >= settings.check_dead_letter_warning:
            findings.append(f"{row['dead']} dead jobs")
            level = max(level, 1)
    with db.transaction() as conn:
        health = table_health(
            conn, b.profile.schema, queue_tables(b.profile), db.now(), check.health_rules(settings)
        )
    for name, health_level, _, _, message in health:
        if health_level != "ok":
            findings.append(f"{name}: {message}")
            level = max(level, check.LEVELS[health_level])
    status = ("ok", "warning", "critical")[level]
    if args.json:
        emit_json(
            {
                "status": status,
                "exit_code": level,
                "profile": b.profile.name,
                "findings": findings,
                "counts": {k: row[k] for k in ("silent", "queued", "dead")},
                "oldest_queued_s": float(row["oldest_queued_s"]),
            }
        )
    else:
        summary = "; ".join(findings) or f"{row['queued']} queued, {row['dead']} dead"
        _say(f"reconciler check: {status.upper()}: {b.profile.name}: {summary}")
    return level


# --- changing -----------------------------------------------------------------------


def _change(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    b: Bound,
    *,
    name: str,
    sql: str,
    verb: str,
    params: dict[str, Any],
) -> int:
    now = db.now()
    change = Change(
        name=name,
        verb=verb,
        sql=sql,
        params={
            **params,
            "profile": b.profile.name,
            "table_name": b.profile.qualified,
            "reason": getattr(args, "reason", None),
        },
        details={"profile": b.profile.name},
    )
    result = apply(
        db,
        settings,
        change.task(),
        verb=verb,
        now=now,
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
        details=change.details,
        profile=b,
    )
    return report_change(result, verb=verb, job_filter=None, as_json=args.json)


def foreign_requeue(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    p = b.profile
    command = "jobs " + args.ops_action
    if p.kind == "procrastinate":
        raise OpsError(
            f"{command} --profile {p.name}: Procrastinate retries its jobs itself; a failed"
            " job is retried with Procrastinate's own `procrastinate_retry_job`, not here"
        )
    allowed = ("failed", "stale", "dead", "cancelled")
    default = ("failed",) if args.ops_action == "retry-failed" else ("failed", "stale", "dead")
    wanted, given = _statuses(args, b, allowed, default, command)
    binds = _filter(args, b, statuses=False)
    if args.ops_action == "requeue":  # retry-failed takes every failed job by design
        _require_scope(binds, given, command)
    _check_ids(db, b, binds["f_ids"], wanted, command)
    now = db.now()
    due = args.at or (now + args.in_ if args.in_ else now)
    return _change(
        args,
        settings,
        db,
        b,
        name=command,
        sql=_sql(b, "requeue"),
        verb="requeue",
        params={
            **binds,
            "from_statuses": wanted,
            "due": due,
            "keep_attempts": bool(args.keep_attempts),
        },
    )


def foreign_cancel(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    p = b.profile
    if not p.has("cancelled") or p.kind == "procrastinate":
        raise OpsError(
            f"jobs cancel --profile {p.name}: "
            + (
                "cancel Procrastinate jobs with its own procrastinate_cancel_job"
                if p.kind == "procrastinate"
                else f"{p.qualified} has no cancelled state"
            )
        )
    allowed = ("queued", "running", "failed", "stale")
    wanted, given = _statuses(args, b, allowed, allowed, "jobs cancel")
    binds = _filter(args, b, statuses=False)
    _require_scope(binds, given, "jobs cancel")
    _check_ids(db, b, binds["f_ids"], wanted, "jobs cancel")
    return _change(
        args,
        settings,
        db,
        b,
        name="jobs cancel",
        sql=_sql(b, "cancel"),
        verb="cancel",
        params={**binds, "from_statuses": wanted},
    )


def _run_task_change(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    b: Bound,
    task: str,
    params: dict[str, Any],
    verb: str,
) -> int:
    result = apply(
        db,
        settings,
        task,
        verb=verb,
        now=db.now(),
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        params=params,
        batch_size=args.batch_size,
        profile=b,
    )
    return report_change(result, verb=verb, job_filter=None, as_json=args.json)


def foreign_reset_stuck(
    args: argparse.Namespace, settings: Settings, db: Database, b: Bound
) -> int:
    if not args.ids and args.older_than is None:
        raise OpsError("jobs reset-stuck: name job ids, or --older-than (e.g. 10m)")
    params: dict[str, Any] = {}
    if args.ids:
        params["ids"] = [str(i) for i in args.ids]
        params["timeout"] = args.older_than or timedelta(0)
    else:
        params["timeout"] = args.older_than
    return _run_task_change(args, settings, db, b, "mark-stale", params, "reset")


def foreign_purge(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    p = b.profile
    if p.kind == "table" and "finished_at" not in p.columns:
        raise OpsError(f"purge: {p.qualified} has no finished_at column to measure age by")
    finished = ("succeeded", "cancelled", "dead")
    default = [s for s in ("succeeded", "cancelled") if p.has(s)]
    wanted, _given = _statuses(args, b, finished, default, "purge")
    if "dead" in (s for group in args.status or [] for s in group) and not args.no_backup:
        raise OpsError(
            f"purge --status dead --profile {p.name}: a profile's table has no dead-letter"
            " export to back its jobs up first; add --no-backup to delete them anyway"
        )
    params = {"statuses": wanted, "older_than": args.older_than}
    return _run_task_change(args, settings, db, b, "purge", params, "delete")


HANDLERS: dict[Callable[..., int], Handler] = {
    jobs.cmd_list: foreign_list,
    jobs.cmd_show: foreign_show,
    jobs.cmd_requeue: foreign_requeue,
    jobs.cmd_retry_failed: foreign_requeue,
    jobs.cmd_cancel: foreign_cancel,
    jobs.cmd_reset_stuck: foreign_reset_stuck,
    stats.cmd_stats: foreign_stats,
    errors.cmd_errors: foreign_errors,
    workers.cmd_workers: foreign_workers,
    check.cmd_check: foreign_check,
    purge.cmd_purge: foreign_purge,
}


# Commands on the reconciler's own records, the same whatever the profile: retry
# policies apply to every profile's jobs by kind (a Procrastinate job's task name).
PROFILE_FREE = frozenset({policies.cmd_show, policies.cmd_set, policies.cmd_delete})


def unsupported(command: str, bound: Bound) -> str:
    return (
        f"{command} works on the reconciler's own jobs only, not on profile"
        f" {bound.profile.name} ({bound.profile.qualified}); on such a table the reconciler"
        " offers stats, jobs list/show/requeue/retry-failed/cancel/reset-stuck, errors,"
        " workers, purge and check"
    )
