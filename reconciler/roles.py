"""``python -m reconciler.roles``: print the least-privilege role setup for a schema.

The SQL is ``sql/roles.sql``; this fills in the schema and role names. No name
is ever pasted into the script as is: each becomes an identifier or a string
literal quoted by psycopg (``sql.Identifier``/``sql.Literal``), statements
with names run inside ``DO`` blocks through ``EXECUTE`` of such literals, and
the blocks' dollar-quote tag is chosen so that it occurs in no name. So any
name PostgreSQL can hold is safe, ``$roles$`` and quotes included. A name it
cannot hold (empty, a NUL, longer than 63 bytes, which PostgreSQL would
silently cut) is refused with one line, exit 2. The output is for a superuser
to run, e.g. with psql.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence

from psycopg import sql

from reconciler.sqlfiles import query

__all__ = ["DEFAULT_ROLES", "RoleNameError", "main", "render"]

DEFAULT_ROLES = {
    "owner": "reconciler_owner",
    "daemon": "reconciler_daemon",
    "worker": "reconciler_worker",
    "readonly": "reconciler_readonly",
}
_MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names without a word


class RoleNameError(ValueError):
    """A schema or role name PostgreSQL cannot hold as given; the message says why."""


def _check(what: str, name: str) -> None:
    if not name:
        raise RoleNameError(f"the {what} name is empty")
    if "\x00" in name:
        raise RoleNameError(f"the {what} name {name!r} contains a NUL character")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > _MAX_NAME_BYTES:
        raise RoleNameError(
            f"the {what} name {name!r} is {size} bytes; PostgreSQL keeps only the first "
            f"{_MAX_NAME_BYTES} and would silently use another name"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise RoleNameError(f"the {what} name {name!r} is not valid UTF-8") from None


def _statements(section: str) -> list[str]:
    """The statements of a section of sql/roles.sql, comments dropped."""
    body = "\n".join(
        line for line in query("roles", section).splitlines() if not line.lstrip().startswith("--")
    )
    return [s.strip() for s in body.split(";") if s.strip()]


def _tag(values: Sequence[str]) -> str:
    """A dollar-quote tag that occurs in none of ``values``: ``$roles$``, else ``$roles_1$``..."""
    for n in itertools.count():
        tag = "$roles$" if n == 0 else f"$roles_{n}$"
        if not any(tag in v for v in values):
            return tag
    raise AssertionError("unreachable")  # pragma: no cover


def render(
    schema: str,
    *,
    owner: str = DEFAULT_ROLES["owner"],
    daemon: str = DEFAULT_ROLES["daemon"],
    worker: str = DEFAULT_ROLES["worker"],
    readonly: str = DEFAULT_ROLES["readonly"],
) -> str:
    """sql/roles.sql for ``schema`` and these role names, ready to run."""
    names = {"schema": schema, "owner": owner, "daemon": daemon, "worker": worker}
    names["readonly"] = readonly
    for what, name in names.items():
        _check(what, name)
        if what != "schema" and (name.startswith("pg_") or name.lower() in ("public", "none")):
            raise RoleNameError(f"the {what} role name {name!r} is reserved by PostgreSQL")
    roles = [names[r] for r in ("owner", "daemon", "worker", "readonly")]
    if len(set(roles)) < len(roles):
        # One role doing two jobs would, say, give every worker the daemon's grants.
        raise RoleNameError(f"the four roles need four different names, not {roles}")
    values: dict[str, sql.Composable] = {}
    for key, name in names.items():
        values[key] = sql.Identifier(name)
        values[f"{key}_name"] = sql.Literal(name)

    def literals(section: str) -> sql.Composable:
        statements = [
            sql.SQL(statement).format(**values).as_string(None)
            for statement in _statements(section)
        ]
        return sql.SQL("ARRAY[{}]::text[]").format(
            sql.SQL(", ").join(sql.Literal(s) for s in statements)
        )

    values["grants"] = literals("grants")
    values["maintain"] = literals("maintain")
    values["partitions"] = literals("partitions")
    rendered = [v.as_string(None) for v in values.values()]
    values["tag"] = sql.SQL(_tag(rendered))
    parts = [
        sql.SQL(query("roles", section)).format(**values).as_string(None)
        for section in ("roles", "owner", "apply")
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.roles",
        description="Print the least-privilege roles (owner, daemon, worker, read-only) "
        "for a schema.",
    )
    parser.add_argument("--schema", default="reconciler")
    for role, default in DEFAULT_ROLES.items():
        parser.add_argument(f"--{role}", default=default, help=f"default: {default}")
    args = parser.parse_args(argv)
    try:
        script = render(
            args.schema,
            owner=args.owner,
            daemon=args.daemon,
            worker=args.worker,
            readonly=args.readonly,
        )
    except RoleNameError as exc:
        sys.stderr.write(f"reconciler.roles: {exc}; choose another name\n")
        return 2
    sys.stdout.write(script)
    return 0


if __name__ == "__main__":
    sys.exit(main())
