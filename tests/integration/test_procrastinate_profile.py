"""The procrastinate profile against Procrastinate's real schema, without worker processes.

The staged race (a worker's heartbeat committed between the reconciler's
snapshot and its lock), out of attempts, purge with events, dry runs, and a
profile refused on a schema without Procrastinate. tests/acceptance/
test_procrastinate.py runs real workers.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.profiles import ProfileError, bind_profile
from reconciler.profiles.procrastinate import profile as procrastinate_profile
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.tasks import TaskResult
from tests.helpers import wait_until
from tests.ops_data import CliRun
from tests.procrastinate_env import Pq


def _worker(pq: Pq, age: timedelta) -> int:
    rows = pq.sql(
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - %s) RETURNING id",
        (age,),
    )
    return int(rows[0][0])


def _doing(pq: Pq, worker: int | None) -> int:
    job = pq.defer()
    # As procrastinate_fetch_job_v2 leaves it: doing, held by the worker.
    pq.sql(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
        (worker, job),
    )
    return job


def _ledger(db: Database) -> list[Any]:
    with db.transaction(rollback=True) as conn:
        return list(
            conn.execute(
                text("SELECT job_id, from_status, to_status, reason FROM ledger ORDER BY id")
            ).all()
        )


def test_jobs_of_dead_or_gone_workers_are_retried_through_procrastinate(
    db: Database, settings: Settings, pq: Pq
) -> None:
    bound = bind_profile(db, procrastinate_profile(pq.schema))
    silent = _worker(pq, settings.heartbeat_timeout + timedelta(seconds=5))
    alive = _worker(pq, timedelta(0))
    dead_job, gone_job, live_job = _doing(pq, silent), _doing(pq, None), _doing(pq, alive)
    queued = pq.defer()
    dry = run_task(db, settings, "mark-stale", profile=bound, dry_run=True)
    assert dry.transitions == {"doing->todo": 2}, dry.error
    assert pq.status(dead_job) == ("doing", 0)
    result = run_task(db, settings, "mark-stale", profile=bound)
    assert result.transitions == {"doing->todo": 2}, result.error
    assert pq.status(dead_job) == ("todo", 1)
    assert pq.status(gone_job) == ("todo", 1)
    assert pq.status(live_job) == ("doing", 0)
    assert pq.status(queued) == ("todo", 0)
    # Procrastinate's own trigger wrote its event: the retry is one it recognises.
    assert pq.events(dead_job)[-1] == "deferred_for_retry"
    # Due after the default policy's backoff (1 s), by the reconciler's clock.
    due = pq.sql("SELECT scheduled_at FROM procrastinate_jobs WHERE id = %s", (dead_job,))[0][0]
    assert due == result.now + timedelta(seconds=1)
    ledger = {row.job_id: row for row in _ledger(db)}
    assert set(ledger) == {str(dead_job), str(gone_job)}
    assert ledger[str(gone_job)].reason["worker_gone"] is True
    assert ledger[str(dead_job)].reason["worker"] == silent


def test_a_job_with_no_attempts_left_fails(db: Database, settings: Settings, pq: Pq) -> None:
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies"
                " (kind, max_attempts, initial_delay, max_delay, multiplier)"
                " VALUES ('crunch', 2, interval '1 s', interval '1 s', 1)"
            )
        )
    bound = bind_profile(db, procrastinate_profile(pq.schema))
    job = _doing(pq, None)
    pq.sql("UPDATE procrastinate_jobs SET attempts = 1 WHERE id = %s", (job,))
    result = run_task(db, settings, "mark-stale", profile=bound)
    assert result.transitions == {"doing->failed": 1}
    assert pq.status(job) == ("failed", 2)
    assert pq.events(job)[-1] == "failed"


def test_a_heartbeat_committed_after_the_snapshot_keeps_the_job(
    db: Database, settings: Settings, pq: Pq, pg_url: str
) -> None:
    """The staged race: the reconciler's statement has taken its snapshot (the worker looks
    dead there) and waits for the worker row; the heartbeat commits; the job stays."""
    bound = bind_profile(db, procrastinate_profile(pq.schema))
    worker = _worker(pq, settings.heartbeat_timeout + timedelta(minutes=1))
    job = _doing(pq, worker)
    holder = psycopg.connect(pq.dsn)
    # The worker's heartbeat transaction, begun: it holds the worker row.
    holder.execute(
        "UPDATE procrastinate_workers SET last_heartbeat = last_heartbeat WHERE id = %s", (worker,)
    )
    results: list[TaskResult] = []
    run = threading.Thread(
        target=lambda: results.append(run_task(db, settings, "mark-stale", profile=bound))
    )
    run.start()
    with psycopg.connect(pg_url, autocommit=True) as watcher:
        # Until it waits for the worker row (or, were it not to lock that row, has ended).
        wait_until(
            lambda: _waiting(watcher) or not run.is_alive(),
            "the reconciler's statement to wait for the worker row",
        )
    holder.execute(
        "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %s", (worker,)
    )
    holder.commit()
    holder.close()
    run.join(timeout=60)
    assert results and results[0].status == "ok", results
    assert results[0].changed == 0
    assert pq.status(job) == ("doing", 0)
    assert _ledger(db) == []


def _waiting(conn: psycopg.Connection[Any]) -> bool:
    """A reconciler statement over procrastinate_workers waits for a lock."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND application_name = 'reconciler-tests' AND query LIKE '%%procrastinate_workers%%'"
    ).fetchone()
    return bool(row and row[0])


def test_purge_removes_finished_jobs_past_retention_with_their_events(
    db: Database, settings: Settings, pq: Pq
) -> None:
    bound = bind_profile(db, procrastinate_profile(pq.schema))
    old, young, running, todo = pq.defer(1), pq.defer(2), pq.defer(3), pq.defer(4)
    for job in (old, young):
        pq.sql("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (job,))
        pq.sql("SELECT procrastinate_finish_job_v1(%s, 'succeeded', false)", (job,))
    pq.sql("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (running,))
    keep = settings.retention_succeeded
    pq.sql(
        "UPDATE procrastinate_events SET at = now() - %s - interval '1 hour'"
        " WHERE job_id = ANY(%s)",
        (keep, [old, running, todo]),
    )
    before = len(pq.sql("SELECT 1 FROM procrastinate_events"))
    result = run_task(db, settings, "purge", profile=bound)
    assert result.transitions == {"succeeded->purged": 1}, result.error
    left = {r[0] for r in pq.sql("SELECT id FROM procrastinate_jobs")}
    assert left == {young, running, todo}
    assert pq.events(old) == []
    assert len(pq.sql("SELECT 1 FROM procrastinate_events")) == before - 3


@pytest.mark.parametrize("task", ["requeue", "dead-letter"])
def test_requeue_and_dead_letter_say_why_they_have_nothing_to_do(
    db: Database, settings: Settings, pq: Pq, task: str
) -> None:
    bound = bind_profile(db, procrastinate_profile(pq.schema))
    result = run_task(db, settings, task, profile=bound)
    assert result.status == "ok" and result.changed == 0
    assert "Procrastinate" in result.notes[0]


def test_a_schema_without_procrastinate_is_refused(db: Database, schema: str) -> None:
    with pytest.raises(ProfileError, match="procrastinate_jobs does not exist"):
        bind_profile(db, procrastinate_profile(schema))


def test_an_aborted_or_queueing_locked_job_fails_instead_of_breaking_the_batch(
    db: Database, settings: Settings, pq: Pq
) -> None:
    """Procrastinate allows one todo job per queueing lock: a stalled job whose lock a
    waiting twin holds (or an earlier one of the same batch) fails, as does one whose abort
    was requested; every other stalled job of the batch is still retried."""
    bound = bind_profile(db, procrastinate_profile(pq.schema))
    aborted, twin_held, first, second, plain = (_doing(pq, None) for _ in range(5))
    pq.sql("UPDATE procrastinate_jobs SET abort_requested = true WHERE id = %s", (aborted,))
    pq.sql("UPDATE procrastinate_jobs SET queueing_lock = 'report' WHERE id = %s", (twin_held,))
    waiting = pq.defer()
    pq.sql("UPDATE procrastinate_jobs SET queueing_lock = 'report' WHERE id = %s", (waiting,))
    pq.sql(
        "UPDATE procrastinate_jobs SET queueing_lock = 'sync' WHERE id = ANY(%s)",
        ([first, second],),
    )
    result = run_task(db, settings, "mark-stale", profile=bound)
    assert result.status == "ok", result.error
    assert result.transitions == {"doing->todo": 2, "doing->failed": 3}
    assert pq.status(plain)[0] == "todo" and pq.status(first)[0] == "todo"
    assert [pq.status(j)[0] for j in (aborted, twin_held, second)] == ["failed"] * 3
    reasons = {row.job_id: row.reason for row in _ledger(db)}
    assert reasons[str(twin_held)]["queueing_lock_held_by"] == waiting
    assert reasons[str(aborted)]["abort_requested"] is True


def test_workers_and_check_read_procrastinates_workers_table(
    cli: CliRun, db: Database, settings: Settings, pq: Pq
) -> None:
    silent = _worker(pq, settings.heartbeat_timeout + timedelta(minutes=5))
    alive = _worker(pq, timedelta(0))
    _doing(pq, silent)
    _doing(pq, alive)
    cli.setenv("RECONCILER_PROFILES", f"procrastinate:{pq.schema}")
    workers = {int(r["worker"]): r for r in cli.json_lines("workers")}
    assert workers[silent]["running"] == 1 and workers[silent]["silent_s"] > 300
    assert workers[alive]["silent_s"] < 60
    code, out, err = cli("check", "--json")
    assert code == 1, out + err
    assert "1 running job(s) silent past the heartbeat timeout" in out
