"""A ``table`` profile read from a TOML file, checked strictly.

The file (see deploy/profiles/ for three real ones)::

    name = "ai-course-jobs"          # optional: the file's stem
    table = "ai_course_jobs"
    schema = "public"                # optional

    [columns]                        # id and status required; the rest where they exist
    id = "id"
    status = "status"
    heartbeat = "last_heartbeat"
    attempts = "retry_count"
    max_attempts = "max_retries"
    finished_at = "completed_at"

    [states]                         # queued, running required; a missing state: absent
    queued = "pending"
    running = "processing"
    ...

    [retry]                          # optional
    max_attempts = 3                 # when no max_attempts column
    attempts_counted = "failure"     # or "claim" (the default)

    [heartbeat_table]                # optional: heartbeats on a workers table
    table = "workers"
    id = "id"
    heartbeat = "last_seen"

Every mistake (an unknown key, a missing one, a wrong type, two states with
one value) is a :class:`ProfileError` whose one line names the file and key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from reconciler.profiles.model import COLUMN_ROLES, LIFECYCLE, Profile, ProfileError, WorkerTable

__all__ = ["NAME_PATTERN", "load_table_profile"]

# Profile names appear in runs, leases, metrics labels and --profile: keep them plain.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_TOP = ("name", "table", "schema", "columns", "states", "retry", "heartbeat_table")
_RETRY = ("max_attempts", "attempts_counted")
_WORKERS = ("table", "schema", "id", "heartbeat")


def load_table_profile(path: Path) -> Profile:
    """The profile in ``path``; :class:`ProfileError` (one line) when it is wrong."""
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{where}: no such profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{where}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{where}: not valid TOML: {exc}") from None
    _known(data, _TOP, where, "")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ProfileError(
            f"{where}: name {name!r} must be lower-case letters, digits, '.', '_' or '-'"
            ' (at most 63), e.g. name = "ai-course-jobs"'
        )
    if name in ("native", "procrastinate"):
        raise ProfileError(f"{where}: name {name!r} is a built-in profile's; choose another")
    table = _identifier(data, "table", where, "")
    schema = _identifier(data, "schema", where, "", default="public")
    columns = _table(data, "columns", where)
    _known(columns, ("id", "status", *COLUMN_ROLES), where, "columns.")
    names = {role: _identifier(columns, role, where, "columns.") for role in columns}
    for required in ("id", "status", "attempts"):
        if required not in names:
            raise ProfileError(
                f"{where}: columns.{required} is missing; name the table's column"
                + (
                    " (without a count of attempts a failing job would be retried forever)"
                    if required == "attempts"
                    else ""
                )
            )
    states = _table(data, "states", where)
    _known(states, LIFECYCLE, where, "states.")
    values: dict[str, str] = {}
    for state, value in states.items():
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ProfileError(
                f"{where}: states.{state} must be the status column's value, a non-empty string"
            )
        if value in values.values():
            other = next(s for s, v in values.items() if v == value)
            raise ProfileError(
                f"{where}: states.{state} and states.{other} are both {value!r};"
                " each state needs its own value"
            )
        values[state] = value
    for required in ("queued", "running"):
        if required not in values:
            raise ProfileError(f"{where}: states.{required} is missing; every queue has one")
    retry = data.get("retry", {})
    if not isinstance(retry, dict):
        raise ProfileError(f"{where}: retry must be a table ([retry])")
    _known(retry, _RETRY, where, "retry.")
    max_attempts = retry.get("max_attempts")
    if max_attempts is not None and (
        not isinstance(max_attempts, int)
        or isinstance(max_attempts, bool)
        or not 1 <= max_attempts <= 1000
    ):
        raise ProfileError(f"{where}: retry.max_attempts must be a whole number from 1 to 1000")
    counted = retry.get("attempts_counted", "claim")
    if counted not in ("claim", "failure"):
        raise ProfileError(
            f'{where}: retry.attempts_counted must be "claim" (the worker counts an attempt'
            ' when it takes the job) or "failure" (when it fails it)'
        )
    workers = data.get("heartbeat_table")
    worker_table = None
    if workers is not None:
        if not isinstance(workers, dict):
            raise ProfileError(f"{where}: heartbeat_table must be a table ([heartbeat_table])")
        _known(workers, _WORKERS, where, "heartbeat_table.")
        worker_table = WorkerTable(
            schema=_identifier(workers, "schema", where, "heartbeat_table.", default=schema),
            table=_identifier(workers, "table", where, "heartbeat_table."),
            id=_identifier(workers, "id", where, "heartbeat_table."),
            heartbeat=_identifier(workers, "heartbeat", where, "heartbeat_table."),
        )
        if "worker" not in names:
            raise ProfileError(
                f"{where}: heartbeat_table needs columns.worker, the job's column that holds"
                " the worker's id"
            )
    if "heartbeat" not in names and "started_at" not in names and worker_table is None:
        raise ProfileError(
            f"{where}: no sign of life to judge a running job by: name columns.heartbeat,"
            " columns.started_at or a [heartbeat_table]"
        )
    return Profile(
        name=name,
        kind="table",
        schema=schema,
        table=table,
        id=names.pop("id"),
        status=names.pop("status"),
        states=values,
        columns=names,
        max_attempts=max_attempts,
        attempts_counted=counted,
        worker_table=worker_table,
        source=where,
    )


def _known(data: dict[str, Any], allowed: tuple[str, ...], where: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ProfileError(f"{where}: unknown key {prefix}{key}; known: {', '.join(allowed)}")


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: [{key}] is missing; see deploy/profiles/ for examples")
    return value


def _identifier(
    data: dict[str, Any], key: str, where: str, prefix: str, default: str | None = None
) -> str:
    value = data.get(key, default)
    if value is None:
        raise ProfileError(f"{where}: {prefix}{key} is missing")
    # Any name PostgreSQL allows is fine (it is always quoted); NUL and empty are not names.
    if not isinstance(value, str) or not value or "\x00" in value or len(value.encode()) > 63:
        raise ProfileError(
            f"{where}: {prefix}{key} must be a table or column name (1 to 63 bytes, no NUL)"
        )
    return value
