"""Least privilege: the tasks and the workload under the roles of sql/roles.sql, not superuser."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url, text

from reconciler.db import Database
from reconciler.roles import render
from reconciler.runner import run_task
from tests.conftest import connect, make_settings
from tests.helpers import insert_job
from tests.reliability.daemon import DaemonReplicas
from tests.reliability.invariants import format_report
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema, wait_until


@dataclass(frozen=True)
class Roles:
    daemon: str
    worker: str
    readonly: str
    urls: dict[str, str]


@pytest.fixture
def roles(db: Database, pg_url: str) -> Iterator[Roles]:
    """The three roles for this test's schema, applied from sql/roles.sql, able to log in."""
    tag = uuid.uuid4().hex[:8]
    names = {"daemon": f"rel_d_{tag}", "worker": f"rel_w_{tag}", "readonly": f"rel_r_{tag}"}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(render(db.schema, **names))  # twice: it is idempotent
        conn.execute(render(db.schema, **names))
        for name in names.values():
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(name)))
    base = make_url(pg_url)
    urls = {k: base.set(username=v).render_as_string(hide_password=False) for k, v in names.items()}
    yield Roles(urls=urls, **names)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _server_version(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SHOW server_version_num")).scalar_one())


def test_every_task_runs_as_the_daemon_role(
    db: Database, roles: Roles, schema: str, db_now: datetime
) -> None:
    """mark-stale, requeue, dead-letter and purge do their work; vacuum-analyze as PG allows."""
    old = db_now - timedelta(days=100)
    insert_job(db, status="running", attempt=1, heartbeat_at=old)
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
        deadline = time.monotonic() + 4
        wait_until(lambda: time.monotonic() >= deadline, 15, "the workload")
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
        deadline = time.monotonic() + 5
        wait_until(lambda: time.monotonic() >= deadline, 15, "the workload")
    finally:
        w.stop(settle=0.5)
    summary = w.maintenance.summary()
    assert summary["unexpected_errors"] == []
    assert summary["transitions"].get("running->stale", 0) > 0
    _, results = w.check(db)
    assert all(r.ok for r in results), "\n" + format_report(results)
    assert w.enqueuer.errors == 0
