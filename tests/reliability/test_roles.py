"""Least privilege: the tasks and the workload under the roles of sql/roles.sql, not superuser."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy import make_url, text

from reconciler.db import Database
from reconciler.migrate import migrate
from reconciler.partitions import partition_events
from reconciler.roles import main as roles_main
from reconciler.roles import render
from reconciler.runner import run_task
from reconciler.sqlfiles import migration_files
from tests.conftest import connect, make_settings
from tests.helpers import insert_job, wait_until
from tests.reliability.daemon import DaemonReplicas
from tests.reliability.invariants import format_report
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema


@dataclass(frozen=True)
class Roles:
    owner: str
    daemon: str
    worker: str
    readonly: str
    urls: dict[str, str]


@pytest.fixture
def roles(db: Database, pg_url: str) -> Iterator[Roles]:
    """The four roles for this test's schema, applied from sql/roles.sql, able to log in."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "owner": f"rel_o_{tag}",
        "daemon": f"rel_d_{tag}",
        "worker": f"rel_w_{tag}",
        "readonly": f"rel_r_{tag}",
    }
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(render(db.schema, **names))  # twice: it is idempotent
        conn.execute(render(db.schema, **names))
        for name in names.values():
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(name)))
    base = make_url(pg_url)
    urls = {k: base.set(username=v).render_as_string(hide_password=False) for k, v in names.items()}
    yield Roles(urls=urls, **names)
    _drop_roles(pg_url, names.values())


def _drop_roles(pg_url: str, names: Iterable[str]) -> None:
    """Roles are cluster-wide: drop what a test created (and what it owns) after it."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for name in names:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            if exists:
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _server_version(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SHOW server_version_num")).scalar_one())


@pytest.mark.parametrize("hardened", [False, True], ids=["public-execute", "hardened"])
def test_every_task_runs_as_the_daemon_role(
    db: Database, roles: Roles, schema: str, pg_url: str, db_now: datetime, hardened: bool
) -> None:
    """mark-stale, requeue, dead-letter and purge do their work; vacuum-analyze as PG allows.
    Hardened: EXECUTE revoked from PUBLIC on every function of the schema (as default
    privileges may leave them), the script applied again: it grants the daemon what its
    writes call (the row rules, the guard's WHEN, the retry time), so nothing changes."""
    if hardened:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {} FROM PUBLIC").format(
                    sql.Identifier(schema)
                )
            )
            conn.execute(
                render(
                    schema,
                    owner=roles.owner,
                    daemon=roles.daemon,
                    worker=roles.worker,
                    readonly=roles.readonly,
                )
            )
    old = db_now - timedelta(days=100)
    stale = insert_job(db, status="running", attempt=1, heartbeat_at=old)
    insert_job(db, status="failed", attempt=1, finished_at=old)
    insert_job(db, status="failed", attempt=3, finished_at=old)
    insert_job(db, status="succeeded", attempt=1, finished_at=old)
    settings = make_settings(roles.urls["daemon"], schema)
    daemon = connect(roles.urls["daemon"], schema, settings)
    try:
        moved = {}
        for task in ("mark-stale", "requeue", "dead-letter", "purge"):
            result = run_task(daemon, settings, task, now=db_now)
            assert result.status == "ok", f"{task}: {result.error}"
            moved[task] = dict(result.transitions)
        vacuum = run_task(daemon, settings, "vacuum-analyze")
    finally:
        daemon.dispose()
    assert moved == {
        "mark-stale": {"running->stale": 1},
        "requeue": {"failed->queued": 1},
        "dead-letter": {"failed->dead": 1},
        "purge": {"succeeded->purged": 1},
    }
    with db.transaction() as conn:
        retry_at = conn.execute(
            text("SELECT retry_at FROM jobs WHERE id = :id"), {"id": stale}
        ).scalar_one()
    assert retry_at is not None  # decided by the retry-time functions, as the daemon
    if _server_version(db) >= 170000:
        assert vacuum.status == "ok", vacuum.error  # MAINTAIN was granted
    else:
        # Not the owner: PostgreSQL skips the table with a warning; the run must fail.
        assert vacuum.status == "failed"
        assert "skipping" in (vacuum.error or "")


def test_the_worker_role_can_only_call_the_worker_functions(
    db: Database, roles: Roles, schema: str
) -> None:
    with psycopg.connect(roles.urls["worker"], autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        job_id = conn.execute("SELECT enqueue(kind => 'k')").fetchone()
        assert job_id is not None
        row = conn.execute("SELECT id, claim_token FROM claim(worker => 'w1')").fetchone()
        assert row is not None and row[0] == job_id[0]
        assert conn.execute("SELECT heartbeat(%s, %s)", row).fetchone() == (True,)
        for statement in (
            "UPDATE jobs SET status = 'succeeded', locked_by = NULL WHERE id = %s",
            "UPDATE jobs SET heartbeat_at = now() WHERE id = %s",
            "DELETE FROM job_events WHERE job_id = %s",
            "SELECT * FROM jobs WHERE id = %s",
            "INSERT INTO job_events (job_id, to_status, at, actor) VALUES (%s, 'x', now(), 'me')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, (row[0],))
        # A temporary table named like ours cannot redirect the functions (pg_temp is last).
        conn.execute("CREATE TEMP TABLE jobs (id bigint)")
        assert conn.execute("SELECT complete(%s, %s)", row).fetchone() == (True,)


def test_the_readonly_role_reads_and_cannot_write_or_claim(
    db: Database, roles: Roles, schema: str
) -> None:
    insert_job(db, status="queued")
    with psycopg.connect(roles.urls["readonly"], autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
        for statement in (
            "SELECT * FROM claim(worker => 'w1')",
            "SELECT enqueue(kind => 'k')",
            "UPDATE jobs SET priority = 0",
            "DELETE FROM runs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


@pytest.mark.reliability
def test_workload_under_least_privilege_roles(
    db: Database, roles: Roles, pg_url: str, schema: str, tmp_path: Path
) -> None:
    """Workers as the worker role, maintenance as the daemon role: all invariants hold."""
    prepare_schema(db)
    w = Workload(
        pg_url,
        schema,
        tmp_path / "records",
        WorkloadConfig(workers=6),
        worker_url=roles.urls["worker"],
        maintenance_url=roles.urls["daemon"],
    )
    w.start()
    try:
        # Until purge has deleted jobs (every task has had work): a poll, not a window.
        wait_until(
            lambda: w.maintenance.summary()["transitions"].get("succeeded->purged", 0) > 0,
            "purge, as the daemon role, deletes succeeded jobs",
            timeout=120,
            poll=0.5,
        )
    finally:
        w.stop(settle=0.5)
    summary = w.maintenance.summary()
    assert summary["unexpected_errors"] == []
    assert summary["transitions"].get("succeeded->purged", 0) > 0
    _, results = w.check(db)
    assert all(r.ok for r in results), "\n" + format_report(results)
    assert w.enqueuer.errors == 0


@pytest.mark.reliability
def test_daemon_replicas_under_least_privilege_roles(
    db: Database, roles: Roles, pg_url: str, schema: str, tmp_path: Path
) -> None:
    """Real `reconciler daemon` replicas as the daemon role, workers as the worker role."""
    prepare_schema(db)
    w = Workload(
        pg_url,
        schema,
        tmp_path / "records",
        WorkloadConfig(workers=4),
        worker_url=roles.urls["worker"],
        maintenance_url=roles.urls["daemon"],
        maintenance=DaemonReplicas.factory(tmp_path / "daemon", replicas=2),
    )
    w.start()
    try:
        wait_until(
            lambda: w.maintenance.summary()["transitions"].get("running->stale", 0) > 0,
            "a replica, as the daemon role, marks a crashed worker's job stale",
            timeout=120,
            poll=0.5,
        )
    finally:
        w.stop(settle=0.5)
    summary = w.maintenance.summary()
    assert summary["unexpected_errors"] == []
    assert summary["transitions"].get("running->stale", 0) > 0
    _, results = w.check(db)
    assert all(r.ok for r in results), "\n" + format_report(results)
    assert w.enqueuer.errors == 0


def _roles_like(conn: psycopg.Connection[Any], prefix: str) -> set[str]:
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", [prefix]
    ).fetchall()
    return {r[0] for r in rows}


HOSTILE = [
    "x$roles$; CREATE ROLE pwned_{t}; DO $roles$BEGIN END$roles$",
    "q'uote\"d; DROP ROLE postgres; --",
    "$$ $roles_1$ $roles_2$ \\ back\\slash",
    "ünïcødé 名前 🐘",
]


def test_hostile_names_cannot_escape_the_script(db: Database, pg_url: str) -> None:
    """Names with $roles$, $$, quotes, semicolons and backslashes stay names: the script
    creates exactly the four roles named and runs nothing else (it once ran what followed
    a schema or role name holding the dollar-quote tag)."""
    t = uuid.uuid4().hex[:6]
    names = {
        "owner": f"o{t} " + HOSTILE[0].format(t=t),
        "daemon": f"d{t} " + HOSTILE[1],
        "worker": f"w{t} " + HOSTILE[2],
        "readonly": f"r{t} " + HOSTILE[3],
    }
    names = {k: v.encode()[:63].decode(errors="ignore") for k, v in names.items()}
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            script = render(db.schema, **names)
            conn.execute(script.encode())
            conn.execute(script.encode())  # idempotent
            created = {r for r in names.values() if _roles_like(conn, r)}
            assert created == set(names.values())
            assert not _roles_like(conn, f"pwned_{t}")
    finally:
        _drop_roles(pg_url, [*names.values(), f"pwned_{t}"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        min_size=1,
        max_size=20,
    )
)
def test_fuzzed_names_create_exactly_the_roles_named(db: Database, pg_url: str, name: str) -> None:
    """Any name PostgreSQL can hold, as schema and as role: exactly those roles, nothing
    else, and the grants land on the schema of that name."""
    t = uuid.uuid4().hex[:6]
    names = {k: f"{k[0]}{t}{name}" for k in ("owner", "daemon", "worker", "readonly")}
    schema = f"s{t}{name}"
    before: set[str]
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            before = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
            conn.execute(render(schema, **names).encode())
            after = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
            assert after - before == set(names.values())
            owner = conn.execute(
                "SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
                " WHERE n.nspname = %s",
                [schema],
            ).fetchone()
            assert owner == (names["owner"],)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        _drop_roles(pg_url, names.values())


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--worker", "", "is empty"),
        ("--daemon", "a\x00b", "contains a NUL"),
        ("--schema", "s" * 64, "64 bytes"),
        ("--owner", "é" * 32, "64 bytes"),
        ("--worker", "pg_worker", "reserved by PostgreSQL"),
        ("--readonly", "public", "reserved by PostgreSQL"),
        ("--worker", "reconciler_daemon", "four different names"),
    ],
)
def test_names_postgres_cannot_hold_are_refused_with_one_line(
    capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    """Empty, NUL, or past 63 bytes (PostgreSQL would silently cut it): exit 2, one line."""
    assert roles_main([option, value]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert says in err and err.count("\n") == 1


def test_migrate_as_the_owner_role_then_the_workers_run_with_its_rights(
    pg_url: str, schema: str
) -> None:
    """Fresh install: the script creates the schema for the owner; migrate as the owner;
    the script again grants; the worker functions belong to the owner, not a superuser."""
    t = uuid.uuid4().hex[:8]
    names = {"owner": f"rel_o_{t}", "daemon": f"rel_d_{t}", "worker": f"rel_w_{t}"}
    names["readonly"] = f"rel_r_{t}"
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(render(schema, **names).encode())  # before migrate: roles, schema
            for role in (names["owner"], names["worker"]):
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        base = make_url(pg_url)
        owner_url = base.set(username=names["owner"]).render_as_string(hide_password=False)
        as_owner = connect(owner_url, schema)
        try:
            assert migrate(as_owner).applied
        finally:
            as_owner.dispose()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(render(schema, **names).encode())  # after migrate: the grants
            owners = conn.execute(
                "SELECT DISTINCT r.rolname FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner"
                " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
                [schema],
            ).fetchall()
            assert owners == [(names["owner"],)]
        worker_url = base.set(username=names["worker"]).render_as_string(hide_password=False)
        with psycopg.connect(worker_url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
            conn.execute("SELECT enqueue(kind => 'k')")
            row = conn.execute("SELECT id, claim_token FROM claim(worker => 'w')").fetchone()
            assert row is not None
            assert conn.execute("SELECT complete(%s, %s)", row).fetchone() == (True,)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        _drop_roles(pg_url, names.values())


def test_a_migration_replacing_a_function_the_daemon_calls_keeps_its_grant(
    pg_url: str, schema: str
) -> None:
    """A hardened database (EXECUTE revoked from PUBLIC, by default privileges too),
    migrated as the owner past 202612041100, which replaces the update trigger's WHEN
    function: the daemon's writes and the workers' failures work before the script is
    run again, because the migration copies the old function's grants."""
    t = uuid.uuid4().hex[:8]
    names = {"owner": f"rel_o_{t}", "daemon": f"rel_d_{t}", "worker": f"rel_w_{t}"}
    names["readonly"] = f"rel_r_{t}"
    base = make_url(pg_url)
    url = {k: base.set(username=v).render_as_string(hide_password=False) for k, v in names.items()}
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(render(schema, **names).encode())
            for role in names.values():
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"
                ).format(sql.Identifier(names["owner"]))
            )
        as_owner = connect(url["owner"], schema)
        try:
            migrate(as_owner, files=[f for f in migration_files() if f[0] < 202612041100])
            with psycopg.connect(pg_url, autocommit=True) as conn:
                # This script on that version grants what exists and skips the function
                # it does not have yet; that version's script granted the old one.
                notices: list[str] = []
                conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                conn.execute(render(schema, **names).encode())
                assert any("jobs_update_wanted" in n and "skipped" in n for n in notices)
                conn.execute(
                    sql.SQL(
                        "GRANT EXECUTE ON FUNCTION {}.jobs_guard_wanted(text, text, integer,"
                        " integer, timestamptz, bytea) TO {}"
                    ).format(sql.Identifier(schema), sql.Identifier(names["daemon"]))
                )
            applied = migrate(as_owner).applied
            assert applied[0].startswith("202612041100")
        finally:
            as_owner.dispose()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            public = conn.execute(
                "SELECT has_function_privilege('public', p.oid, 'EXECUTE') FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = %s AND p.proname = 'jobs_update_wanted'",
                [schema],
            ).fetchone()
            assert public == (False,)  # hardened: only the grants copied let anyone call it
        db = connect(pg_url, schema)
        try:
            db_now = db.now()
            old = db_now - timedelta(days=1)
            insert_job(db, status="running", attempt=1, heartbeat_at=old, locked_at=old)
            insert_job(db, status="failed", attempt=3, finished_at=old)
            insert_job(db, status="failed", attempt=1, finished_at=old)
            with psycopg.connect(url["worker"], autocommit=True) as conn:
                conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
                conn.execute("SELECT enqueue(kind => 'k')")
                row = conn.execute("SELECT id, claim_token FROM claim(worker => 'w')").fetchone()
                assert row is not None
                assert conn.execute("SELECT fail(%s, %s)", row).fetchone() == (True,)
            settings = make_settings(url["daemon"], schema)
            daemon = connect(url["daemon"], schema, settings)
            try:
                for task in ("mark-stale", "dead-letter", "requeue"):
                    result = run_task(daemon, settings, task, now=db_now)
                    assert result.status == "ok", f"{task}: {result.error}"
                    assert result.changed > 0, task
            finally:
                daemon.dispose()
        finally:
            db.dispose()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        _drop_roles(pg_url, names.values())


def test_the_daemon_role_keeps_a_partitioned_ledger(
    db: Database, roles: Roles, schema: str, pg_url: str
) -> None:
    """A partitioned ledger (migrate, then the roles script again, as the README says): the
    daemon role creates and drops partitions through the owner's functions; a worker may
    not call them."""
    cutover = partition_events(db, unit="month", ahead=timedelta(days=7)).cutover
    assert cutover is not None
    names = {"owner": roles.owner, "daemon": roles.daemon}
    names |= {"worker": roles.worker, "readonly": roles.readonly}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(render(db.schema, **names))
    settings = make_settings(roles.urls["daemon"], schema, events_partitioning="month")
    daemon = connect(roles.urls["daemon"], schema, settings)
    try:
        result = run_task(daemon, settings, "partitions", now=cutover + timedelta(days=91))
    finally:
        daemon.dispose()
    assert result.status == "ok", result.error
    assert result.details["partitions_dropped"] == ["job_events_history"]
    assert result.details["partitions_created"] != []
    with psycopg.connect(roles.urls["worker"], autocommit=True) as conn:
        for call in (
            "SELECT * FROM {}.job_events_partition_drop_oldest(now())",
            "SELECT * FROM {}.job_events_partitions_ensure(now() + interval '1 year', 'day')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL(call).format(sql.Identifier(schema)))
