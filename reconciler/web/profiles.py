"""The dashboard on a profile's table: the selector, its pages and its actions.

``RECONCILER_PROFILES`` names the tables; ``?profile=NAME`` (a form's
``profile`` field for an action) picks one, else the first configured. Every
page reads through the readers of reconciler/profiles/ops.py and every
action runs its change builders through the same ``apply`` as
``reconciler jobs ... --profile NAME``: the same preview, batches, ``runs`` row
(for that profile) and ledger rows, with the actor ``web:<user>``. What a
table cannot support (a state it lacks, a column it has not, Procrastinate's
own retries) is said in one line on the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from reconciler.db import Database, quote_ident
from reconciler.ops.confirm import OpsError
from reconciler.profiles import bind_profile, configured
from reconciler.profiles.live import Bound
from reconciler.profiles.model import LIFECYCLE, Profile
from reconciler.profiles.ops import (
    apply_change,
    cancel_change,
    check_counts,
    error_groups,
    filter_binds,
    list_jobs,
    requeue_change,
    reset_stuck_task,
    show_job,
    stats_rows,
)
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from reconciler.web.actions import ACTIONS, ActionsUnavailable, Outcome

__all__ = [
    "Choice",
    "Outcome",
    "ProfileUnknown",
    "bound",
    "choose",
    "dead_letter",
    "job",
    "jobs",
    "overview",
    "run",
]

# A job id as a profile's table holds it (a uuid, a number, ...), as text in a form.
_MAX_ID = 200
# The dead letter of a profile's table groups dead jobs finished this far back (all of them).
_EVER = timedelta(days=36_500)


class ProfileUnknown(ValueError):
    """The address names a profile RECONCILER_PROFILES does not list."""


@dataclass(frozen=True)
class Choice:
    """The configured profiles and the one a request picked."""

    profiles: tuple[Profile, ...]
    current: Profile

    @property
    def selector(self) -> bool:
        """Shown when there is something to pick, or the one table is not the native one."""
        return len(self.profiles) > 1 or self.current.kind != "native"

    @property
    def native(self) -> bool:
        return self.current.kind == "native"

    def param(self) -> dict[str, str]:
        """What a link or form carries so that the page stays on this profile."""
        return {"profile": self.current.name} if self.selector else {}

    def href(self, path: str, **params: object) -> str:
        """``path`` with ``params`` (empty ones left out) and the profile."""
        kept = {k: str(v) for k, v in params.items() if v is not None and v != ""}
        query_string = urlencode({**kept, **self.param()})
        return f"{path}?{query_string}" if query_string else path


def choose(settings: Settings, name: str | None) -> Choice:
    """The profile ``name`` (None: the first configured); ProfileError for a bad
    RECONCILER_PROFILES, ProfileUnknown for a name it does not list."""
    profiles = tuple(configured(settings))
    if not name:
        return Choice(profiles, profiles[0])
    for profile in profiles:
        if profile.name == name:
            return Choice(profiles, profile)
    raise ProfileUnknown(
        f"profile {name!r} is not configured; RECONCILER_PROFILES lists"
        f" {', '.join(p.name for p in profiles)}"
    )


def bound(db: Database, choice: Choice) -> Bound:
    """The chosen (non-native) profile checked against the live catalog (ProfileError)."""
    found = bind_profile(db, choice.current)
    assert found is not None, "the native profile has no binding"
    return found


def _lacks(p: Profile, *roles: str) -> list[str]:
    return [role for role in roles if role not in p.columns]


def overview(db: Database, settings: Settings, b: Bound) -> dict[str, Any]:
    """The profile's ``stats`` (jobs per status and queue) and ``check`` counts, as tiles."""
    p = b.profile
    rows = stats_rows(db, b)
    tiles: list[dict[str, Any]] = []
    for state in LIFECYCLE:
        if p.has(state):
            value = p.states[state]
            count = sum(r["jobs"] for r in rows if r["status"] == value)
            tiles.append({"state": state, "value": value, "jobs": count})
    mapped = set(p.states.values())
    for value in sorted({r["status"] for r in rows} - mapped):
        count = sum(r["jobs"] for r in rows if r["status"] == value)
        tiles.append({"state": None, "value": value, "jobs": count})
    by_queue: dict[str, dict[str, int]] = {}
    for r in rows:
        by_queue.setdefault(r["queue"] or "", {})[r["status"]] = r["jobs"]
    notes = []
    if "queue" not in p.columns:
        notes.append(f"{p.qualified} has no queue column: jobs are counted by status only.")
    notes.append(
        "Throughput charts, latency targets and the task schedule are drawn from the"
        " reconciler's own jobs table, not from a profile's; this table's task runs are on"
        " the task runs page."
    )
    if p.kind == "procrastinate":
        notes.append(
            "Pausing a queue: Procrastinate's workers do not read the reconciler's pauses."
        )
    else:
        notes.append(
            f"Pausing a queue works on the reconciler's own jobs (claim() honours it);"
            f" the workers of {p.qualified} do not read it."
        )
    return {
        "rows": rows,
        "tiles": tiles,
        "values": sorted({r["status"] for r in rows}),
        "by_queue": sorted(by_queue.items()),
        "check": check_counts(db, settings, b),
        "now": db.now(),
        "notes": notes,
    }


def _names(params: Mapping[str, str], key: str) -> list[str]:
    raw = params.get(key, "")
    return list(dict.fromkeys(v.strip() for v in raw.split(",") if v.strip()))


def jobs(db: Database, b: Bound, params: Mapping[str, str], *, page: int) -> dict[str, Any]:
    """``jobs list`` with the filters the table has columns for; keyset pages of ``page``.
    OpsError (one line) for a filter the table cannot take."""
    p = b.profile
    unsupported = [k for k in ("priority", "age", "error") if params.get(k, "").strip()]
    if unsupported:
        raise OpsError(
            f"{', '.join(unsupported)}: filters on the reconciler's own jobs only, not on"
            f" {p.qualified}"
        )
    binds = filter_binds(
        b,
        statuses=_names(params, "status"),
        queues=_names(params, "queue"),
        kinds=_names(params, "kind"),
        tenants=_names(params, "tenant"),
    )
    after_id = params.get("after", "").strip() or None
    after_at: datetime | None = None
    raw_at = params.get("after_at", "").strip()
    if raw_at:
        try:
            after_at = datetime.fromisoformat(raw_at)
        except ValueError:
            raise OpsError(f"after_at {raw_at!r} is not a timestamp") from None
    if after_id is not None and "created_at" in p.columns and after_at is None:
        raise OpsError("after needs after_at (the next-page link carries both)")
    rows = list_jobs(db, b, binds, limit=page + 1, after=(after_id, after_at) if after_id else None)
    more = len(rows) > page
    rows = rows[:page]
    next_params: dict[str, str] | None = None
    if more:
        last = rows[-1]
        kept = {k: v for k, v in params.items() if k not in ("after", "after_at", "profile") and v}
        next_params = {**kept, "after": last["id"]}
        if last["created_at"] is not None:
            next_params["after_at"] = last["created_at"].isoformat()
    for row in rows:
        row["state"] = p.lifecycle_of(row["status"])
    return {
        "rows": rows,
        "next_params": next_params,
        "states": [s for s in LIFECYCLE if p.has(s)],
        "filters": [c for c in ("queue", "kind", "tenant") if c in p.columns],
        "lacks": _lacks(p, "queue", "kind", "tenant"),
    }


def job(db: Database, b: Bound, job_id: str) -> dict[str, Any] | None:
    """``jobs show``: the row, its state, its ledger history, and what may be done to it."""
    p = b.profile
    if not job_id or len(job_id) > _MAX_ID:
        return None
    shown = show_job(db, b, job_id)
    if shown is None:
        return None
    row, history = shown
    value = str(row.get(p.status))
    state = p.lifecycle_of(value)
    actions: list[tuple[str, str]] = []
    notes: list[str] = []
    if p.kind == "procrastinate":
        notes.append(
            "requeue, replay and cancel: Procrastinate retries and cancels its own jobs"
            " (procrastinate_retry_job, procrastinate_cancel_job); reset stuck runs the"
            " reconciler's mark-stale through them."
        )
    else:
        if state in ("failed", "stale", "dead"):
            actions.append(("requeue", "requeue"))
        if state == "dead":
            actions.append(("replay", "replay"))
        if state in ("queued", "running", "failed", "stale"):
            if p.has("cancelled"):
                actions.append(("cancel", "cancel"))
            else:
                notes.append(f"cancel: {p.qualified} has no cancelled state.")
    if state == "running":
        actions.append(("reset-stuck", "reset stuck"))
    payload = row.get(p.columns["payload"]) if "payload" in p.columns else None
    if "error" not in p.columns:
        notes.append(f"{p.qualified} has no error column: no last error to show.")
    return {
        "id": job_id,
        "row": row,
        "value": value,
        "state": state,
        "payload": payload,
        "error": row.get(p.columns["error"]) if "error" in p.columns else None,
        "history": history,
        "actions": actions,
        "notes": notes,
    }


def dead_letter(db: Database, b: Bound) -> dict[str, Any]:
    """Dead jobs grouped by error text and kind (``errors`` on the dead state), or why not."""
    p = b.profile
    notes = ["download: dead-letter export works on the reconciler's own jobs only."]
    if not p.has("dead"):
        return {
            "groups": None,
            "notes": [
                f"{p.qualified} has no dead state: jobs with no attempts left stay"
                f" {p.states.get('failed', 'failed')} (see the jobs page)."
            ],
        }
    if "error" not in p.columns:
        notes.insert(0, f"{p.qualified} has no error column: dead jobs grouped by kind only.")
    if p.kind == "procrastinate":
        notes.insert(0, "replay: Procrastinate's failed jobs are retried by Procrastinate.")
    elif "kind" not in p.columns:
        notes.insert(0, f"{p.qualified} has no kind column: replay dead jobs one by one.")
    groups = error_groups(db, b, ("dead",), since=_EVER, limit=100)
    return {
        "groups": groups,
        "notes": notes,
        "replay_groups": p.kind != "procrastinate" and "kind" in p.columns,
    }


def _job_id(form: Mapping[str, str]) -> str:
    raw = form.get("job", "").strip()
    if not raw or len(raw) > _MAX_ID:
        raise OpsError(f"job id {raw[:40]!r} is not a job id")
    return raw


def run(
    db: Database,
    settings: Settings,
    b: Bound,
    action: str,
    form: Mapping[str, str],
    *,
    actor: str,
    confirmed: bool,
) -> Outcome:
    """Preview ``action`` on the profile's table (``confirmed`` False) or apply it, as
    ``reconciler jobs ... --profile NAME`` does; an OpsError says why not."""
    p = b.profile
    if action in ("pause", "resume"):
        raise OpsError(
            f"{action}: pausing works on the reconciler's own queues (claim() honours it);"
            f" the workers of {p.qualified} do not read it"
        )
    table = f"{quote_ident(p.schema)}.{quote_ident(p.table)}"
    if not db.rows(query("web/actions", "may_change_table"), {"table_name": table})[0][
        "may_change"
    ]:
        raise ActionsUnavailable(
            f"actions are unavailable: the dashboard's database role may not update"
            f" {p.qualified} (or write the ledger and runs); run it as a role that may"
        )
    reason = form.get("reason", "").strip() or None
    change: Any
    if action in ("requeue", "replay", "cancel"):
        given: Sequence[str] = ("dead",) if action == "replay" else ()
        if action == "replay" and not form.get("job"):
            kind = form.get("kind", "").strip()
            if not kind:
                raise OpsError("replay needs a job id or a kind")
            binds = filter_binds(b, kinds=[kind])
            target = f"every dead job of kind {kind!r}"
        else:
            job_id = _job_id(form)
            binds = filter_binds(b, ids=[job_id])
            target = f"job {job_id}"
        if action == "cancel":
            change = cancel_change(db, b, binds, given=given, reason=reason)
        else:
            change = requeue_change(
                db,
                b,
                binds,
                command="jobs requeue",
                given=given,
                due=db.now(),
                keep_attempts=False,
                reason=reason,
            )
    elif action == "reset-stuck":
        job_id = _job_id(form)
        change, target = reset_stuck_task([job_id], None), f"job {job_id}"
    else:
        raise OpsError(f"no action {action!r}; the actions are {', '.join(ACTIONS)}")
    result = apply_change(db, settings, b, change, actor=actor, dry_run=not confirmed, yes=True)
    if result.status != "ok":
        raise OpsError(f"{ACTIONS[action]} {target}: {result.status}: {result.error or ''}")
    return Outcome(action, target, result.changed, result.dry_run, result.run_id, result.status)
