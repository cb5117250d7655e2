"""A profile checked against the live database, before anything runs.

Every table and column a profile names must exist, with a type its role
allows (a heartbeat is a timestamp, attempts a whole number, ...), and every
status value it maps must be one the status column can hold (an enum's
labels). The first thing wrong is a :class:`ProfileError`: one line naming
the profile, the table or column, and what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from reconciler.db import Database
from reconciler.profiles.model import Profile, ProfileError
from reconciler.sqlfiles import query

__all__ = ["Bound", "bind"]

_TIMESTAMPS = ("timestamp with time zone", "timestamp without time zone")
_WHOLE = ("smallint", "integer", "bigint")
# What each role's column may be; a role not listed takes any type.
_TYPES: dict[str, tuple[str, ...]] = {
    "heartbeat": _TIMESTAMPS,
    "started_at": _TIMESTAMPS,
    "finished_at": _TIMESTAMPS,
    "run_at": _TIMESTAMPS,
    "created_at": _TIMESTAMPS,
    "attempts": _WHOLE,
    "max_attempts": _WHOLE,
    "priority": (*_WHOLE, "text", "character varying"),
}


@dataclass(frozen=True)
class Bound:
    """A profile that matches the live database, with what the catalog said about it."""

    profile: Profile
    status_type: str  # the status column's type, as format_type() spells it (quoted)
    column_types: dict[str, str]
    enum_labels: tuple[str, ...] | None  # the status enum's labels; None when not an enum
    id_type: str = "text"  # the id column's type, for a cast (format_type, or qualified)


def bind(db: Database, profile: Profile) -> Bound:
    """Check ``profile`` against ``db``'s catalog; :class:`ProfileError` on the first mismatch."""
    with db.engine.connect() as conn:
        columns = _columns(conn, profile.schema, profile.table)
        if columns is None:
            raise ProfileError(
                f"profile {profile.name}: table {profile.qualified} does not exist"
                " (or this role cannot see it); set table/schema in the profile"
            )
        named = {"id": profile.id, "status": profile.status, **profile.columns}
        for role, column in named.items():
            if column not in columns:
                raise ProfileError(
                    f"profile {profile.name}: {profile.qualified} has no column {column!r}"
                    f" (columns.{role}); columns there: {', '.join(sorted(columns))}"
                )
            allowed = _TYPES.get(role)
            if allowed is not None and columns[column][0] not in allowed:
                raise ProfileError(
                    f"profile {profile.name}: column {column!r} (columns.{role}) is"
                    f" {columns[column][0]}, it must be {' or '.join(allowed)}"
                )
        unique = conn.execute(
            text(query("profiles/catalog", "unique_column")),
            {"schema": profile.schema, "table": profile.table, "column": profile.id},
        ).scalar_one()
        if not unique:
            raise ProfileError(
                f"profile {profile.name}: {profile.qualified}.{profile.id} (columns.id) has no"
                " primary key or unique index of its own; name a column that identifies one row"
            )
        status_type, labels = columns[profile.status][1], None
        if columns[profile.status][0] == "USER-DEFINED":
            labels = tuple(
                conn.execute(
                    text(query("profiles/catalog", "enum_labels")),
                    {"schema": profile.schema, "table": profile.table, "column": profile.status},
                ).scalars()
            )
            for state, value in profile.states.items():
                if value not in labels:
                    raise ProfileError(
                        f"profile {profile.name}: states.{state} = {value!r} is not a value of"
                        f" {profile.status!r}'s type {status_type} ({', '.join(labels)})"
                    )
        if profile.worker_table is not None:
            w = profile.worker_table
            worker_columns = _columns(conn, w.schema, w.table)
            if worker_columns is None:
                raise ProfileError(
                    f"profile {profile.name}: heartbeat table {w.schema}.{w.table} does not exist"
                )
            for key, column in (("id", w.id), ("heartbeat", w.heartbeat)):
                if column not in worker_columns:
                    raise ProfileError(
                        f"profile {profile.name}: {w.schema}.{w.table} has no column {column!r}"
                        f" (heartbeat_table.{key})"
                    )
            if worker_columns[w.heartbeat][0] not in _TIMESTAMPS:
                raise ProfileError(
                    f"profile {profile.name}: {w.schema}.{w.table}.{w.heartbeat} is"
                    f" {worker_columns[w.heartbeat][0]}, it must be a timestamp"
                )
    return Bound(
        profile=profile,
        status_type=status_type,
        column_types={name: kind for name, (kind, _) in columns.items()},
        enum_labels=labels,
        id_type=columns[profile.id][1],
    )


def _columns(conn: object, schema: str, table: str) -> dict[str, tuple[str, str]] | None:
    """column -> (information_schema data_type, format_type); None when the table is missing."""
    rows = conn.execute(  # type: ignore[attr-defined]
        text(query("profiles/catalog", "columns")), {"schema": schema, "table": table}
    ).all()
    if not rows:
        return None
    return {row.name: (row.data_type, row.type_name) for row in rows}
