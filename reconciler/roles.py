"""``python -m reconciler.roles``: print the least-privilege role setup for a schema.

The SQL is ``sql/roles.sql``; this fills in the schema and role names, each
quoted by psycopg (``sql.Identifier``/``sql.Literal``), so any name is safe.
The output is for the schema's owner or a superuser to run, e.g. with psql.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from psycopg import sql

from reconciler.sqlfiles import data_dir

__all__ = ["DEFAULT_ROLES", "main", "render"]

DEFAULT_ROLES = {
    "daemon": "reconciler_daemon",
    "worker": "reconciler_worker",
    "readonly": "reconciler_readonly",
}


def render(
    schema: str,
    *,
    daemon: str = DEFAULT_ROLES["daemon"],
    worker: str = DEFAULT_ROLES["worker"],
    readonly: str = DEFAULT_ROLES["readonly"],
) -> str:
    """sql/roles.sql for ``schema`` and these role names, ready to run."""
    template = (data_dir("sql") / "roles.sql").read_text(encoding="utf-8")
    maintain = sql.SQL("GRANT MAINTAIN ON {}, {}, {} TO {}").format(
        sql.Identifier(schema, "jobs"),
        sql.Identifier(schema, "job_events"),
        sql.Identifier(schema, "runs"),
        sql.Identifier(daemon),
    )
    leases = sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
        sql.Identifier(schema, "task_leases"), sql.Identifier(daemon)
    )
    return (
        sql.SQL(template)
        .format(
            schema=sql.Identifier(schema),
            daemon=sql.Identifier(daemon),
            worker=sql.Identifier(worker),
            readonly=sql.Identifier(readonly),
            daemon_name=sql.Literal(daemon),
            worker_name=sql.Literal(worker),
            readonly_name=sql.Literal(readonly),
            maintain=sql.Literal(maintain.as_string(None)),
            leases=sql.Literal(leases.as_string(None)),
            leases_name=sql.Literal(sql.Identifier(schema, "task_leases").as_string(None)),
        )
        .as_string(None)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.roles",
        description="Print the least-privilege roles (daemon, worker, read-only) for a schema.",
    )
    parser.add_argument("--schema", default="reconciler")
    parser.add_argument("--daemon", default=DEFAULT_ROLES["daemon"])
    parser.add_argument("--worker", default=DEFAULT_ROLES["worker"])
    parser.add_argument("--readonly", default=DEFAULT_ROLES["readonly"])
    args = parser.parse_args(argv)
    sys.stdout.write(
        render(args.schema, daemon=args.daemon, worker=args.worker, readonly=args.readonly)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
