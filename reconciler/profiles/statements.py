"""Fills the ``{{markers}}`` of a profile's SQL (sql/profiles/*.sql).

Names become quoted identifiers and status values quoted literals here, and
nowhere else: nothing a profile says reaches SQL any other way. Both are
also escaped for SQLAlchemy's ``text()``, where a colon followed by a word
would read as a bind parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from reconciler.profiles.live import Bound
from reconciler.profiles.model import Profile
from reconciler.sqlfiles import query

__all__ = ["fill", "for_text", "ident", "literal", "markers", "render"]

_MARKER = re.compile(r"\{\{([a-z_]+)\}\}")


def for_text(sql: str) -> str:
    # text() reads ":word" as a bind unless the colon is escaped; "::" casts are left alone.
    return re.sub(r"(?<!:):(?!:)", r"\\:", sql)


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier, safe inside ``text()``."""
    if "\x00" in name or not name:
        raise ValueError(f"{name!r} is not an identifier")
    return for_text('"' + name.replace('"', '""') + '"')


def literal(value: str) -> str:
    """``value`` as a quoted string literal (standard_conforming_strings), safe in ``text()``."""
    if "\x00" in value:
        raise ValueError(f"{value!r} cannot be a status value")
    return for_text("'" + value.replace("'", "''") + "'")


def _col(profile: Profile, role: str, alias: str = "j") -> str | None:
    name = profile.column(role)
    return None if name is None else f"{alias}.{ident(name)}"


def markers(bound: Bound) -> dict[str, str]:
    """Every marker's SQL for ``bound``'s profile."""
    p = bound.profile
    states = {state: literal(value) for state, value in p.states.items()}
    now = "CAST(:now AS timestamptz)"
    attempts = _col(p, "attempts") or "0"
    used = f"({attempts} + 1)" if p.attempts_counted == "failure" else attempts
    kind = _col(p, "kind") or "NULL::text"
    if _col(p, "max_attempts"):
        max_attempts = f"coalesce({_col(p, 'max_attempts')}, 1)"
    elif p.max_attempts is not None:
        max_attempts = str(int(p.max_attempts))
    else:
        max_attempts = (
            f"coalesce((SELECT rp.max_attempts FROM policy_for({kind}::text,"
            " CAST(2 AS smallint)) rp), 1)"
        )
    heartbeat, started = _col(p, "heartbeat"), _col(p, "started_at")
    if heartbeat and started:
        last_seen = f"coalesce({heartbeat}, {started})"
    else:
        last_seen = heartbeat or started or "NULL::timestamptz"
    queued = states["queued"]
    left_running = []
    if _col(p, "worker"):
        left_running.append(f"{ident(p.columns['worker'])} = NULL")
    if _col(p, "finished_at"):
        left_running.append(
            f"{ident(p.columns['finished_at'])} = CASE WHEN d.to_status = {queued}"
            f" THEN NULL ELSE {now} END"
        )
    if _col(p, "run_at"):
        left_running.append(
            f"{ident(p.columns['run_at'])} = CASE WHEN d.to_status = {queued}"
            f" THEN {now} ELSE j.{ident(p.columns['run_at'])} END"
        )
    if p.attempts_counted == "failure" and _col(p, "attempts"):
        left_running.append(f"{ident(p.columns['attempts'])} = {attempts} + 1")
    requeued = []
    if _col(p, "worker"):
        requeued.append(f"{ident(p.columns['worker'])} = NULL")
    if _col(p, "finished_at"):
        requeued.append(f"{ident(p.columns['finished_at'])} = NULL")
    if _col(p, "run_at"):
        requeued.append(f"{ident(p.columns['run_at'])} = {now}")
    dead = []
    if _col(p, "finished_at"):
        dead.append(
            f"{ident(p.columns['finished_at'])} = coalesce(j.{ident(p.columns['finished_at'])},"
            f" {now})"
        )
    retryable = [states[s] for s in ("failed", "stale") if s in states]
    exhausted = states.get(p.exhausted_state) or states.get("failed") or queued
    found = {
        "table": f"{ident(p.schema)}.{ident(p.table)}",
        "id": ident(p.id),
        "status": ident(p.status),
        "status_type": for_text(bound.status_type),
        "last_seen": last_seen,
        "worker": _col(p, "worker") or "NULL::text",
        "attempts": attempts,
        "attempts_used": used,
        "max_attempts": max_attempts,
        "kind": kind,
        "queue": _col(p, "queue") or "NULL::text",
        "finished_at": _col(p, "finished_at") or "NULL::timestamptz",
        "has_stale": "true" if "stale" in states else "false",
        "exhausted": exhausted,
        "retryable": ", ".join(retryable) or "NULL",
        "set_left_running": "".join(f", {s}" for s in left_running),
        "set_requeued": "".join(f", {s}" for s in requeued),
        "set_dead": "".join(f", {s}" for s in dead),
    }
    for state in ("queued", "running", "stale", "dead", "failed", "succeeded", "cancelled"):
        found[state] = states.get(state, "NULL")
    if p.worker_table is not None:
        w = p.worker_table
        found["workers"] = f"{ident(w.schema)}.{ident(w.table)}"
        found["worker_id"] = ident(w.id)
        found["worker_heartbeat"] = ident(w.heartbeat)
        found["worker_column"] = ident(p.columns["worker"])
    return found


def fill(sql: str, values: Mapping[str, str]) -> str:
    """``sql`` with every marker replaced; a KeyError names a marker with no value."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for the marker {{{{{name}}}}}")
        return values[name]

    # Twice: a value may itself hold markers (timeout_s holds {{kind}}).
    return _MARKER.sub(one, _MARKER.sub(one, sql))


def render(bound: Bound, file: str, name: str) -> str:
    """The statement ``name`` of ``sql/profiles/<file>.sql`` for ``bound``'s profile."""
    values = markers(bound)
    values["timeout_s"] = query("profiles/table", "timeout_s")
    return fill(query(f"profiles/{file}", name), values)
