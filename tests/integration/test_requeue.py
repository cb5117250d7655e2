"""requeue: which failed or stale jobs go back to queued, after which backoff, with what record."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import events_of, insert_job, job

MS = timedelta(milliseconds=1)


def _failed(db: Database, now: datetime, ago: timedelta, **values: Any) -> int:
    values.setdefault("status", "failed")
    values.setdefault("attempt", 1)
    return insert_job(db, finished_at=now - ago, **values)


def _statuses(db: Database, ids: list[int]) -> list[str]:
    return [job(db, job_id)["status"] for job_id in ids]


def _kind_policy(db: Database, kind: str, **values: Any) -> None:
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier, jitter) VALUES (:kind, :max_attempts,"
                " make_interval(secs => :initial_s), make_interval(secs => :max_s),"
                " :multiplier, :jitter)"
            ),
            {"kind": kind, **values},
        )


def test_default_priority_first_retry_waits_one_second(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """Default priority, attempt 1: a 1 s backoff; due at exactly 1 s, not at 999 ms."""
    due = _failed(db, db_now, timedelta(seconds=1))
    early = _failed(db, db_now, timedelta(seconds=1) - MS)

    result = run_task(db, settings, "requeue", now=db_now)

    assert result.transitions == {"failed->queued": 1}
    assert _statuses(db, [due, early]) == ["queued", "failed"]


@pytest.mark.parametrize("priority", [1, 2, 3])
def test_high_default_low_double_from_one_second(
    db: Database, settings: Settings, db_now: datetime, priority: int
) -> None:
    """High, default and low: 1 s x 2^(attempt-1), so attempt 2 waits 2 s."""
    due = _failed(db, db_now, timedelta(seconds=2), priority=priority, attempt=2)
    early = _failed(db, db_now, timedelta(seconds=2) - MS, priority=priority, attempt=2)

    run_task(db, settings, "requeue", now=db_now)

    assert _statuses(db, [due, early]) == ["queued", "failed"]


def test_critical_third_attempt_waits_500ms_times_1_5_squared(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """Critical, attempt 3 of 5: 500 ms x 1.5^2 = 1.125 s."""
    delay = timedelta(milliseconds=1125)
    due = _failed(db, db_now, delay, priority=0, attempt=3, max_attempts=5)
    early = _failed(db, db_now, delay - MS, priority=0, attempt=3, max_attempts=5)

    run_task(db, settings, "requeue", now=db_now)

    assert _statuses(db, [due, early]) == ["queued", "failed"]
    assert events_of(db, due)[0]["reason"] == {"attempt": 3, "backoff_s": 1.125}


@pytest.mark.parametrize(
    ("priority", "attempt", "cap"),
    [
        (2, 10, timedelta(minutes=5)),  # 1 s x 2^9 = 512 s > 5 min
        (0, 12, timedelta(seconds=30)),  # 500 ms x 1.5^11 = 43 s > 30 s
        (2, 100, timedelta(minutes=5)),  # 2^99 s would overflow an interval
        (2, 999, timedelta(minutes=5)),  # 2^998 s: the most max_attempts (1000) allows
    ],
)
def test_backoff_is_capped_at_max_delay(
    db: Database, settings: Settings, db_now: datetime, priority: int, attempt: int, cap: timedelta
) -> None:
    """The backoff never exceeds the policy's max_delay, however many attempts came before."""
    due = _failed(db, db_now, cap, priority=priority, attempt=attempt, max_attempts=attempt + 1)
    early = _failed(
        db, db_now, cap - MS, priority=priority, attempt=attempt, max_attempts=attempt + 1
    )

    result = run_task(db, settings, "requeue", now=db_now)

    assert result.status == "ok", result.error
    assert _statuses(db, [due, early]) == ["queued", "failed"]
    assert events_of(db, due)[0]["reason"]["backoff_s"] == cap.total_seconds()


def test_backoff_and_budget_count_attempts_since_the_operator_reset(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A replayed job (attempt 5, budget reset at 4) has used 1 of 3 attempts: it is retried
    after attempt 1's backoff (1 s), not attempt 5's (16 s), and never dead-lettered."""
    due = _failed(db, db_now, timedelta(seconds=1), attempt=5, attempt_base=4)
    early = _failed(db, db_now, timedelta(seconds=1) - MS, attempt=5, attempt_base=4)
    spent = _failed(db, db_now, timedelta(hours=1), attempt=7, attempt_base=4)

    requeued = run_task(db, settings, "requeue", now=db_now)
    dead = run_task(db, settings, "dead-letter", now=db_now)

    assert _statuses(db, [due, early, spent]) == ["queued", "failed", "dead"]
    assert requeued.sample_ids == (due,)
    assert dead.sample_ids == (spent,)
    assert events_of(db, due)[0]["reason"] == {"attempt": 5, "backoff_s": 1.0}
    assert events_of(db, spent)[0]["reason"]["attempts_used"] == 3


def test_kind_policy_wins_over_priority_policy(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A kind's retry policy replaces its priority's: here 10 s x 3^(2-1) = 30 s, not 750 ms."""
    _kind_policy(db, "report", max_attempts=5, initial_s=10, max_s=60, multiplier=3, jitter=0)
    due = _failed(db, db_now, timedelta(seconds=30), kind="report", priority=0, attempt=2)
    early = _failed(db, db_now, timedelta(seconds=30) - MS, kind="report", priority=0, attempt=2)
    other_kind = _failed(db, db_now, timedelta(seconds=1), priority=0, attempt=2)

    run_task(db, settings, "requeue", now=db_now)

    assert _statuses(db, [due, early, other_kind]) == ["queued", "failed", "queued"]


def test_a_vanishing_jitter_does_not_underflow(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A policy's jitter of 5e-324 (allowed: >= 0) once made every requeue batch fail with
    "value out of range: underflow"; it now counts as none (found by hypothesis)."""
    _kind_policy(db, "tiny", max_attempts=5, initial_s=10, max_s=10, multiplier=1, jitter=5e-324)
    due = [_failed(db, db_now, timedelta(seconds=10), kind="tiny", attempt=1) for _ in range(20)]
    early = _failed(db, db_now, timedelta(seconds=10) - MS, kind="tiny", attempt=1)

    result = run_task(db, settings, "requeue", now=db_now)

    assert result.status == "ok", result.error
    assert _statuses(db, [*due, early]) == ["queued"] * 20 + ["failed"]


def test_jitter_is_fixed_per_job_and_attempt_and_within_bounds(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """Jitter of 0.5 spreads a 100 s backoff over [50 s, 150 s), the same for every run."""
    _kind_policy(db, "jittery", max_attempts=9, initial_s=100, max_s=100, multiplier=1, jitter=0.5)
    never = _failed(db, db_now, timedelta(seconds=50) - MS, kind="jittery")
    always = _failed(db, db_now, timedelta(seconds=150), kind="jittery")
    maybe = [_failed(db, db_now, timedelta(seconds=100), kind="jittery") for _ in range(8)]
    with db.transaction() as conn:
        delays = {
            r.id: r.delay.total_seconds()
            for r in conn.execute(
                text(
                    "SELECT j.id, backoff(j.attempt, p.initial_delay, p.max_delay, p.multiplier,"
                    " p.jitter, j.id) AS delay FROM jobs j, policy_for(j.kind, j.priority) p"
                )
            )
        }
        again = conn.execute(
            text("SELECT backoff(1, interval '100 s', interval '100 s', 1, 0.5, :id)"),
            {"id": maybe[0]},
        ).scalar_one()
    assert again.total_seconds() == delays[maybe[0]]
    assert all(50 <= d < 150 for d in delays.values())
    assert len(set(delays.values())) > 1, "jitter spreads the delays"

    first = run_task(db, settings, "requeue", now=db_now, dry_run=True)
    second = run_task(db, settings, "requeue", now=db_now, dry_run=True)
    real = run_task(db, settings, "requeue", now=db_now)

    assert first.transitions == second.transitions == real.transitions
    assert first.sample_ids == second.sample_ids == real.sample_ids
    expected = {always} | {m for m in maybe if delays[m] <= 100}
    assert set(real.sample_ids) == expected
    assert job(db, never)["status"] == "failed"
    for job_id in expected:
        backoff_s = events_of(db, job_id)[0]["reason"]["backoff_s"]
        assert backoff_s == round(delays[job_id], 3)


def test_stale_jobs_are_requeued_like_failed_ones(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """A stale job with attempts left is requeued after the same backoff as a failed one."""
    due = _failed(db, db_now, timedelta(seconds=1), status="stale")
    early = _failed(db, db_now, timedelta(seconds=1) - MS, status="stale")

    result = run_task(db, settings, "requeue", now=db_now)

    assert result.transitions == {"stale->queued": 1}
    assert _statuses(db, [due, early]) == ["queued", "stale"]


@pytest.mark.parametrize("status", ["failed", "stale"])
def test_no_attempts_left_is_never_requeued(
    db: Database, settings: Settings, db_now: datetime, status: str
) -> None:
    """attempt == max_attempts is left for dead-letter; attempt == max_attempts - 1 is requeued."""
    last = _failed(db, db_now, timedelta(days=1), status=status, attempt=3, max_attempts=3)
    one_left = _failed(db, db_now, timedelta(days=1), status=status, attempt=2, max_attempts=3)

    run_task(db, settings, "requeue", now=db_now)

    assert _statuses(db, [last, one_left]) == [status, "queued"]


def test_bulk_jobs_are_never_retried(db: Database, settings: Settings) -> None:
    """enqueue() gives bulk priority 1 attempt, so a failed bulk job is never requeued."""
    with db.transaction() as conn:
        job_id = conn.execute(text("SELECT enqueue(kind => 'b', priority => 4::smallint)")).scalar()
        (token,) = conn.execute(text("SELECT claim_token FROM claim(worker => 'w1')")).scalars()
        assert conn.execute(
            text("SELECT fail(job_id => :id, claim_token => :t)"), {"id": job_id, "t": token}
        ).scalar()
    assert isinstance(job_id, int)
    assert job(db, job_id)["max_attempts"] == 1

    result = run_task(db, settings, "requeue", now=db.now() + timedelta(days=1))

    assert result.transitions == {}
    assert job(db, job_id)["status"] == "failed"


def test_requeued_job_is_due_now_with_attempt_unchanged(
    db: Database, settings: Settings, db_now: datetime
) -> None:
    """Requeue sets run_at to the run's now, clears finished_at, keeps attempt, logs backoff_s."""
    job_id = _failed(
        db,
        db_now,
        timedelta(minutes=1),
        attempt=2,
        run_at=db_now - timedelta(hours=1),
        last_error='{"message": "boom"}',
    )

    result = run_task(db, settings, "requeue", now=db_now)

    row = job(db, job_id)
    assert (row["status"], row["run_at"], row["finished_at"], row["attempt"]) == (
        "queued",
        db_now,
        None,
        2,
    )
    (event,) = events_of(db, job_id)
    assert (event["from_status"], event["to_status"], event["at"], event["actor"]) == (
        "failed",
        "queued",
        db_now,
        "reconciler:requeue",
    )
    assert event["reason"] == {"attempt": 2, "backoff_s": 2}
    assert event["run_id"] == result.run_id
    assert run_task(db, settings, "requeue", now=db_now).transitions == {}
