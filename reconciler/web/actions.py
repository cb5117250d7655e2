"""The dashboard's actions: the operator commands' own changes, previewed then applied.

Pause and resume call the ``pause`` and ``resume`` commands' own functions
(one statement with its ``queue_pause_events`` row). Each other action builds
the same change as its CLI command (``jobs requeue``,
``jobs cancel``, ``jobs reset-stuck``, ``dead-letter replay``) and runs it
through :func:`reconciler.ops.changes.apply`: the same preview, batches,
``runs`` row and ``job_events``, with the actor ``web:<user>``. A first POST
shows the preview's count; only the confirmed POST changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from reconciler.ops.changes import apply
from reconciler.ops.confirm import OpsError
from reconciler.ops.filter import JobFilter, check_ids
from reconciler.ops.jobs import cancel_change
from reconciler.ops.pause import ALL_QUEUES, pause, resume
from reconciler.ops.requeue import REPLAYABLE, requeue_change
from reconciler.ops.vocabulary import DEAD
from reconciler.sqlfiles import query
from reconciler.tasks import Task, TaskResult
from reconciler.web.data import Source

__all__ = ["ACTIONS", "ActionsUnavailable", "Outcome", "run_action"]

ACTIONS = {
    "requeue": "requeue job",
    "cancel": "cancel job",
    "reset-stuck": "reset stuck job",
    "replay": "replay dead jobs",
    "pause": "pause queue",
    "resume": "resume queue",
}


class ActionsUnavailable(Exception):
    """The dashboard's database role may not change jobs (e.g. the read-only role)."""


@dataclass(frozen=True)
class Outcome:
    """What an action did (or, previewed, would do)."""

    action: str
    target: str
    changed: int
    dry_run: bool
    run_id: int | None
    status: str
    unit: str = "job(s)"


def _job_id(form: Mapping[str, str]) -> int:
    raw = form.get("job", "").strip()
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise OpsError(f"job id {raw!r} is not a positive whole number")
    return int(raw)


def _replay_filter(form: Mapping[str, str]) -> tuple[JobFilter, str]:
    """Dead jobs by id, or every dead job of a kind (and tenant) as grouped on the page."""
    if form.get("job"):
        job_id = _job_id(form)
        return JobFilter(ids=(job_id,), statuses=DEAD), f"dead job {job_id}"
    kind = form.get("kind", "").strip()
    if not kind:
        raise OpsError("replay needs a job id or a kind")
    tenant = form.get("tenant", "").strip()
    target = f"every dead job of kind {kind!r}" + (f", tenant {tenant!r}" if tenant else "")
    return JobFilter(kinds=(kind,), tenants=(tenant,) if tenant else (), statuses=DEAD), target


def _task(
    source: Source, action: str, form: Mapping[str, str]
) -> tuple[Task | str, str, str, dict[str, Any] | None, Mapping[str, Any]]:
    """(task, verb, target, params, details) of ``action``, built as its command builds it."""
    db = source.db
    now = db.now()
    reason = form.get("reason", "").strip() or None
    if action == "requeue":
        job_id = _job_id(form)
        eligible: tuple[str, ...] = REPLAYABLE
        job_filter, name = JobFilter(ids=(job_id,)), "jobs requeue"
        target = f"job {job_id}"
    if action == "replay":
        (job_filter, target), name, eligible = _replay_filter(form), "dead-letter replay", DEAD
    if action in ("requeue", "replay"):
        # Due now, with a fresh retry budget: the commands' defaults.
        change = requeue_change(
            db,
            job_filter,
            name=name,
            eligible=eligible,
            now=now,
            run_at=now,
            keep_attempts=False,
            reason=reason,
        )
        return change.task(), change.verb, target, None, change.details
    if action == "cancel":
        job_id = _job_id(form)
        change = cancel_change(db, JobFilter(ids=(job_id,)), now=now, reason=reason)
        return change.task(), change.verb, f"job {job_id}", None, change.details
    if action == "reset-stuck":
        job_id = _job_id(form)
        check_ids(db, [job_id], allowed=("running",), verb="jobs reset-stuck")
        # jobs reset-stuck with ids: the operator has judged the job stuck (timeout 0).
        params = {"timeout": timedelta(0), "queues": None, "kinds": None, "tenants": None}
        return "mark-stale", "mark stale", f"job {job_id}", {**params, "ids": [job_id]}, {}
    raise OpsError(f"no action {action!r}; the actions are {', '.join(ACTIONS)}")


def run_action(
    source: Source, action: str, form: Mapping[str, str], *, actor: str, confirmed: bool
) -> Outcome:
    """Preview ``action`` (``confirmed`` False) or apply it; an OpsError says why not."""
    if not source.db.rows(query("web/actions", "may_change"))[0]["may_change"]:
        raise ActionsUnavailable(
            "actions are unavailable: the dashboard's database role may only read (it may not "
            "update jobs or write job_events and runs); run it as a role that may change jobs"
        )
    if action in ("pause", "resume"):
        return _pause_or_resume(source, action, form, actor=actor, confirmed=confirmed)
    task, verb, target, params, details = _task(source, action, form)
    result: TaskResult = apply(
        source.db,
        source.settings,
        task,
        verb=verb,
        now=source.db.now(),
        actor=actor,
        dry_run=not confirmed,
        yes=True,  # the confirmation page was the question
        params=params,
        details=details,
    )
    if result.status != "ok":
        raise OpsError(f"{ACTIONS[action]} {target}: {result.status}: {result.error or ''}")
    return Outcome(action, target, result.changed, result.dry_run, result.run_id, result.status)


def _pause_or_resume(
    source: Source, action: str, form: Mapping[str, str], *, actor: str, confirmed: bool
) -> Outcome:
    """``reconciler pause QUEUE`` / ``resume QUEUE``: the queues it would (or did) change."""
    queue = form.get("queue", "").strip()
    if not queue or queue == ALL_QUEUES:
        raise OpsError(f"{action} needs a queue's name")
    reason = form.get("reason", "").strip() or None
    if action == "pause":
        changed = pause(
            source.db, [queue], force=False, actor=actor, reason=reason, dry_run=not confirmed
        )
    else:
        changed = resume(source.db, [queue], actor=actor, reason=reason, dry_run=not confirmed)
    return Outcome(action, f"queue {queue}", len(changed), not confirmed, None, "ok", "queue(s)")
