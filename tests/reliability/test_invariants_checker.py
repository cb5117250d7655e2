"""The checker can fail: each invariant is broken on purpose and must report it.

No workload here: a handful of jobs moved through the real SQL API and the
real tasks, with the workers' records written as a worker would, then broken
by the kind of write a buggy worker or a careless operator makes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.conftest import make_settings
from tests.helpers import insert_job, wait_until
from tests.reliability.invariants import (
    Call,
    CheckConfig,
    History,
    InvariantResult,
    check_all,
    events_replay_to_status,
    every_job_accounted_for,
    fencing_held,
    install_witness,
    load_history,
    no_overlap_while_alive,
    no_overlapping_runs_or_double_transitions,
    no_stale_while_fresh,
    nothing_stuck,
)

TIMEOUT = timedelta(milliseconds=200)
CONFIG = CheckConfig(
    heartbeat_timeout=TIMEOUT,
    intervals={
        "mark-stale": timedelta(seconds=1),
        "requeue": timedelta(seconds=1),
        "dead-letter": timedelta(seconds=1),
        "purge": timedelta(seconds=1),
        "vacuum-analyze": timedelta(seconds=5),
    },
    retention={"succeeded": timedelta(0), "cancelled": timedelta(0), "dead": timedelta(0)},
    slack=timedelta(seconds=2),
)


class Sim:
    """Workers speaking the SQL API, writing down their calls as worker.py does."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.calls: list[Call] = []
        self.enqueued: set[int] = set()
        self.tokens: dict[tuple[int, int], UUID] = {}

    def sql(self, query: str, **params: Any) -> Any:
        with self.db.transaction() as conn:
            return conn.execute(text(query), params).one()

    def enqueue(self, **kw: Any) -> int:
        job = int(self.sql("SELECT enqueue(kind => 'k', max_attempts => 3)")[0])
        self.enqueued.add(job)
        return job

    def claim(self, worker: str) -> tuple[int, int]:
        job, attempt, at, token = self.sql(
            "SELECT c.id, c.attempt, now(), c.claim_token FROM claim(worker => :w) c", w=worker
        )
        self.calls.append(Call("start", job, attempt, worker, at))
        self.tokens[(int(job), int(attempt))] = token
        return int(job), int(attempt)

    def call(self, fn: str, job: int, worker: str, attempt: int) -> bool:
        """The call a worker makes with the token of its claim of (job, attempt)."""
        ok, at = self.sql(
            f"SELECT {fn}(job_id => :j, claim_token => :t), now()",
            j=job,
            t=self.tokens.get((job, attempt), uuid4()),
        )
        self.calls.append(
            Call({"heartbeat": "heartbeat"}.get(fn, fn), job, attempt, worker, at, ok)
        )
        return bool(ok)

    def run(self, task: str, now: datetime | None = None, **settings: Any) -> None:
        s = self.settings.model_copy(update=settings) if settings else self.settings
        result = run_task(self.db, s, task, now=now)
        assert result.status == "ok", result.error

    def now(self) -> datetime:
        return self.db.now()

    def outlive_timeout(self) -> None:
        """Let the database clock pass the heartbeat timeout (polled, nothing asserted on it)."""
        start = self.now()
        wait_until(
            lambda: self.now() - start > TIMEOUT, "the timeout to pass", timeout=10, poll=0.05
        )

    def history(self, config: CheckConfig = CONFIG) -> History:
        return load_history(self.db, config, calls=self.calls, enqueued=self.enqueued)


@pytest.fixture
def sim(db: Database, pg_url: str, schema: str) -> Sim:
    install_witness(db)
    with db.transaction() as conn:  # kind 'k' retries at once: no waiting for backoff
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier) VALUES ('k', 3, interval '0', interval '0', 1)"
            )
        )
    settings = make_settings(
        pg_url,
        schema,
        heartbeat_timeout=TIMEOUT,
        retention_succeeded=timedelta(milliseconds=1),
        retention_dead=timedelta(milliseconds=1),
    )
    return Sim(db, settings)


def _fails(result: InvariantResult, *words: str) -> None:
    assert not result.ok, result.line()
    text_ = " ".join(result.examples)
    for word in words:
        assert word in text_, result.examples


def _forge_stale_mark(sim: Sim, job: int, *, timeout_s: float, age_s: float) -> None:
    """A stale mark written by hand, as mark-stale would write it, with the reason given:
    the job's last heartbeat ``age_s`` old against a ``timeout_s`` timeout."""
    with sim.db.transaction() as conn:
        conn.execute(
            text(
                "WITH m AS (UPDATE jobs SET status = 'stale', locked_by = NULL, locked_at = NULL,"
                " finished_at = now() WHERE id = :id RETURNING id, attempt)"
                " INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)"
                " SELECT id, 'running', 'stale', now(), 'reconciler:mark-stale',"
                " jsonb_build_object('worker', 'w1', 'attempt', attempt, 'timeout_s', :t,"
                " 'heartbeat_age_s', :a,"
                " 'last_heartbeat_at', now() - make_interval(secs => CAST(:a AS float8)))"
                " FROM m"
            ),
            {"id": job, "t": timeout_s, "a": age_s},
        )


def clean_history(sim: Sim) -> None:
    """Three jobs: one succeeds, one fails and succeeds on retry, one's worker dies."""
    a, b, _ = sim.enqueue(), sim.enqueue(), sim.enqueue()
    job, att = sim.claim("w1")
    assert job == a
    assert sim.call("heartbeat", a, "w1", att)
    assert sim.call("complete", a, "w1", att)
    job, att = sim.claim("w2")
    assert sim.call("fail", b, "w2", att)
    job, att = sim.claim("w3")  # c: w3 dies without a heartbeat
    sim.outlive_timeout()
    sim.run("mark-stale")
    sim.run("requeue")
    for worker in ("w4", "w5"):
        job, att = sim.claim(worker)
        assert sim.call("complete", job, worker, att)
    sim.run("purge")


def test_a_clean_history_passes(sim: Sim) -> None:
    """Success, failure then retry, and a dead worker's job: every invariant holds."""
    clean_history(sim)
    results = check_all(sim.history())
    assert all(r.ok for r in results), "\n".join(r.line() + str(r.examples) for r in results)
    assert results[0].counts["purged"] == 3


def test_1_a_job_deleted_outside_purge_is_reported(sim: Sim) -> None:
    """A queued job deleted by hand is lost: invariant 1 fails."""
    clean_history(sim)
    lost = sim.enqueue()
    with sim.db.transaction() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": lost})
    _fails(every_job_accounted_for(sim.history()), f"job {lost}", "queued")


def test_1_a_purge_before_retention_is_reported(sim: Sim) -> None:
    """A succeeded job purged before its retention: invariant 1 fails."""
    clean_history(sim)
    strict = CheckConfig(**{**CONFIG.__dict__, "retention": {"succeeded": timedelta(hours=1)}})
    _fails(every_job_accounted_for(sim.history(strict)), "before its retention")


def test_1_a_job_with_no_trace_is_reported(sim: Sim) -> None:
    """An id the enqueuer got back that is neither present nor archived: lost."""
    sim.enqueued.add(10_000_000)
    _fails(every_job_accounted_for(sim.history()), "job 10000000", "lost")


def test_2_an_unfenced_reclaim_while_alive_is_reported(sim: Sim) -> None:
    """A second worker takes a live job by a direct UPDATE: two executions overlap."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    with sim.db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET locked_by = 'w2', attempt = attempt + 1,"
                " claim_token_hash = sha256(uuid_send(gen_random_uuid())) WHERE id = :id"
            ),
            {"id": job},
        )
    at = sim.now()
    sim.calls.append(Call("start", job, att + 1, "w2", at))
    assert not sim.call("heartbeat", job, "w1", att)
    _fails(no_overlap_while_alive(sim.history()), f"job {job}", "overlapped")


def test_3_a_stale_mark_below_the_timeout_is_reported(sim: Sim) -> None:
    """mark-stale run with a timeout shorter than the configured one: invariant 3 fails."""
    job = sim.enqueue()
    sim.claim("w1")
    wait_until(
        lambda: sim.now() > sim.calls[-1].at + timedelta(milliseconds=100), "100 ms", timeout=10
    )
    sim.run("mark-stale", heartbeat_timeout=timedelta(milliseconds=50))
    _fails(no_stale_while_fresh(sim.history()), f"job {job}", "below")


def test_3_a_stale_mark_while_the_worker_was_heartbeating_is_reported(sim: Sim) -> None:
    """A forged stale mark (event says 10 s old) against a heartbeat the worker just sent."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    assert sim.call("heartbeat", job, "w1", att)
    _forge_stale_mark(sim, job, timeout_s=2, age_s=10)
    _fails(no_stale_while_fresh(sim.history()), f"job {job}", "records show it alive")


def test_4_a_change_without_its_event_is_reported(sim: Sim) -> None:
    """A deliberately unfenced UPDATE running -> succeeded writes no event: replay disagrees."""
    job = sim.enqueue()
    sim.claim("w1")
    with sim.db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'succeeded', locked_by = NULL, locked_at = NULL"
                " WHERE id = :id"
            ),
            {"id": job},
        )
    _fails(events_replay_to_status(sim.history()), f"job {job}", "replay to running")


def test_4_a_forged_event_is_reported(sim: Sim) -> None:
    """An extra event with no change behind it breaks the chain."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    assert sim.call("complete", job, "w1", att)
    with sim.db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor)"
                " VALUES (:id, 'running', 'succeeded', now(), 'sql:forger')"
            ),
            {"id": job},
        )
    _fails(events_replay_to_status(sim.history()), f"job {job}", "follows")


def test_5_a_late_workers_unfenced_complete_is_reported(sim: Sim) -> None:
    """w1, marked stale, completes by a direct UPDATE while w2 holds the next attempt."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    sim.outlive_timeout()
    sim.run("mark-stale")
    sim.run("requeue")
    _, att2 = sim.claim("w2")
    ok, at = sim.sql(
        "WITH d AS (UPDATE jobs SET status = 'succeeded', locked_by = NULL, locked_at = NULL,"
        " finished_at = now() WHERE id = :id RETURNING id),"
        " e AS (INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)"
        " SELECT id, 'running', 'succeeded', now(), 'worker:w1', jsonb_build_object('attempt', :a)"
        " FROM d) SELECT EXISTS (SELECT 1 FROM d), now()",
        id=job,
        a=att,
    )
    sim.calls.append(Call("complete", job, att, "w1", at, ok))
    _fails(
        fencing_held(sim.history()),
        f"job {job}",
        "worker:w1",
        f"attempt {att2} was held by worker:w2",
    )


def test_5_a_heartbeat_accepted_after_the_stale_mark_is_reported(sim: Sim) -> None:
    """An unfenced heartbeat UPDATE lands on a job already marked stale."""
    t = sim.now()
    job = insert_job(
        sim.db, status="running", attempt=1, locked_by="w1", heartbeat_at=t - timedelta(minutes=1)
    )
    sim.run("mark-stale", now=t)
    ok, at = sim.sql(
        "WITH b AS (UPDATE jobs SET heartbeat_at = now() WHERE id = :id RETURNING 1)"
        " SELECT EXISTS (SELECT 1 FROM b), now()",
        id=job,
    )
    sim.calls.append(Call("heartbeat", job, 1, "w1", at, ok))
    _fails(fencing_held(sim.history()), f"job {job}", "took the attempt (stale)")


def test_6_overlapping_runs_of_one_task_are_reported(sim: Sim) -> None:
    """Two mark-stale runs whose batches interleave, though `runs` says one ended first (as a
    lease takeover rewrites finished_at): the batches, not the record, tell."""
    with sim.db.transaction() as conn:
        a, b = conn.execute(
            text(
                "INSERT INTO runs (task, started_at, finished_at, status, host, pid, actor)"
                " VALUES ('mark-stale', now() - interval '10 s', now() - interval '8 s',"
                " 'ok', 'h', 1, 'a'), ('mark-stale', now() - interval '8 s',"
                " now() - interval '2 s', 'ok', 'h', 2, 'a') RETURNING id"
            )
        ).scalars()
        conn.execute(
            text(
                "INSERT INTO rel_batches (run_id, at, pid) VALUES"
                " (:a, now() - interval '9 s', 1), (:b, now() - interval '7 s', 2),"
                " (:a, now() - interval '6 s', 1), (:b, now() - interval '3 s', 2)"
            ),
            {"a": a, "b": b},
        )
    _fails(no_overlapping_runs_or_double_transitions(sim.history()), "mark-stale", "before run")


def test_6_runs_that_take_turns_are_not_reported(sim: Sim) -> None:
    """Real runs one after the other, each witnessed by its batches: no overlap."""
    for _ in range(3):
        job = sim.enqueue()
        sim.claim("w1")
        sim.outlive_timeout()
        sim.run("mark-stale")
        assert job
    result = no_overlapping_runs_or_double_transitions(sim.history())
    assert result.ok, result.examples
    assert result.counts["runs_with_batches"] >= 3


def test_6_a_job_moved_twice_for_one_cause_is_reported(sim: Sim) -> None:
    """A second running -> stale event for the same attempt, as a second replica would write."""
    job = sim.enqueue()
    sim.claim("w1")
    sim.outlive_timeout()
    sim.run("mark-stale")
    with sim.db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason, run_id)"
                " SELECT job_id, from_status, to_status, at, actor, reason, run_id"
                " FROM job_events WHERE job_id = :id AND to_status = 'stale'"
            ),
            {"id": job},
        )
    _fails(no_overlapping_runs_or_double_transitions(sim.history()), f"job {job}", "2 times")


def test_7_a_job_left_running_without_heartbeats_is_reported(sim: Sim) -> None:
    """Nobody marked a long-dead worker's job stale."""
    t = sim.now()
    job = insert_job(sim.db, status="running", attempt=1, heartbeat_at=t - timedelta(hours=1))
    _fails(nothing_stuck(sim.history()), f"job {job}", "running with no heartbeat")


def test_7_a_failed_job_never_requeued_is_reported(sim: Sim) -> None:
    """A job failed an hour ago with attempts left and a 1 s backoff is still failed."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    assert sim.call("fail", job, "w1", att)
    with sim.db.transaction() as conn:
        conn.execute(
            text("UPDATE job_events SET at = at - interval '1 hour' WHERE job_id = :id"),
            {"id": job},
        )
    _fails(nothing_stuck(sim.history()), f"job {job}", "failed for")


# --- every branch of every invariant can fail -------------------------------------------------


def test_1_a_purged_job_whose_events_end_elsewhere_is_reported(sim: Sim) -> None:
    """Purged as succeeded, but its archived events end in another status."""
    clean_history(sim)
    with sim.db.transaction() as conn:
        job = conn.execute(
            text("SELECT job_id FROM rel_purged_events ORDER BY id DESC LIMIT 1")
        ).scalar_one()
        conn.execute(
            text(
                "UPDATE rel_purged_events SET to_status = 'failed'"
                " WHERE id = (SELECT max(id) FROM rel_purged_events WHERE job_id = :j)"
            ),
            {"j": job},
        )
    _fails(every_job_accounted_for(sim.history()), f"job {job}", "do not end there")


def test_2_a_stale_mark_while_the_worker_was_alive_within_the_timeout_is_reported(
    sim: Sim,
) -> None:
    """The first worker's records show it alive inside the mark's timeout; a second worker
    ran the job meanwhile."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    wait_until(
        lambda: sim.now() > sim.calls[-1].at + timedelta(milliseconds=100), "100 ms", timeout=10
    )
    sim.run("mark-stale", heartbeat_timeout=timedelta(milliseconds=50))
    mark = sim.history().stale_events()[(job, att)]
    # The worker's own record: an accepted heartbeat 10 ms before the mark.
    sim.calls.append(Call("heartbeat", job, att, "w1", mark.at - timedelta(milliseconds=10)))
    sim.run("requeue")
    _, att2 = sim.claim("w2")
    assert not sim.call("heartbeat", job, "w1", att)  # w1 still working after w2 started
    _fails(no_overlap_while_alive(sim.history()), f"job {job}", "was alive at")
    assert att2 == att + 1


def test_3_a_stale_mark_younger_than_its_own_timeout_is_reported(sim: Sim) -> None:
    """The event's own reason: heartbeat 1 s old, timeout 2 s."""
    job = sim.enqueue()
    sim.claim("w1")
    _forge_stale_mark(sim, job, timeout_s=2, age_s=1)
    _fails(no_stale_while_fresh(sim.history()), f"job {job}", "old at the mark")


def test_4_an_unlisted_transition_and_orphan_events_are_reported(sim: Sim) -> None:
    """An event chain through a transition the table does not list; events with no job."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    assert sim.call("complete", job, "w1", att)
    h = sim.history()
    h.transitions.discard(("running", "succeeded"))
    _fails(events_replay_to_status(h), f"job {job}", "not a listed transition")
    h = sim.history()
    h.events[10_000_001] = list(h.events[job])
    _fails(events_replay_to_status(h), "job 10000001", "does not exist")


def test_5_a_complete_that_returned_true_without_its_event_is_reported(sim: Sim) -> None:
    """The worker's record says complete() returned true; no event was written for it."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    sim.calls.append(Call("complete", job, att, "w1", sim.now(), True))
    _fails(fencing_held(sim.history()), f"job {job}", "returned true but wrote 0 events")


def test_5_a_fail_that_returned_false_but_wrote_an_event_is_reported(sim: Sim) -> None:
    """The worker was told no, yet an event of its fail() exists."""
    job = sim.enqueue()
    _, att = sim.claim("w1")
    assert sim.call("fail", job, "w1", att)
    sim.calls.append(Call("fail", job, att, "w1", sim.now(), False))
    _fails(fencing_held(sim.history()), f"job {job}", "returned false but wrote an event")


def test_7_a_stale_mark_long_after_the_last_heartbeat_is_reported(sim: Sim) -> None:
    """The mark's reason says the job stayed running an hour past its last heartbeat."""
    job = sim.enqueue()
    sim.claim("w1")
    _forge_stale_mark(sim, job, timeout_s=0.2, age_s=3600)
    _fails(nothing_stuck(sim.history()), f"job {job}", "stayed running")


def test_7_a_failed_job_with_no_attempts_left_never_dead_lettered_is_reported(
    sim: Sim,
) -> None:
    """Out of attempts, failed an hour ago, still failed: dead-letter's bound, not requeue's."""
    job = sim.enqueue()
    for worker in ("w1", "w2", "w3"):
        _, att = sim.claim(worker)
        assert sim.call("fail", job, worker, att)
        if worker != "w3":
            sim.run("requeue")
    with sim.db.transaction() as conn:
        conn.execute(
            text("UPDATE job_events SET at = at - interval '1 hour' WHERE job_id = :id"),
            {"id": job},
        )
    _fails(nothing_stuck(sim.history()), f"job {job}", "attempt 3/3", "failed for")
