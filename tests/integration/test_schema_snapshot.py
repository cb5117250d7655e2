"""sql/schema.sql is the schema that the migrations build: their catalogs are compared."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from reconciler.db import Database, quote_ident
from reconciler.sqlfiles import data_dir
from tests.conftest import connect

# Each query returns rows describing one kind of object of schema %(s)s; the
# schema's own name is replaced by a placeholder afterwards, so two schemas
# compare equal when they differ only in name.
CATALOG: dict[str, str] = {
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity, a.attgenerated,
               pg_get_expr(d.adbin, d.adrelid) AS default_expr,
               col_description(c.oid, a.attnum) AS comment
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE n.nspname = %(s)s AND c.relname NOT LIKE 'schema_migrations%%'
        ORDER BY c.relname, a.attnum""",
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.relacl::text,
               obj_description(c.oid, 'pg_class') AS comment
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(s)s AND c.relname NOT LIKE 'schema_migrations%%'
        ORDER BY c.relname""",
    "indexes": """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(s)s AND c.relname NOT LIKE 'schema_migrations%%'
        ORDER BY 1""",
    "constraints": """
        SELECT cl.relname, co.conname, co.contype, pg_get_constraintdef(co.oid),
               co.convalidated, co.condeferrable
        FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid
        JOIN pg_namespace n ON n.oid = co.connamespace
        WHERE n.nspname = %(s)s AND cl.relname <> 'schema_migrations'
        ORDER BY cl.relname, co.conname""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), l.lanname, p.prosrc, p.prosecdef,
               p.provolatile, p.proconfig, p.proacl::text,
               pg_get_userbyid(p.proowner) = current_user AS owned_by_me
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        JOIN pg_language l ON l.oid = p.prolang
        WHERE n.nspname = %(s)s
        ORDER BY p.proname, 2""",
    "triggers": """
        SELECT t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(s)s AND NOT t.tgisinternal
        ORDER BY 1""",
}
# The rows a schema starts with.
SEED_TABLES = ("transitions", "retry_policies")


def catalog(url: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every object of ``schema`` as comparable rows, its name replaced by ``<schema>``."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    quoted = quote_ident(schema)

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(quoted, "<schema>").replace(schema, "<schema>")
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    with psycopg.connect(url) as conn:
        for kind, query in CATALOG.items():
            rows = conn.execute(query, {"s": schema}).fetchall()
            found[kind] = [tuple(plain(v) for v in row) for row in rows]
        for table in SEED_TABLES:
            rows = conn.execute(
                sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(sql.Identifier(schema, table))
            ).fetchall()
            found[f"rows of {table}"] = [tuple(map(str, row)) for row in rows]
    return found


@pytest.fixture
def snapshot_schema(pg_url: str) -> Iterator[str]:
    """A schema built from sql/schema.sql alone, as the migration runner would run a file."""
    name = f"t_snap_{uuid.uuid4().hex[:10]}"
    body = (data_dir("sql") / "schema.sql").read_text(encoding="utf-8")
    with psycopg.connect(pg_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(
            "SELECT set_config('search_path', %s, true)", [f"{quote_ident(name)}, pg_temp"]
        )
        conn.execute(body)
    try:
        yield name
    finally:
        with psycopg.connect(pg_url) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def test_migrations_build_exactly_the_snapshot(
    pg_url: str, db: Database, snapshot_schema: str
) -> None:
    """Tables, columns, indexes, constraints, functions (bodies, security, settings, grants),
    triggers and seed rows of a migrated schema equal those of sql/schema.sql."""
    migrated = catalog(pg_url, db.schema)
    snapshot = catalog(pg_url, snapshot_schema)

    for kind in migrated:
        assert migrated[kind] == snapshot[kind], f"{kind} differ: migrate != sql/schema.sql"
    assert migrated["functions"], "the comparison saw no function at all"
    assert migrated["indexes"], "the comparison saw no index at all"


def test_the_comparison_sees_a_difference(pg_url: str, db: Database, snapshot_schema: str) -> None:
    """A function body, a grant or an index changed in one schema makes the catalogs differ."""
    before = catalog(pg_url, db.schema)
    other = connect(pg_url, db.schema)
    try:
        with other.transaction() as conn:
            conn.exec_driver_sql("CREATE INDEX jobs_extra_idx ON jobs (kind)")
            conn.exec_driver_sql(
                "GRANT EXECUTE ON FUNCTION backoff(integer, interval, interval,"
                " double precision, double precision, bigint) TO PUBLIC"
            )
    finally:
        other.dispose()
    after = catalog(pg_url, db.schema)

    assert before["indexes"] != after["indexes"]
    assert before["functions"] != after["functions"]
    assert before == catalog(pg_url, snapshot_schema)
