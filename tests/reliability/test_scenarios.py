"""Scenarios: a workload with one fault each, or one race staged by hand; invariants at the end.

The workload scenarios run 8 worker processes for a few seconds with a 2 s
heartbeat timeout and tasks every 0.5-5 s. The staged races use fixed
``now`` values and a second connection holding locks, and assert exactly
which rows moved. Nothing asserts on elapsed time: waits are polls with a
deadline.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from freezegun import freeze_time
from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.conftest import connect, make_settings
from tests.helpers import events_of, insert_job, job, wait_until
from tests.reliability.faults import FaultSchedule
from tests.reliability.invariants import InvariantResult, format_report
from tests.reliability.operator import ACTIONS, ACTOR, Operator
from tests.reliability.worker import Plan
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema

pytestmark = pytest.mark.reliability

# Long enough for jobs to go stale (2 s), be retried and purged a few times over.
SECONDS = float(os.environ.get("RELIABILITY_SCENARIO_SECONDS", "5"))

MakeWorkload = Callable[..., Workload]


@pytest.fixture
def make_workload(db: Database, pg_url: str, schema: str, tmp_path: Path) -> Iterator[MakeWorkload]:
    prepare_schema(db)
    made: list[Workload] = []

    def make(
        plan: Plan | None = None, settings_overrides: dict[str, Any] | None = None, **config: Any
    ) -> Workload:
        cfg = WorkloadConfig(plan=plan or Plan(), **config)
        w = Workload(
            pg_url, schema, tmp_path / "records", cfg, settings_overrides=settings_overrides
        )
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def _assert_invariants(results: list[InvariantResult]) -> None:
    assert all(r.ok for r in results), "\n" + format_report(results)


# What every workload scenario waits for, besides time: each transition task moved jobs.
PROGRESS = ("running->stale", "failed->queued", "failed->dead", "succeeded->purged")


def _min_seconds(w: Workload) -> float:
    """Long enough that every invariant could fail: a job stuck past invariant 7's longest
    bound (heartbeat timeout + the slowest transition interval + slack) would show."""
    cfg = w.config
    slowest = max(cfg.intervals[t] for t in ("mark-stale", "requeue", "dead-letter"))
    return max(SECONDS, (cfg.heartbeat_timeout + slowest + cfg.slack).total_seconds() + 2.0)


def _run(
    w: Workload,
    db: Database,
    faults: FaultSchedule | None = None,
    *,
    progress: tuple[str, ...] = PROGRESS,
    failed_runs_allowed: Callable[[], int] = lambda: 0,
) -> list[InvariantResult]:
    """Run the workload until every task in ``progress`` moved jobs and long enough for
    every invariant to be able to fail; then check that every task ran, and that no more
    runs failed than the faults explain (``failed_runs_allowed``, read at the end)."""
    w.start()
    if faults is not None:
        faults.start()
    started = time.monotonic()

    def done() -> bool:
        moved = w.maintenance.summary()["transitions"]
        return time.monotonic() - started >= _min_seconds(w) and all(
            moved.get(t, 0) > 0 for t in progress
        )

    try:
        wait_until(
            done, f"the workload ran {_min_seconds(w):.0f}s and moved {progress}", timeout=240
        )
    finally:
        if faults is not None:
            faults.stop()
        w.stop(settle=0.5)
    summary = w.maintenance.summary()
    assert summary["unexpected_errors"] == []
    assert set(summary["runs"]) == {
        "mark-stale",
        "requeue",
        "dead-letter",
        "purge",
        "vacuum-analyze",
    }, summary["runs"]
    failed = sum(summary["failed_runs"].values()) + sum(summary["crashed_runs"].values())
    assert failed <= failed_runs_allowed(), (failed, summary["errors"])
    _, results = w.check(db)
    return results


def _count_events(db: Database, to_status: str) -> int:
    with db.transaction() as conn:
        n = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM job_events WHERE to_status = :s)"
                " + (SELECT count(*) FROM rel_purged_events WHERE to_status = :s)"
            ),
            {"s": to_status},
        ).scalar_one()
    return int(n)


# --- workloads with faults -----------------------------------------------------------------


def test_plain_workload_keeps_every_invariant(db: Database, make_workload: MakeWorkload) -> None:
    """Workers that complete, fail, crash and freeze on their own: all seven invariants hold."""
    w = make_workload()
    results = _run(w, db)
    _assert_invariants(results)
    assert w.enqueuer.count > 50
    assert results[0].counts["purged"] > 0
    assert _count_events(db, "succeeded") > 0
    assert _count_events(db, "stale") > 0


def test_operator_actions_mid_workload_keep_every_invariant(
    db: Database, make_workload: MakeWorkload
) -> None:
    """An operator at the keyboard while workers and maintenance run: requeue, cancel,
    reset-stuck, replay, mark-succeeded, pause/resume, dead-letter export + purge, each
    through the real CLI on live jobs, with workers that reuse their names and get
    killed. Every command answers 0 or 1 (never 2 or a traceback) and every invariant
    holds: the fence after an operator's requeue, the budget after a replay, no job lost.
    """
    w = make_workload(
        Plan(weights={"complete": 55, "fail": 35, "crash": 2, "freeze": 4, "crash_after_claim": 4}),
        reuse_names=True,
    )
    op = Operator(w)
    faults = FaultSchedule(w, ["kill"], every=1.5)
    w.start()
    op.start()
    faults.start()
    try:
        started = time.monotonic()
        # Every action tried at least once (done, or refused because its job moved on:
        # finished jobs are purged within seconds here) and a fair amount done.
        wait_until(
            lambda: (
                time.monotonic() - started >= SECONDS
                and all(op.done[a] + op.refused[a] >= 1 for a in ACTIONS)
                and sum(op.done.values()) >= 10
            ),
            "every operator action tried, and ten done",
            timeout=420,
        )
    finally:
        faults.stop()
        op.stop()
        w.stop(settle=0.5)
    assert op.defects == [], "\n".join(op.defects)
    assert w.maintenance.summary()["unexpected_errors"] == []
    h, results = w.check(db)
    _assert_invariants(results)
    by_operator = Counter(
        (e.from_status, e.to_status)
        for evs in (*h.events.values(), *h.purged_events.values())
        for e in evs
        if e.actor == ACTOR
    )
    if op.done["replay_succeeded"]:
        assert by_operator[("succeeded", "queued")] >= 1, by_operator
    if op.done["export_purge"] >= 2:  # an export and its purge both went through
        assert h.operator_purged & set(h.purged), "no dead job purged by the operator"
    assert faults.injected["kill"] >= 1


def test_frozen_workers_are_fenced_out(db: Database, make_workload: MakeWorkload) -> None:
    """SIGSTOP past the timeout, then SIGCONT: the job went stale, the late calls get false."""
    w = make_workload(Plan(weights={"complete": 90, "fail": 10}, work_s=(0.3, 1.0)))
    faults = FaultSchedule(w, ["freeze"], every=1.0)
    results = _run(w, db, faults)
    _assert_invariants(results)
    assert faults.injected["freeze"] >= 2
    assert _count_events(db, "stale") >= 1  # only freezes make jobs stale in this plan
    assert results[4].counts["late_calls_refused"] >= 1


def test_workers_crashing_between_claim_and_first_heartbeat(
    db: Database, make_workload: MakeWorkload
) -> None:
    """A claim with no heartbeat after it still goes stale (by locked_at/heartbeat_at of claim)."""
    w = make_workload(Plan(weights={"complete": 75, "crash_after_claim": 25}))
    # No worker ever calls fail(): the retries and dead letters come from stale jobs.
    results = _run(w, db, progress=("running->stale", "stale->queued", "stale->dead"))
    _assert_invariants(results)
    assert w.pool.exits[3] >= 3  # exit code 3: crashed right after claim
    assert _count_events(db, "stale") >= 3


def test_maintenance_connections_terminated_repeatedly(
    db: Database, make_workload: MakeWorkload, caplog: pytest.LogCaptureFixture
) -> None:
    """pg_terminate_backend of the maintenance's connections every 0.7 s: work goes on."""
    w = make_workload()
    faults = FaultSchedule(w, ["terminate"], every=0.7)
    results = _run(w, db, faults, failed_runs_allowed=lambda: faults.terminated)
    _assert_invariants(results)
    assert faults.injected["terminate"] >= 3
    summary = w.maintenance.summary()
    assert summary["transitions"].get("running->stale", 0) > 0
    assert summary["transitions"].get("succeeded->purged", 0) > 0
    # A killed connection is discarded, not "reset" by the pool with a logged traceback.
    assert not [r for r in caplog.records if "during reset" in r.getMessage()]


def test_workers_killed_while_holding_jobs(db: Database, make_workload: MakeWorkload) -> None:
    """SIGKILL of busy workers: their jobs go stale, are retried, the pool replaces them."""
    w = make_workload(Plan(weights={"complete": 85, "fail": 15}))
    faults = FaultSchedule(w, ["kill"], every=1.0)
    results = _run(w, db, faults)
    _assert_invariants(results)
    assert faults.injected["kill"] >= 2
    assert w.pool.exits[-9] >= 2
    assert _count_events(db, "stale") >= 1


def test_maintenance_at_full_speed_while_workers_saturate(
    db: Database, make_workload: MakeWorkload
) -> None:
    """Every task back to back, small batches, workers claiming flat out: no deadlock, no loss."""
    fast = {
        name: timedelta(milliseconds=50)
        for name in ("mark-stale", "requeue", "dead-letter", "purge")
    }
    fast["vacuum-analyze"] = timedelta(seconds=2)
    w = make_workload(
        Plan(work_s=(0.0, 0.05), heartbeat_interval_s=0.02, idle_s=0.01),
        settings_overrides={"batch_size": 5},
        enqueue_rate=150.0,
        intervals=fast,
        retention=timedelta(milliseconds=500),
    )
    results = _run(w, db)
    _assert_invariants(results)
    errors = w.maintenance.summary()["errors"]
    assert not [e for e in errors if "deadlock" in e], errors
    assert not {1, 5} & set(w.pool.exits), w.pool.exits  # no worker died of an error


def test_row_locks_held_elsewhere(db: Database, make_workload: MakeWorkload) -> None:
    """Another transaction holds row locks on running jobs for seconds: batches skip, none lost."""
    w = make_workload()
    faults = FaultSchedule(w, ["locks"], every=1.5)
    results = _run(w, db, faults)
    _assert_invariants(results)
    assert faults.injected["locks"] >= 1


# --- races staged by hand -----------------------------------------------------------------


@pytest.fixture
def other(pg_url: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    """A second session in the test's schema, as a worker or a long transaction would hold it."""
    conn = psycopg.connect(pg_url, application_name="rel-other")
    conn.execute(
        sql.SQL("SELECT set_config('search_path', {}, false)").format(
            sql.Literal(sql.Identifier(schema).as_string(None))
        )
    )
    conn.commit()
    yield conn
    conn.rollback()
    conn.close()


def test_lock_timeout_fails_a_purge_batch_and_loses_nothing(
    db: Database,
    settings: Settings,
    pg_url: str,
    db_now: datetime,
    other: psycopg.Connection[Any],
) -> None:
    """A row lock on one job's events makes purge's batch hit lock_timeout: it rolls back whole."""
    done = db_now - timedelta(days=40)
    ids = [insert_job(db, status="succeeded", attempt=1, finished_at=done) for _ in range(5)]
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor)"
                " SELECT id, 'running', 'succeeded', finished_at, 'worker:w1' FROM jobs"
            )
        )
    other.execute("SELECT id FROM job_events WHERE job_id = %s FOR UPDATE", (ids[3],))
    quick = settings.model_copy(update={"lock_timeout": timedelta(milliseconds=200)})
    db2 = connect(pg_url, db.schema, quick)
    try:
        result = run_task(db2, quick, "purge", now=db_now, batch_size=2)
    finally:
        db2.dispose()
    assert result.status == "failed"
    assert "lock timeout" in (result.error or "")
    # The first batch (ids 0, 1) committed and is counted; the failed one left everything.
    assert result.transitions == {"succeeded->purged": 2}
    with db.transaction() as conn:
        left = conn.execute(text("SELECT id FROM jobs ORDER BY id")).scalars().all()
    assert left == ids[2:]
    assert all(len(events_of(db, i)) == 1 for i in ids[2:])
    other.rollback()
    again = run_task(db, settings, "purge", now=db_now)
    assert again.status == "ok"
    assert again.transitions == {"succeeded->purged": 3}


def test_statement_timeout_fails_mark_stale_and_loses_nothing(
    db: Database,
    settings: Settings,
    pg_url: str,
    db_now: datetime,
    other: psycopg.Connection[Any],
) -> None:
    """A table lock held elsewhere: the batch hits statement_timeout, reports it, moves nothing."""
    dead = insert_job(db, status="running", attempt=1, heartbeat_at=db_now - timedelta(hours=1))
    other.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
    strict = settings.model_copy(
        update={
            "lock_timeout": timedelta(seconds=30),
            "statement_timeout": timedelta(milliseconds=300),
        }
    )
    db2 = connect(pg_url, db.schema, strict)
    try:
        result = run_task(db2, strict, "mark-stale", now=db_now)
    finally:
        db2.dispose()
    assert result.status == "failed"
    assert "statement timeout" in (result.error or "")
    assert result.transitions == {}
    other.rollback()
    assert job(db, dead)["status"] == "running"
    assert run_task(db, settings, "mark-stale", now=db_now).transitions == {"running->stale": 1}


def test_vacuum_analyze_skips_a_locked_table_and_fails_instead_of_waiting(
    db: Database, settings: Settings, other: psycopg.Connection[Any]
) -> None:
    """A table lock held elsewhere: vacuum-analyze reports a failed run, it does not hang."""
    other.execute("LOCK TABLE jobs IN SHARE UPDATE EXCLUSIVE MODE")
    result = run_task(db, settings, "vacuum-analyze")
    assert result.status == "failed"
    assert "skipped" in (result.error or "")


def test_vacuum_analyze_names_the_transaction_holding_back_dead_rows(
    db: Database, settings: Settings, other: psycopg.Connection[Any]
) -> None:
    """An open snapshot elsewhere keeps dead rows: the run says so and names that backend."""
    other.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    other.execute("SELECT count(*) FROM jobs")  # the snapshot now holds the xmin horizon
    for _ in range(3):
        insert_job(db, status="queued")
    with db.transaction() as conn:
        conn.execute(text("DELETE FROM jobs"))
    result = run_task(db, settings, "vacuum-analyze")
    assert result.status == "ok"
    assert result.details["reclaimed_all"] is False
    assert result.details["tables"]["jobs"]["not_removable"] >= 3
    assert other.info.backend_pid in [h["pid"] for h in result.details["xmin_holders"]]


def test_uncommitted_complete_holds_the_row_while_mark_stale_runs(
    db: Database, settings: Settings, other: psycopg.Connection[Any]
) -> None:
    """A worker's complete() not yet committed: mark-stale skips the row; the job ends succeeded."""
    with db.transaction() as conn:
        job_id = conn.execute(text("SELECT enqueue(kind => 'k')")).scalar_one()
        claimed = conn.execute(text("SELECT id, claim_token FROM claim(worker => 'w1')")).one()
    assert claimed.id == job_id
    ok = other.execute(
        "SELECT complete(job_id => %s, claim_token => %s)", (job_id, claimed.claim_token)
    ).fetchone()
    assert ok == (True,)
    late = db.now() + timedelta(hours=1)  # long past the timeout
    result = run_task(db, settings, "mark-stale", now=late)
    assert result.status == "ok"
    assert result.transitions == {}
    other.commit()
    row = job(db, job_id)
    assert row["status"] == "succeeded"
    assert [(e["from_status"], e["to_status"]) for e in events_of(db, job_id)] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert run_task(db, settings, "mark-stale", now=late).transitions == {}


def test_a_rolled_back_complete_leaves_the_job_to_mark_stale(
    db: Database, settings: Settings, other: psycopg.Connection[Any]
) -> None:
    """The same race where the worker's transaction rolls back: the next mark-stale takes it."""
    with db.transaction() as conn:
        job_id = conn.execute(text("SELECT enqueue(kind => 'k')")).scalar_one()
        token = conn.execute(text("SELECT claim_token FROM claim(worker => 'w1')")).scalar_one()
    other.execute("SELECT complete(job_id => %s, claim_token => %s)", (job_id, token))
    late = db.now() + timedelta(hours=1)
    assert run_task(db, settings, "mark-stale", now=late).transitions == {}
    other.rollback()
    assert run_task(db, settings, "mark-stale", now=late).transitions == {"running->stale": 1}


@pytest.mark.parametrize(
    ("task", "stuck", "eligible"),
    [
        ("mark-stale", {"status": "running", "attempt": 1}, {"status": "running", "attempt": 1}),
        ("requeue", {"status": "failed", "attempt": 1}, {"status": "failed", "attempt": 1}),
        ("dead-letter", {"status": "failed", "attempt": 3}, {"status": "failed", "attempt": 3}),
        ("purge", {"status": "succeeded", "attempt": 1}, {"status": "succeeded", "attempt": 1}),
    ],
)
def test_no_head_of_line_starvation(
    db: Database,
    settings: Settings,
    db_now: datetime,
    other: psycopg.Connection[Any],
    task: str,
    stuck: dict[str, Any],
    eligible: dict[str, Any],
) -> None:
    """batch_size + 1 locked rows first in the task's order: the last eligible row still moves."""
    batch = 3
    old = db_now - timedelta(days=60)
    times = {"heartbeat_at": old, "finished_at": old}
    locked = [insert_job(db, **stuck, **times) for _ in range(batch + 1)]
    last = insert_job(
        db,
        **eligible,
        heartbeat_at=old + timedelta(seconds=1),
        finished_at=old + timedelta(seconds=1),
    )
    other.execute("SELECT id FROM jobs WHERE id = ANY(%s) FOR UPDATE", (locked,))
    result = run_task(db, settings, task, now=db_now, batch_size=batch)
    assert result.status == "ok"
    assert result.changed == 1
    assert result.sample_ids == (last,)


def test_ineligible_rows_first_do_not_starve_the_batch(
    db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    """batch_size + 1 older running jobs of a kind with a long timeout come first: still handled."""
    settings = make_settings(pg_url, schema, heartbeat_timeout_overrides={"kind:slow": "2h"})
    old = db_now - timedelta(hours=1)
    for _ in range(4):
        insert_job(db, kind="slow", status="running", attempt=1, heartbeat_at=old)
    last = insert_job(db, status="running", attempt=1, heartbeat_at=old + timedelta(minutes=1))
    result = run_task(db, settings, "mark-stale", now=db_now, batch_size=3)
    assert result.sample_ids == (last,)


# --- clocks -----------------------------------------------------------------------------------

# 2026-03-08 07:00 UTC is 03:00 EDT: clocks in New York jumped from 02:00 to 03:00.
DST_JUMP = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def _decisions(db: Database, settings: Settings, now: datetime) -> dict[str, list[int]]:
    moved: dict[str, list[int]] = {}
    for task in ("mark-stale", "requeue", "dead-letter", "purge"):
        with db.transaction() as conn:
            before: dict[int, str] = dict(conn.execute(text("SELECT id, status FROM jobs")).all())
        result = run_task(db, settings, task, now=now)
        assert result.status == "ok", result.error
        with db.transaction() as conn:
            after: dict[int, str] = dict(conn.execute(text("SELECT id, status FROM jobs")).all())
        moved[task] = sorted(i for i in before if after.get(i) != before[i])
    return moved


def _place_jobs_around(db: Database, now: datetime) -> dict[str, int]:
    """Jobs one minute either side of each horizon (timeout 5 m, backoff 1 d, retention 30 d)."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier) VALUES ('daily', 5, interval '1 day', interval '1 day', 1)"
            )
        )
    m = timedelta(minutes=1)
    t, day, month = timedelta(minutes=5), timedelta(days=1), timedelta(days=30)
    return {
        "stale_yes": insert_job(db, status="running", attempt=1, heartbeat_at=now - t - m),
        "stale_no": insert_job(db, status="running", attempt=1, heartbeat_at=now - t + m),
        "requeue_yes": insert_job(
            db, kind="daily", status="failed", attempt=1, finished_at=now - day - m
        ),
        "requeue_no": insert_job(
            db, kind="daily", status="failed", attempt=1, finished_at=now - day + m
        ),
        "purge_yes": insert_job(db, status="succeeded", attempt=1, finished_at=now - month - m),
        "purge_no": insert_job(db, status="succeeded", attempt=1, finished_at=now - month + m),
    }


def _expected(ids: dict[str, int]) -> dict[str, list[int]]:
    return {
        "mark-stale": [ids["stale_yes"]],
        "requeue": [ids["requeue_yes"]],
        "dead-letter": [],
        "purge": [ids["purge_yes"]],
    }


@pytest.mark.parametrize(
    "now", [DST_JUMP + timedelta(hours=6), datetime(2026, 4, 2, 12, tzinfo=UTC)]
)
def test_session_timezone_and_process_tz_differ(
    pg_url: str, schema: str, db: Database, monkeypatch: pytest.MonkeyPatch, now: datetime
) -> None:
    """Session TimeZone New York, process TZ Kolkata, around a DST jump: no decision moves."""
    monkeypatch.setenv("PGTZ", "America/New_York")  # libpq sets the session's TimeZone
    saved_tz = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        settings = make_settings(pg_url, schema)
        ny = connect(pg_url, schema, settings)
        try:
            with ny.engine.connect() as conn:
                assert conn.execute(text("SHOW TimeZone")).scalar_one() == "America/New_York"
            ids = _place_jobs_around(ny, now)
            assert _decisions(ny, settings, now.astimezone(ny.now().tzinfo)) == _expected(ids)
        finally:
            ny.dispose()
    finally:
        if saved_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved_tz
        time.tzset()


@pytest.mark.parametrize("offset", [timedelta(days=-400), timedelta(days=3), timedelta(days=900)])
def test_host_clock_far_off(
    db: Database, settings: Settings, db_now: datetime, offset: timedelta
) -> None:
    """The host's clock days or years off (freezegun): decisions follow the database's clock."""
    ids = _place_jobs_around(db, db.now())
    with freeze_time(datetime.now(UTC) + offset):
        moved = {}
        for task in ("mark-stale", "requeue", "dead-letter", "purge"):
            result = run_task(db, settings, task)  # now: read from the database
            assert result.status == "ok"
            assert abs(result.now - db_now) < timedelta(minutes=5)
            moved[task] = sorted(result.sample_ids)
    assert moved == _expected(ids)
