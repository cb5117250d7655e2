"""``reconciler migrate``: idempotent, safe run twice at once, any schema name, pinned paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import ValidationError
from sqlalchemy import text

from reconciler.db import Database, quote_ident
from reconciler.migrate import MigrationError, migrate, pending
from reconciler.runner import run_task
from reconciler.settings import Settings, describe_error
from reconciler.sqlfiles import migration_files
from reconciler.tasks import TASKS, vacuum_analyze
from tests.conftest import connect, make_settings
from tests.helpers import insert_job, job, wait_until

# Long enough for any healthy server and a cold Python start, short enough that a hang fails.
DEADLINE_S = 60.0


def _migrations() -> list[str]:
    """Every migration file's name, in order (read when asked, not at import)."""
    return [path.name for _, _, path in migration_files()]


def _latest() -> int:
    """The version the schema is at once every migration is applied."""
    return max(version for version, _, _ in migration_files())


def _catalog(db: Database) -> dict[str, Any]:
    """What a migration creates, with object ids: a re-created object would show up here."""
    with db.engine.connect() as conn:
        schema = {"s": db.schema}
        return {
            "migrations": conn.execute(
                text(f"SELECT * FROM {quote_ident(db.schema)}.schema_migrations ORDER BY version")
            ).all(),
            "relations": conn.execute(
                text(
                    "SELECT c.oid, c.relname, c.relkind FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = :s ORDER BY c.relname"
                ),
                schema,
            ).all(),
            "functions": conn.execute(
                text(
                    "SELECT p.oid, p.proname, p.prosrc FROM pg_proc p"
                    " JOIN pg_namespace n ON n.oid = p.pronamespace"
                    " WHERE n.nspname = :s ORDER BY p.proname"
                ),
                schema,
            ).all(),
            "rows": conn.execute(
                text(
                    f"SELECT (SELECT count(*) FROM {quote_ident(db.schema)}.transitions),"
                    f" (SELECT count(*) FROM {quote_ident(db.schema)}.retry_policies)"
                )
            ).one(),
        }


@pytest.fixture
def fresh(pg_url: str, schema: str) -> Iterator[Database]:
    """A connection to a schema that does not exist yet (the ``schema`` fixture drops it)."""
    database = connect(pg_url, schema)
    try:
        yield database
    finally:
        database.dispose()


def test_second_migrate_is_a_no_op(fresh: Database) -> None:
    """The first migrate applies every file; the second applies none and changes nothing."""
    first = migrate(fresh)
    before = _catalog(fresh)

    second = migrate(fresh)

    assert first.applied == tuple(_migrations())
    assert first.current_version == second.current_version == _latest()
    assert second.applied == ()
    assert _catalog(fresh) == before


def test_two_processes_migrating_one_fresh_schema_at_once(
    pg_url: str, schema: str, fresh: Database, tmp_path: Path
) -> None:
    """Two `reconciler migrate` processes started together both succeed; each file applies once."""
    # The test holds the migration lock (keyed as migrate.py documents) until both
    # processes wait on it, so they really do run at once, not one after the other.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(
        RECONCILER_DATABASE_URL=pg_url, RECONCILER_SCHEMA=schema, RECONCILER_LOG_FORMAT="json"
    )
    # pg_stat_activity is read once per transaction: watch from a connection of its own.
    with psycopg.connect(pg_url) as gate, psycopg.connect(pg_url, autocommit=True) as watch:
        gate.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            [f"reconciler.migrate:{schema}"],
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "reconciler", "migrate", "--json"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:

            def both_wait_on_the_lock() -> bool:
                for proc in procs:
                    if proc.poll() is not None:
                        pytest.fail(
                            f"migrate ended without waiting on the lock: {proc.communicate()}"
                        )
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                    [gate.info.backend_pid],
                ).fetchone()
                return waiting is not None and waiting[0] == 2

            wait_until(both_wait_on_the_lock, "both migrate processes wait on the lock")
            gate.commit()
            outputs = [proc.communicate(timeout=DEADLINE_S) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()

    assert [proc.returncode for proc in procs] == [0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    # Usually one applies everything; a migrator cancelled by a deadlock (behind a
    # CREATE INDEX CONCURRENTLY, see migrate()) retries, so they may share the files.
    applied = [name for r in reports for name in r["applied"]]
    assert sorted(applied) == _migrations()
    assert {r["version"] for r in reports} == {_latest()}
    with fresh.engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT version, name FROM {quote_ident(schema)}.schema_migrations")
        ).all()
    assert sorted(rows) == [(version, name) for version, name, _ in migration_files()]


@pytest.fixture(params=['we"ird; name', "50% off :tag $1 'q'"], ids=["quote", "placeholders"])
def odd_schema(pg_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A schema name with quotes, a space, a semicolon or placeholder look-alikes; dropped after."""
    name = f"{request.param} {uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_schema_name_with_quote_space_and_semicolon(pg_url: str, odd_schema: str) -> None:
    """A schema named like we"ird; name or 50% off :tag migrates, takes jobs, runs every task."""
    settings = make_settings(pg_url, odd_schema)
    db = connect(pg_url, odd_schema, settings)
    try:
        assert migrate(db).applied == tuple(_migrations())
        assert pending(db) == []
        assert migrate(db).applied == ()
        with psycopg.connect(pg_url) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [odd_schema]
            ).fetchone()
        assert found == (1,)
        with psycopg.connect(pg_url, autocommit=True) as worker:
            row = worker.execute(
                sql.SQL("SELECT {}(kind => 'x', run_at => now() - interval '1 s')").format(
                    sql.Identifier(odd_schema, "enqueue")
                )
            ).fetchone()
            assert row is not None
            claimed = worker.execute(
                sql.SQL("SELECT id FROM {}(worker => 'w1')").format(
                    sql.Identifier(odd_schema, "claim")
                )
            ).fetchall()
            assert claimed == [(row[0],)]
        with db.engine.connect() as conn:
            now = conn.execute(text("SELECT date_trunc('second', now())")).scalar_one()
        assert isinstance(now, datetime)
        long_ago = now - timedelta(days=365)
        silent = insert_job(db, status="running", attempt=1, heartbeat_at=long_ago)
        retry = insert_job(db, status="failed", attempt=1, finished_at=long_ago)
        spent = insert_job(db, status="failed", attempt=3, finished_at=long_ago)
        old = insert_job(db, status="succeeded", attempt=1, finished_at=long_ago)

        results = {name: run_task(db, settings, name, now=now) for name in TASKS}

        assert {name: r.status for name, r in results.items()} == dict.fromkeys(TASKS, "ok")
        assert results["mark-stale"].transitions == {"running->stale": 1}
        # the job made stale at `now` waits for its backoff; the failed one is long past it
        assert results["requeue"].transitions == {"failed->queued": 1}
        assert results["dead-letter"].transitions == {"failed->dead": 1}
        assert results["purge"].transitions == {"succeeded->purged": 1}
        assert set(results["vacuum-analyze"].details["tables"]) == set(vacuum_analyze.TABLES)
        assert [job(db, j)["status"] for j in (silent, retry, spent)] == [
            "stale",
            "queued",
            "dead",
        ]
        with db.transaction() as conn:
            assert conn.execute(text("SELECT id FROM jobs WHERE id = :id"), {"id": old}).all() == []
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == len(TASKS)
    finally:
        db.dispose()


@pytest.mark.parametrize("name", ["Reconciler", "jobQueue"])
def test_upper_case_schema_name_is_rejected_by_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECONCILER_SCHEMA with upper-case letters fails at start-up with one line naming it."""
    monkeypatch.setenv("RECONCILER_SCHEMA", name)

    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]

    message = describe_error(caught.value)
    assert "\n" not in message
    assert message.startswith(f"configuration error: RECONCILER_SCHEMA: {name!r} has upper-case")
    assert message.endswith(f"Use {name.lower()!r}")


def test_changed_migration_is_refused(db: Database) -> None:
    """A migration whose recorded checksum differs is refused, naming the file; nothing changes."""
    first = _migrations()[0]
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE schema_migrations SET checksum = 'edited' WHERE version = :v"),
            {"v": migration_files()[0][0]},
        )
    before = _catalog(db)

    with pytest.raises(MigrationError, match=rf"migration {first} changed after it was applied"):
        migrate(db)

    assert _catalog(db) == before


LOOK_ALIKES = ("jobs", "job_events", "transitions", "paused_queues")


def _look_alikes(conn: psycopg.Connection[Any], schema: str, where: str) -> None:
    """Tables named like ours, where the caller's session would find them first.

    Each is useless (``jobs`` has one column; the policies say 99 attempts), so
    a function that used one would fail or store the wrong value.
    """
    if where == "public":
        conn.execute("SET search_path TO public")
        return
    create = sql.SQL("CREATE TEMP TABLE {}" if where == "temp" else "CREATE TABLE {}")
    if where != "temp":
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(where)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where)))

    def table(name: str) -> sql.Composed:
        ident = sql.Identifier(name) if where == "temp" else sql.Identifier(where, name)
        return create.format(ident)

    for name in LOOK_ALIKES:
        conn.execute(sql.SQL("{} (nothing int)").format(table(name)))
    conn.execute(
        sql.SQL("{} AS SELECT * FROM {}").format(
            table("retry_policies"), sql.Identifier(schema, "retry_policies")
        )
    )
    conn.execute("UPDATE retry_policies SET max_attempts = 99")


@pytest.mark.parametrize("where", ["public", "decoy", "temp"])
def test_functions_ignore_the_callers_search_path(pg_url: str, db: Database, where: str) -> None:
    """With the caller's search_path elsewhere, or look-alike temp tables, the API still works."""
    decoy = f"decoy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as conn:
        try:
            _look_alikes(conn, db.schema, decoy if where == "decoy" else where)

            def fn(name: str) -> sql.Identifier:
                return sql.Identifier(db.schema, name)

            row = conn.execute(
                sql.SQL("SELECT {}(kind => 'x', run_at => now() - interval '1 s') AS id").format(
                    fn("enqueue")
                )
            ).fetchone()
            assert row is not None
            job_id = row["id"]
            (claimed,) = conn.execute(
                sql.SQL("SELECT id, attempt, claim_token FROM {}(worker => 'w1')").format(
                    fn("claim")
                )
            ).fetchall()
            assert (claimed["id"], claimed["attempt"]) == (job_id, 1)
            for name in ("heartbeat", "complete"):
                ok = conn.execute(
                    sql.SQL("SELECT {}(job_id => %s, claim_token => %s) AS ok").format(fn(name)),
                    [job_id, claimed["claim_token"]],
                ).fetchone()
                assert ok == {"ok": True}
            with pytest.raises(psycopg.errors.CheckViolation, match="illegal job transition"):
                conn.execute(
                    sql.SQL("UPDATE {} SET status = 'running', locked_by = 'w1'").format(fn("jobs"))
                )
            second = conn.execute(
                sql.SQL("SELECT {}(kind => 'y', priority => 0) AS id").format(fn("enqueue"))
            ).fetchone()
            assert second is not None
            (token,) = conn.execute(
                sql.SQL(
                    "SELECT claim_token FROM {}(worker => 'w2', queues => NULL, n => 5)"
                ).format(fn("claim"))
            ).fetchall()
            assert conn.execute(
                sql.SQL("SELECT {}(job_id => %s, claim_token => %s, error => %s)").format(
                    fn("fail")
                ),
                [second["id"], token["claim_token"], '{"e": 1}'],
            ).fetchone() == {"fail": True}
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(decoy)))

    assert job(db, job_id)["status"] == "succeeded"
    assert job(db, job_id)["max_attempts"] == 3
    assert job(db, second["id"])["status"] == "failed"
    assert job(db, second["id"])["max_attempts"] == 5


# Called for every row a bulk UPDATE of jobs writes (its CHECK, the guard's WHEN), where
# a SET clause's save and restore cost 10-25 %: they name pg_catalog's operators and
# functions instead, so no search_path changes what they decide
# (tests/integration/test_row_rules.py tries a hostile one).
UNPINNED = {"jobs_row_valid", "jobs_update_wanted"}


def test_every_function_pins_its_search_path(db: Database) -> None:
    """Each function the migrations create sets search_path to its own schema, then pg_temp
    (but the two row-level ones, which depend on none)."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.proname, p.proconfig FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s"
            ),
            {"s": db.schema},
        ).all()

    assert rows
    assert {
        r.proname: [c for c in r.proconfig or [] if c.startswith("search_path=")] for r in rows
    } == {
        r.proname: []
        if r.proname in UNPINNED
        else [f"search_path={quote_ident(db.schema)}, pg_temp"]
        for r in rows
    }


def _claim_attributes(db: Database, fn: str = "claim(text, text[], integer)") -> dict[str, Any]:
    with db.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT p.proconfig, p.prosecdef, l.lanname,"
                " has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute"
                " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
                " WHERE p.oid = to_regprocedure(:fn)"
            ),
            {"fn": f"{quote_ident(db.schema)}.{fn}"},
        ).one()
    return dict(row._mapping)


def _claim_one(pg_url: str, db: Database) -> list[Any]:
    """enqueue() then claim() from a plain connection, as a worker calls them."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("SELECT {}(kind => 'x', run_at => now() - interval '1 s')").format(
                sql.Identifier(db.schema, "enqueue")
            )
        )
        return conn.execute(
            sql.SQL("SELECT id, attempt FROM {}(worker => 'w1')").format(
                sql.Identifier(db.schema, "claim")
            )
        ).fetchall()


def test_claim_keeps_its_settings_after_every_migration(pg_url: str, db: Database) -> None:
    """After all migrations claim() is plpgsql and pins its search_path (its n => 1 query
    keeps its plan for the session), claim_lanes() (any other n) plans with the caller's
    values and only its owner may call it, and claim() hands out a job."""
    attributes = _claim_attributes(db)
    assert attributes["lanname"] == "plpgsql"
    assert attributes["proconfig"] == [f"search_path={quote_ident(db.schema)}, pg_temp"]
    lanes = _claim_attributes(db, "claim_lanes(text, text[], integer, text[])")
    assert lanes["lanname"] == "plpgsql"
    assert not lanes["prosecdef"]
    assert not lanes["public_execute"]
    assert sorted(lanes["proconfig"]) == [
        "plan_cache_mode=force_custom_plan",
        f"search_path={quote_ident(db.schema)}, pg_temp",
    ]
    assert _claim_one(pg_url, db) == [(1, 1)]


def test_a_schema_from_an_unreleased_build_is_refused_with_how_to_drop_it(db: Database) -> None:
    """A schema holding migration versions this build does not have (the numbered files of a
    development build before the history was folded) is refused in one line saying how to drop
    it; nothing changes."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO schema_migrations (version, name, checksum)"
                " VALUES (201, 'worker_api_security_definer', 'x')"
            )
        )
    before = _catalog(db)

    with pytest.raises(MigrationError) as caught:
        migrate(db)

    message = str(caught.value)
    assert "\n" not in message
    assert "unreleased development build" in message
    assert f"DROP SCHEMA {quote_ident(db.schema)} CASCADE" in message
    assert _catalog(db) == before


def test_a_schema_from_a_newer_build_is_refused(db: Database) -> None:
    """A schema at a version above every file of this build asks for an upgrade."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO schema_migrations (version, name, checksum)"
                " VALUES (299912312359, 'future', 'x')"
            )
        )

    with pytest.raises(MigrationError, match="newer than this reconciler knows"):
        migrate(db)
