"""The operator's commands on a profile's table: what the runbooks do by hand to such tables.

``stats``, ``jobs list/show/requeue/retry-failed/cancel/reset-stuck``,
``errors``, ``purge``, ``check`` and ``workers`` (where the table has a
worker column). Each command is a reader or a change builder (``list_jobs``,
``requeue_change``, ...) and a printer: the dashboard (reconciler/web/)
calls the same readers and builders. The CLI's one dispatch (reconciler/cli.py) sends a command
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
from datetime import datetime, timedelta
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
from reconciler.profiles.statements import fill, for_text, ident, markers
from reconciler.profiles.tasks import queue_tables, search_path
from reconciler.runner import default_actor
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from reconciler.tasks import Task, TaskResult

__all__ = [
    "HANDLERS",
    "PROFILE_FREE",
    "Handler",
    "apply_change",
    "cancel_change",
    "change_statuses",
    "check_counts",
    "error_groups",
    "filter_binds",
    "list_jobs",
    "requeue_change",
    "reset_stuck_task",
    "show_job",
    "stats_rows",
    "unsupported",
]

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
        f"{created} DESC, j.{ident(p.id)} DESC" if created else f"j.{ident(p.id)} DESC"
    )
    # Bound as text everywhere (one parameter, one type), then cast to the id's own type.
    key = f"CAST(CAST(:k_id AS text) AS {for_text(bound.id_type)})"
    values["after_key"] = (
        f"({created}, j.{ident(p.id)}) < (CAST(:k_at AS timestamptz), {key})"
        if created
        else f"j.{ident(p.id)} < {key}"
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


def filter_binds(
    bound: Bound,
    *,
    statuses: Sequence[str] = (),
    queues: Sequence[str] = (),
    kinds: Sequence[str] = (),
    tenants: Sequence[str] = (),
    ids: Sequence[str] = (),
) -> dict[str, Any]:
    """A filter (statuses in the reconciler's words) as the statements' binds; OpsError for
    one the table cannot take (a state it lacks, a column it has not)."""
    p = bound.profile
    for state in statuses:
        if state not in p.states:
            raise OpsError(f"--status {state}: {p.qualified} has no {state} state ({p.name})")
    binds: dict[str, Any] = {"f_statuses": _values(bound, statuses) or None}
    for option, role, key, given in (
        ("queue", "queue", "f_queues", queues),
        ("kind", "kind", "f_kinds", kinds),
        ("tenant", "tenant", "f_tenants", tenants),
    ):
        if given and role not in p.columns:
            raise OpsError(f"--{option}: {p.qualified} has no {role} column (profile {p.name})")
        binds[key] = list(given) or None
    binds["f_ids"] = [str(i) for i in ids] or None
    return binds


def _flat(args: argparse.Namespace, option: str) -> list[str]:
    return [v for group in getattr(args, option, None) or [] for v in group]


def _filter(args: argparse.Namespace, bound: Bound, *, statuses: bool = True) -> dict[str, Any]:
    """The command's filters as the statements' binds; refuse one the table cannot take.

    ``statuses=False``: a change's --status chooses what it moves (:func:`change_statuses`)."""
    return filter_binds(
        bound,
        statuses=_flat(args, "status") if statuses else (),
        queues=_flat(args, "queue"),
        kinds=_flat(args, "kind"),
        tenants=_flat(args, "tenant"),
        ids=[str(i) for i in getattr(args, "ids", None) or []],
    )


def change_statuses(
    bound: Bound,
    given: Sequence[str],
    allowed: Sequence[str],
    default: Sequence[str],
    command: str,
) -> list[str]:
    """The table's values of the states a change moves: ``given`` (each one the command
    takes and the table has), else the command's default."""
    p = bound.profile
    for state in given:
        if state not in allowed:
            raise OpsError(f"{command} takes {', '.join(allowed)} jobs, not {state}")
        if state not in p.states:
            raise OpsError(f"--status {state}: {p.qualified} has no {state} state ({p.name})")
    wanted = _values(bound, given or default)
    if not wanted:
        raise OpsError(f"{command}: {p.qualified} has none of the states {', '.join(allowed)}")
    return wanted


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


def list_jobs(
    db: Database,
    b: Bound,
    binds: dict[str, Any],
    *,
    limit: int,
    after: tuple[str, datetime | None] | None = None,
) -> list[dict[str, Any]]:
    """``jobs list``: the jobs ``binds`` (:func:`filter_binds`) match, newest first; with
    ``after`` (a row's id and created_at), the keyset page after that row."""
    key_id, key_at = after if after is not None else (None, None)
    keyset = {"k_id": key_id, "k_at": key_at}
    return _rows(db, b, _sql(b, "list"), {**_base(db, b), **binds, **keyset, "limit": limit})


def show_job(
    db: Database, b: Bound, job_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """``jobs show``: the job's row (None when there is none) and its ledger history."""
    binds = {**_base(db, b), "id": job_id}
    found = _rows(db, b, _sql(b, "show"), binds)
    if not found:
        return None
    return found[0]["row"], _rows(db, b, query("profiles/ops", "history"), binds)


def stats_rows(db: Database, b: Bound) -> list[dict[str, Any]]:
    """``stats``: jobs per status and queue, the oldest queued one's age."""
    return _rows(db, b, _sql(b, "stats"), _base(db, b))


def error_groups(
    db: Database, b: Bound, states: Sequence[str], *, since: timedelta, limit: int
) -> list[dict[str, Any]]:
    """``errors``: jobs of ``states`` (the reconciler's words) by error text and kind (a
    table without an error column: by kind), finished within ``since``."""
    base = _base(db, b)
    binds = {
        **base,
        "f_statuses": _values(b, states),
        "since": base["now"] - since,
        "limit": limit,
    }
    return _rows(db, b, _sql(b, "errors"), binds)


def check_counts(db: Database, settings: Settings, b: Bound) -> dict[str, Any]:
    """What ``check`` judges: silent running jobs, queued ones, the oldest wait, dead ones."""
    binds = {**_base(db, b), **HeartbeatRule.from_settings(settings).binds()}
    return _rows(db, b, _sql(b, "check"), binds)[0]


def foreign_list(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    rows = list_jobs(db, b, _filter(args, b), limit=args.limit or 50)
    _print_rows(rows, args.json, ("id", "status", "queue", "kind", "attempts", "created_at"))
    return 0


def foreign_show(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    shown = show_job(db, b, str(args.id))
    if shown is None:
        raise OpsError(f"no job {args.id} in {b.profile.qualified} (profile {b.profile.name})")
    row, history = shown
    job = {"profile": b.profile.name, "job": row, "history": history}
    if args.json:
        emit_json(job)
        return 0
    _say(json.dumps(row, indent=2, default=str, ensure_ascii=False))
    for event in history:
        _say(
            f"{event['at']}  {event['from_status']} -> {event['to_status']}  {event['actor']}"
            f"  {json.dumps(event['reason'], default=str)}"
        )
    return 0


def foreign_stats(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    rows = stats_rows(db, b)
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
    rows = error_groups(db, b, ("failed", "dead"), since=args.since, limit=args.limit or 50)
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
    row = check_counts(db, settings, b)
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


def _change(b: Bound, *, name: str, sql: str, verb: str, params: dict[str, Any]) -> Change:
    return Change(
        name=name,
        verb=verb,
        sql=sql,
        params={**params, "profile": b.profile.name, "table_name": b.profile.qualified},
        details={"profile": b.profile.name},
    )


def apply_change(
    db: Database,
    settings: Settings,
    b: Bound,
    change: Change | tuple[str, dict[str, Any]],
    *,
    actor: str,
    dry_run: bool,
    yes: bool,
    batch_size: int | None = None,
) -> TaskResult:
    """:func:`reconciler.ops.changes.apply` of a change on ``b``'s table, or of a registered
    task (name, params) run for it: previewed, confirmed, in batches, to the ledger."""
    if isinstance(change, Change):
        task: Task | str = change.task()
        verb, params, details = change.verb, None, change.details
    else:
        task, params = change
        verb, details = _TASK_VERBS[task], {"profile": b.profile.name}
    return apply(
        db,
        settings,
        task,
        verb=verb,
        now=db.now(),
        actor=actor,
        dry_run=dry_run,
        yes=yes,
        params=params,
        details=details,
        batch_size=batch_size,
        profile=b,
    )


_TASK_VERBS = {"mark-stale": "reset", "purge": "delete"}


def _apply_from_args(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    b: Bound,
    change: Change | tuple[str, dict[str, Any]],
) -> int:
    result = apply_change(
        db,
        settings,
        b,
        change,
        actor=args.actor or default_actor(),
        dry_run=args.dry_run,
        yes=args.yes,
        batch_size=args.batch_size,
    )
    verb = change.verb if isinstance(change, Change) else _TASK_VERBS[change[0]]
    return report_change(result, verb=verb, job_filter=None, as_json=args.json)


def requeue_change(
    db: Database,
    b: Bound,
    binds: dict[str, Any],
    *,
    command: str,
    given: Sequence[str],
    due: datetime,
    keep_attempts: bool,
    reason: str | None,
) -> Change:
    """``jobs requeue`` (or ``retry-failed``) of the jobs ``binds`` match in states ``given``
    (else failed, stale and dead; retry-failed: failed) back to queued, due at ``due``."""
    p = b.profile
    if p.kind == "procrastinate":
        raise OpsError(
            f"{command} --profile {p.name}: Procrastinate retries its jobs itself; a failed"
            " job is retried with Procrastinate's own `procrastinate_retry_job`, not here"
        )
    allowed = ("failed", "stale", "dead", "cancelled")
    default = ("failed",) if command == "jobs retry-failed" else ("failed", "stale", "dead")
    wanted = change_statuses(b, given, allowed, default, command)
    if command != "jobs retry-failed":  # retry-failed takes every failed job by design
        _require_scope(binds, bool(given), command)
    _check_ids(db, b, binds["f_ids"], wanted, command)
    return _change(
        b,
        name=command,
        sql=_sql(b, "requeue"),
        verb="requeue",
        params={
            **binds,
            "from_statuses": wanted,
            "due": due,
            "keep_attempts": keep_attempts,
            "reason": reason,
        },
    )


def cancel_change(
    db: Database, b: Bound, binds: dict[str, Any], *, given: Sequence[str], reason: str | None
) -> Change:
    """``jobs cancel``: the jobs ``binds`` match (queued, running, failed or stale; or the
    states ``given``) become cancelled."""
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
    wanted = change_statuses(b, given, allowed, allowed, "jobs cancel")
    _require_scope(binds, bool(given), "jobs cancel")
    _check_ids(db, b, binds["f_ids"], wanted, "jobs cancel")
    return _change(
        b,
        name="jobs cancel",
        sql=_sql(b, "cancel"),
        verb="cancel",
        params={**binds, "from_statuses": wanted, "reason": reason},
    )


def reset_stuck_task(
    ids: Sequence[str], older_than: timedelta | None
) -> tuple[str, dict[str, Any]]:
    """``jobs reset-stuck``: mark-stale for the named running jobs (silent ``older_than``,
    else at once: the operator judged them stuck), or for every one silent ``older_than``."""
    if not ids and older_than is None:
        raise OpsError("jobs reset-stuck: name job ids, or --older-than (e.g. 10m)")
    if ids:
        return "mark-stale", {"ids": [str(i) for i in ids], "timeout": older_than or timedelta(0)}
    return "mark-stale", {"timeout": older_than}


def foreign_requeue(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    now = db.now()
    change = requeue_change(
        db,
        b,
        _filter(args, b, statuses=False),
        command="jobs " + args.ops_action,
        given=_flat(args, "status"),
        due=args.at or (now + args.in_ if args.in_ else now),
        keep_attempts=bool(args.keep_attempts),
        reason=getattr(args, "reason", None),
    )
    return _apply_from_args(args, settings, db, b, change)


def foreign_cancel(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    change = cancel_change(
        db,
        b,
        _filter(args, b, statuses=False),
        given=_flat(args, "status"),
        reason=getattr(args, "reason", None),
    )
    return _apply_from_args(args, settings, db, b, change)


def foreign_reset_stuck(
    args: argparse.Namespace, settings: Settings, db: Database, b: Bound
) -> int:
    return _apply_from_args(args, settings, db, b, reset_stuck_task(args.ids, args.older_than))


def foreign_purge(args: argparse.Namespace, settings: Settings, db: Database, b: Bound) -> int:
    p = b.profile
    if p.kind == "table" and "finished_at" not in p.columns:
        raise OpsError(f"purge: {p.qualified} has no finished_at column to measure age by")
    finished = ("succeeded", "cancelled", "dead")
    default = [s for s in ("succeeded", "cancelled") if p.has(s)]
    wanted = change_statuses(b, _flat(args, "status"), finished, default, "purge")
    if "dead" in (s for group in args.status or [] for s in group) and not args.no_backup:
        raise OpsError(
            f"purge --status dead --profile {p.name}: a profile's table has no dead-letter"
            " export to back its jobs up first; add --no-backup to delete them anyway"
        )
    params = {"statuses": wanted, "older_than": args.older_than}
    return _apply_from_args(args, settings, db, b, ("purge", params))


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
