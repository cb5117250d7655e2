"""Task leases: one run of a task at a time, across processes, with fencing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.leases import TaskBusy, acquire, new_holder
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.tasks import Task
from tests.helpers import insert_job


def _lease_row(db: Database, task: str) -> dict[str, object]:
    with db.transaction() as conn:
        row = conn.execute(text("SELECT * FROM task_leases WHERE task = :t"), {"t": task}).one()
    return dict(row._mapping)


def _hold(db: Database, task: str, ttl: timedelta) -> str:
    holder = new_holder()
    with db.transaction() as conn:
        acquire(conn, task, holder, ttl)
    return holder


def test_run_takes_and_releases_the_lease(db: Database, settings: Settings) -> None:
    """A run leaves the lease free, naming itself as the last holder."""
    result = run_task(db, settings, "requeue")
    lease = _lease_row(db, "requeue")
    assert result.status == "ok"
    assert lease["run_id"] is None
    assert str(lease["holder"]).startswith(f"{os.uname().nodename}:{os.getpid()}:")
    # Free again: the next run takes it without waiting.
    assert run_task(db, settings, "requeue").status == "ok"


def test_run_while_leased_elsewhere_is_busy_and_writes_nothing(
    db: Database, settings: Settings
) -> None:
    """TaskBusy names the holder; no runs row, no job change."""
    holder = _hold(db, "dead-letter", timedelta(minutes=1))
    job_id = insert_job(db, status="failed", attempt=3, max_attempts=3)

    with pytest.raises(TaskBusy) as busy:
        run_task(db, settings, "dead-letter")

    assert busy.value.holder == holder
    assert "task dead-letter is running elsewhere (holder" in str(busy.value)
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0
        status = conn.execute(text("SELECT status FROM jobs WHERE id = :i"), {"i": job_id})
        assert status.scalar_one() == "failed"


def test_expired_lease_is_taken_over_and_the_dead_run_closed(
    db: Database, settings: Settings
) -> None:
    """A holder that died: its run becomes interrupted, ending before the new run starts."""
    with db.transaction() as conn:
        lease = acquire(conn, "requeue", new_holder(), timedelta(milliseconds=1))
        dead_run = conn.execute(
            text(
                "INSERT INTO runs (task, started_at, host, pid, actor) "
                "VALUES ('requeue', statement_timestamp(), 'gone', 1, 'test') RETURNING id"
            )
        ).scalar_one()
        lease.attach_run(conn, dead_run)

    result = run_task(db, settings, "requeue")

    assert result.status == "ok"
    with db.transaction() as conn:
        old = conn.execute(text("SELECT * FROM runs WHERE id = :i"), {"i": dead_run}).one()
        new = conn.execute(text("SELECT * FROM runs WHERE id = :i"), {"i": result.run_id}).one()
    assert old.status == "interrupted"
    assert "abandoned" in old.error
    assert old.finished_at <= new.started_at


def test_lost_lease_rolls_the_batch_back(db: Database, settings: Settings) -> None:
    """Fencing: a batch whose renewal finds the lease taken writes nothing."""
    job_id = insert_job(db, status="failed", attempt=3, max_attempts=3)

    def steal(run_id: int) -> None:
        # Another process takes over right after this run started.
        with db.transaction() as conn:
            conn.execute(
                text("UPDATE task_leases SET holder = 'thief', expires_at = now() + interval '1h'")
            )

    result = run_task(db, settings, "dead-letter", on_start=steal)

    assert result.status == "failed"
    assert result.error is not None and "lost the lease" in result.error
    assert result.transitions == {}
    with db.transaction() as conn:
        status = conn.execute(text("SELECT status FROM jobs WHERE id = :i"), {"i": job_id})
        assert status.scalar_one() == "failed"
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar_one() == 0
        assert _lease_row(db, "dead-letter")["holder"] == "thief"


def test_concurrent_runs_in_threads_never_overlap(db: Database, settings: Settings) -> None:
    """Eight threads racing for one task: every run either ran alone or was busy."""
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        for _ in range(5):
            try:
                run_task(db, settings, "mark-stale")
                outcomes.append("ran")
            except TaskBusy:
                outcomes.append("busy")

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == 40 and "ran" in outcomes
    assert _overlapping_runs(db) == []


def _overlapping_runs(db: Database) -> list[tuple[int, int]]:
    with db.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT a.id, b.id FROM runs a JOIN runs b ON a.task = b.task AND a.id < b.id "
                "WHERE tstzrange(a.started_at, coalesce(a.finished_at, 'infinity'), '[]') "
                "&& tstzrange(b.started_at, coalesce(b.finished_at, 'infinity'), '[]')"
            )
        ).all()
    return [(int(r[0]), int(r[1])) for r in rows]


def test_ad_hoc_run_while_leased_exits_1_naming_the_holder(
    db: Database, settings: Settings, pg_url: str
) -> None:
    """`reconciler run` against a held lease: one line on stderr, exit 1; --json says busy."""
    holder = _hold(db, "purge", timedelta(minutes=1))
    env = {
        **os.environ,
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": db.schema,
    }
    plain = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "purge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    as_json = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "purge", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 1
    assert plain.stderr.startswith(f"reconciler: task purge is running elsewhere (holder {holder}")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["status"] == "busy"


def test_an_operators_one_off_change_takes_no_lease(db: Database, settings: Settings) -> None:
    """A Task built on the spot (reconciler.ops) is not a maintenance task: no lease, no wait."""
    _hold(db, "one-off", timedelta(minutes=1))
    one_off = Task(name="one-off", summary="an operator's change", execute=lambda ctx: None)

    result = run_task(db, settings, one_off)

    assert result.status == "ok" and result.run_id is not None
    assert _lease_row(db, "one-off")["run_id"] is None  # the held lease was left alone


def test_operator_command_on_a_leased_task_exits_1(
    db: Database, settings: Settings, pg_url: str, db_now: datetime
) -> None:
    """`jobs reset-stuck` reuses mark-stale: while another process runs it, one line, exit 1."""
    insert_job(db, status="running", attempt=1, heartbeat_at=db_now - timedelta(hours=1))
    holder = _hold(db, "mark-stale", timedelta(minutes=1))
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "jobs", "reset-stuck", "--older-than", "10m", "--yes"],
        env={**os.environ, "RECONCILER_DATABASE_URL": pg_url, "RECONCILER_SCHEMA": db.schema},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"reconciler: task mark-stale is running elsewhere (holder {holder}, lease until "
        f"{_lease_row(db, 'mark-stale')['expires_at'].isoformat(timespec='seconds')})"  # type: ignore[attr-defined]
        "; try again in a moment\n"
    )
