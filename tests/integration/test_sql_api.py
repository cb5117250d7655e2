"""The worker-facing SQL API, called exactly as a worker in any language calls it.

Every call goes through a plain connection whose ``search_path`` is left
alone: the functions are reached by their schema-qualified, driver-quoted
name, with named arguments (``SELECT "schema".enqueue(kind => 'x')``).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import events_of, insert_job, job, wait_until
from tests.ops_data import CliRun

Conn = psycopg.Connection[dict[str, Any]]

# Long enough for any healthy server, short enough that a hang fails the test.
DEADLINE_S = 30.0


def _connect(pg_url: str) -> Conn:
    return psycopg.connect(pg_url, autocommit=True, row_factory=dict_row)


@pytest.fixture
def worker(pg_url: str, db: Database) -> Iterator[Conn]:
    """A worker's plain connection: autocommit, search_path as the server set it."""
    with _connect(pg_url) as conn:
        row = conn.execute("SELECT current_setting('search_path') AS sp").fetchone()
        assert row is not None
        assert db.schema not in row["sp"]
        yield conn


def _args(args: dict[str, Any]) -> tuple[sql.Composable, dict[str, Any]]:
    """``name => %(name)s, ...`` and the bound values (dicts sent as jsonb)."""
    named = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in args
    )
    values = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in args.items()}
    return named, values


def call(conn: Conn, schema: str, function: str, **args: Any) -> Any:
    """``SELECT "schema".function(name => value, ...)``: one scalar worker call."""
    named, values = _args(args)
    query = sql.SQL("SELECT {}({}) AS result").format(sql.Identifier(schema, function), named)
    row = conn.execute(query, values).fetchone()
    assert row is not None
    return row["result"]


def claim(conn: Conn, schema: str, **args: Any) -> list[dict[str, Any]]:
    """``SELECT * FROM "schema".claim(worker => ..., ...)``: the claimed rows, in order."""
    named, values = _args(args)
    query = sql.SQL("SELECT * FROM {}({})").format(sql.Identifier(schema, "claim"), named)
    return conn.execute(query, values).fetchall()


def literal(conn: Conn, schema: str, statement: str) -> dict[str, Any]:
    """Run SQL text as typed into psql; ``{schema}`` stands for the quoted schema name."""
    query = sql.SQL(statement).format(schema=sql.Identifier(schema))
    row = conn.execute(query).fetchone()
    assert row is not None
    return row


def snapshot(db: Database) -> dict[str, list[dict[str, Any]]]:
    """Every row of jobs and job_events, to show that a call changed nothing at all."""
    with db.transaction() as conn:
        return {
            table: [
                dict(r._mapping)
                for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id")).all()
            ]
            for table in ("jobs", "job_events")
        }


# --- enqueue ---------------------------------------------------------------------------


def test_enqueue_defaults(db: Database, worker: Conn) -> None:
    """enqueue(kind) alone: queue 'default', priority 2, payload {}, due now, 3 attempts."""
    row = literal(
        worker,
        db.schema,
        "SELECT {schema}.enqueue(kind => 'report') AS id, now() AS now, session_user AS me",
    )

    created = job(db, row["id"])
    expected = {
        "queue": "default",
        "kind": "report",
        "tenant_id": None,
        "priority": 2,
        "payload": {},
        "status": "queued",
        "attempt": 0,
        "max_attempts": 3,
        "run_at": row["now"],
        "locked_by": None,
        "locked_at": None,
        "heartbeat_at": None,
        "started_at": None,
        "finished_at": None,
        "created_at": row["now"],
        "updated_at": row["now"],
        "last_error": None,
        "idempotency_key": None,
    }
    assert {k: created[k] for k in expected} == expected
    (event,) = events_of(db, row["id"])
    assert (event["from_status"], event["to_status"], event["at"]) == (None, "queued", row["now"])
    assert event["actor"] == f"sql:{row['me']}"


@pytest.mark.parametrize(
    ("priority", "max_attempts"),
    [(0, 5), (1, 3), (2, 3), (3, 3), (4, 1)],
    ids=["critical", "high", "default", "low", "bulk"],
)
def test_enqueue_max_attempts_follow_the_priority_policy(
    db: Database, worker: Conn, priority: int, max_attempts: int
) -> None:
    """Without max_attempts, a job gets its priority's: critical 5, high/default/low 3, bulk 1."""
    row = literal(
        worker, db.schema, f"SELECT {{schema}}.enqueue(kind => 'x', priority => {priority}) AS id"
    )

    assert job(db, row["id"])["priority"] == priority
    assert job(db, row["id"])["max_attempts"] == max_attempts


def test_enqueue_kind_policy_overrides_the_priority_policy(db: Database, worker: Conn) -> None:
    """A kind's row in retry_policies sets max_attempts for that kind at any priority."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier) VALUES ('import', 7, interval '1 s', interval '1 min', 2)"
            )
        )

    for priority in (0, 2, 4):
        job_id = call(worker, db.schema, "enqueue", kind="import", priority=priority)
        assert job(db, job_id)["max_attempts"] == 7
    other = call(worker, db.schema, "enqueue", kind="export", priority=4)
    assert job(db, other)["max_attempts"] == 1


def test_enqueue_explicit_max_attempts_wins_over_every_policy(db: Database, worker: Conn) -> None:
    """max_attempts given by the caller is stored as given, whatever the policies say."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier) VALUES ('import', 7, interval '1 s', interval '1 min', 2)"
            )
        )

    by_kind = call(worker, db.schema, "enqueue", kind="import", max_attempts=2)
    by_priority = call(worker, db.schema, "enqueue", kind="x", priority=4, max_attempts=9)

    assert job(db, by_kind)["max_attempts"] == 2
    assert job(db, by_priority)["max_attempts"] == 9


def test_enqueue_stores_every_argument(db: Database, worker: Conn, db_now: datetime) -> None:
    """Each named argument lands in its column."""
    run_at = db_now + timedelta(hours=1)
    job_id = call(
        worker,
        db.schema,
        "enqueue",
        kind="email",
        payload={"to": "a@example.com", "n": [1, 2]},
        queue="mail",
        priority=1,
        run_at=run_at,
        max_attempts=4,
        idempotency_key="order-17",
        tenant_id="acme",
    )

    stored = job(db, job_id)
    assert {
        k: stored[k]
        for k in (
            "kind",
            "payload",
            "queue",
            "priority",
            "run_at",
            "max_attempts",
            "idempotency_key",
            "tenant_id",
            "status",
            "attempt",
        )
    } == {
        "kind": "email",
        "payload": {"to": "a@example.com", "n": [1, 2]},
        "queue": "mail",
        "priority": 1,
        "run_at": run_at,
        "max_attempts": 4,
        "idempotency_key": "order-17",
        "tenant_id": "acme",
        "status": "queued",
        "attempt": 0,
    }


def test_enqueue_rejects_an_unknown_priority(db: Database, worker: Conn) -> None:
    """A priority outside 0..4 is refused with a check_violation, and nothing is stored."""
    with pytest.raises(psycopg.errors.CheckViolation, match="priority 5 is out of range"):
        call(worker, db.schema, "enqueue", kind="x", priority=5)

    assert snapshot(db) == {"jobs": [], "job_events": []}


def test_repeated_idempotency_key_returns_the_same_job(db: Database, worker: Conn) -> None:
    """A second enqueue with the same key returns the first id; no second row, no second event."""
    first = call(worker, db.schema, "enqueue", kind="x", payload={"v": 1}, idempotency_key="k1")
    before = snapshot(db)

    again = call(worker, db.schema, "enqueue", kind="x", payload={"v": 2}, idempotency_key="k1")

    assert again == first
    assert snapshot(db) == before
    assert job(db, first)["payload"] == {"v": 1}
    other = call(worker, db.schema, "enqueue", kind="x", idempotency_key="k2")
    assert other != first


def test_an_idempotency_key_is_scoped_per_kind_and_tenant(db: Database, worker: Conn) -> None:
    """One key used by another tenant, or for another kind, is another job (before the fix a
    send_email job with a charge_card job's key was never created and got the other's id);
    within one kind and tenant, NULL tenant included, the key still returns the first job."""
    acme = call(
        worker, db.schema, "enqueue", kind="charge_card", tenant_id="acme", idempotency_key="o-1"
    )
    globex = call(
        worker, db.schema, "enqueue", kind="charge_card", tenant_id="globex", idempotency_key="o-1"
    )
    email = call(
        worker, db.schema, "enqueue", kind="send_email", tenant_id="acme", idempotency_key="o-1"
    )
    no_tenant = call(worker, db.schema, "enqueue", kind="send_email", idempotency_key="o-1")

    assert len({acme, globex, email, no_tenant}) == 4
    again = [
        call(worker, db.schema, "enqueue", kind=k, tenant_id=t, idempotency_key="o-1")
        for k, t in (("charge_card", "acme"), ("send_email", None))
    ]
    assert again == [acme, no_tenant]
    assert len(snapshot(db)["jobs"]) == 4


HOSTILE_ENQUEUES: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "run_at infinity": (
        {"kind": "x", "run_at": "infinity"},
        psycopg.errors.InvalidDatetimeFormat,
        "run_at infinity is not a moment in time",
    ),
    "run_at -infinity": (
        {"kind": "x", "run_at": "-infinity"},
        psycopg.errors.InvalidDatetimeFormat,
        "is not a moment in time",
    ),
    "no kind": ({"kind": None}, psycopg.errors.NullValueNotAllowed, "needs a kind"),
    "empty kind": ({"kind": ""}, psycopg.errors.NullValueNotAllowed, "needs a kind"),
    "max_attempts 0": (
        {"kind": "x", "max_attempts": 0},
        psycopg.errors.CheckViolation,
        "max_attempts 0 is out of range",
    ),
    "max_attempts huge": (
        {"kind": "x", "max_attempts": 2_000_000_000},
        psycopg.errors.CheckViolation,
        "out of range",
    ),
    "priority negative": (
        {"kind": "x", "priority": -1},
        psycopg.errors.CheckViolation,
        "priority -1 is out of range",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ENQUEUES))
def test_enqueue_refuses_hostile_values_with_a_clear_error(
    db: Database, worker: Conn, case: str
) -> None:
    """Non-finite times, no kind, absurd attempts or priorities: one clear error, nothing
    stored (before the fix run_at => '-infinity' was stored and broke check and stats)."""
    args, error, message = HOSTILE_ENQUEUES[case]
    with pytest.raises(error, match=message):
        call(worker, db.schema, "enqueue", **args)
    worker.rollback()
    assert snapshot(db) == {"jobs": [], "job_events": []}


def test_no_statement_can_store_an_infinite_time_in_jobs(db: Database) -> None:
    """Even SQL that bypasses the API cannot write infinity into a job's timestamps."""
    job_id = insert_job(db, status="queued")
    for column in ("run_at", "finished_at", "heartbeat_at"):
        refused = f"job {job_id}: {column} -infinity is not a moment in time"
        with pytest.raises(IntegrityError, match=refused), db.transaction() as conn:
            conn.execute(
                text(f"UPDATE jobs SET {column} = '-infinity' WHERE id = :id"), {"id": job_id}
            )


def test_enqueue_with_a_null_priority_takes_the_default_priority_policy(
    db: Database, worker: Conn
) -> None:
    """priority => NULL is the default priority 2, with its policy's max_attempts (before the
    fix it took whatever policy row came first)."""
    with db.transaction() as conn:
        conn.execute(text("UPDATE retry_policies SET max_attempts = 7 WHERE priority = 2"))
    job_id = call(worker, db.schema, "enqueue", kind="x", priority=None)
    stored = job(db, job_id)
    assert (stored["priority"], stored["max_attempts"]) == (2, 7)


@pytest.mark.parametrize("n", [-1, 1001])
def test_claim_refuses_a_count_out_of_range(db: Database, worker: Conn, n: int) -> None:
    """claim(n) takes 0 to 1000 jobs at a time; anything else is a clear error."""
    call(worker, db.schema, "enqueue", kind="x")
    with pytest.raises(psycopg.errors.CheckViolation, match="0 to 1000 jobs"):
        claim(worker, db.schema, worker="w1", n=n)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("timeout", {"message": "timeout"}),
        (["a", 1], {"message": ["a", 1]}),
        (None, {}),
        ({"message": "x" * 70_000}, {"message": "x" * 8192, "truncated": True}),
    ],
    ids=["string", "array", "null", "huge"],
)
def test_fail_keeps_an_error_object_of_bounded_size(
    db: Database, worker: Conn, given: Any, kept: dict[str, Any]
) -> None:
    """A bare value becomes {"message": value}; an error over 64 kB is cut to its first 8192
    characters, marked truncated; the job still fails."""
    call(worker, db.schema, "enqueue", kind="x")
    (held,) = claim(worker, db.schema, worker="w1")
    error = Jsonb(given) if given is not None else None
    ok = worker.execute(
        sql.SQL("SELECT {}(job_id => %s, claim_token => %s, error => %s) AS ok").format(
            sql.Identifier(db.schema, "fail")
        ),
        [held["id"], held["claim_token"], error],
    ).fetchone()
    assert ok == {"ok": True}
    assert job(db, held["id"])["last_error"] == kept


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
def test_concurrent_enqueues_with_one_key_make_one_job(
    pg_url: str, db: Database, worker: Conn, first_ends: str
) -> None:
    """Two enqueues of one key at once make one job: the first's, or the second's if it aborts."""
    # The first stays uncommitted until the second is seen waiting on it: a real race.
    with (
        psycopg.connect(pg_url, row_factory=dict_row) as first,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        first_id = call(first, db.schema, "enqueue", kind="x", idempotency_key="same")
        first_pid = first.info.backend_pid

        def second() -> int:
            with _connect(pg_url) as conn:
                job_id = call(conn, db.schema, "enqueue", kind="x", idempotency_key="same")
            assert isinstance(job_id, int)
            return job_id

        future = pool.submit(second)

        def second_is_waiting_on_first() -> bool:
            assert not future.done(), future.result()
            row = worker.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                [first_pid],
            ).fetchone()
            return row is not None and row["n"] == 1

        wait_until(second_is_waiting_on_first, "the second enqueue waits on the first")
        if first_ends == "commit":
            first.commit()
        else:
            first.rollback()
        second_id = future.result(timeout=DEADLINE_S)

    with db.transaction() as conn:
        rows = conn.execute(text("SELECT id FROM jobs")).scalars().all()
        events = conn.execute(text("SELECT job_id FROM job_events")).scalars().all()
    assert rows == [second_id]
    assert events == [second_id]
    assert (second_id == first_id) is (first_ends == "commit")


# --- claim -----------------------------------------------------------------------------


def _queued(db: Database, worker: Conn, run_at: datetime, **args: Any) -> int:
    job_id = call(worker, db.schema, "enqueue", kind="x", run_at=run_at, **args)
    assert isinstance(job_id, int)
    return job_id


def test_claim_hands_out_by_priority_then_run_at_then_id(
    db: Database, worker: Conn, db_now: datetime
) -> None:
    """claim() takes the highest priority first, then the earliest run_at, then the lowest id."""
    ago = {m: db_now - timedelta(minutes=m) for m in (1, 5, 10, 60)}
    low_old = _queued(db, worker, ago[60], priority=3)
    default_a = _queued(db, worker, ago[10])
    critical_new = _queued(db, worker, ago[1], priority=0)
    default_b = _queued(db, worker, ago[10])
    critical_old = _queued(db, worker, ago[5], priority=0)
    high = _queued(db, worker, ago[1], priority=1)
    bulk = _queued(db, worker, ago[60], priority=4)
    expected = [critical_old, critical_new, high, default_a, default_b, low_old, bulk]

    one_by_one = [claim(worker, db.schema, worker="w1")[0]["id"] for _ in range(3)]
    rest = [row["id"] for row in claim(worker, db.schema, worker="w1", n=10)]

    assert one_by_one + rest == expected
    assert claim(worker, db.schema, worker="w1") == []


def test_claim_skips_jobs_not_yet_due(db: Database, worker: Conn, db_now: datetime) -> None:
    """A job whose run_at is in the future is not claimed, and stays as it was."""
    later = _queued(db, worker, db_now + timedelta(minutes=5), priority=0)
    due = _queued(db, worker, db_now - timedelta(seconds=1), priority=4)
    before = job(db, later)

    claimed = claim(worker, db.schema, worker="w1", n=10)

    assert [row["id"] for row in claimed] == [due]
    assert job(db, later) == before
    assert len(events_of(db, later)) == 1


def test_claim_only_from_the_queues_asked_for(db: Database, worker: Conn, db_now: datetime) -> None:
    """queues filters by queue name; NULL or omitted means every queue; an empty array none."""
    due = db_now - timedelta(seconds=1)
    ids = {q: [_queued(db, worker, due, queue=q) for _ in range(2)] for q in ("a", "b", "c", "d")}

    assert claim(worker, db.schema, worker="w1", queues=[], n=10) == []
    picked = claim(worker, db.schema, worker="w1", queues=["a", "c"], n=10)
    assert sorted(row["id"] for row in picked) == ids["a"] + ids["c"]
    assert [row["id"] for row in claim(worker, db.schema, worker="w1", queues=None)] == [
        ids["b"][0]
    ]
    assert [row["id"] for row in claim(worker, db.schema, worker="w1", n=10)] == [
        ids["b"][1],
        *ids["d"],
    ]


def test_claim_takes_at_most_n(db: Database, worker: Conn, db_now: datetime) -> None:
    """n bounds how many jobs one call takes; it defaults to 1, and 0 takes none."""
    ids = [_queued(db, worker, db_now - timedelta(seconds=1)) for _ in range(6)]

    assert claim(worker, db.schema, worker="w1", n=0) == []
    assert [r["id"] for r in claim(worker, db.schema, worker="w1")] == ids[:1]
    assert [r["id"] for r in claim(worker, db.schema, worker="w1", n=3)] == ids[1:4]
    assert [r["id"] for r in claim(worker, db.schema, worker="w1", n=100)] == ids[4:]


def test_paused_queue_hands_out_nothing(db: Database, worker: Conn, db_now: datetime) -> None:
    """A queue with a row in paused_queues gives no job to claim() until it is resumed."""
    due = db_now - timedelta(seconds=1)
    paused = [_queued(db, worker, due, queue="media", priority=0) for _ in range(2)]
    running = _queued(db, worker, due, queue="default")
    with db.transaction() as conn:
        conn.execute(text("INSERT INTO paused_queues (queue, paused_by) VALUES ('media', 'ops')"))

    assert [r["id"] for r in claim(worker, db.schema, worker="w1", n=10)] == [running]
    assert claim(worker, db.schema, worker="w1", queues=["media"], n=10) == []
    assert all(job(db, j)["status"] == "queued" for j in paused)

    with db.transaction() as conn:
        conn.execute(text("DELETE FROM paused_queues"))
    assert [r["id"] for r in claim(worker, db.schema, worker="w1", n=10)] == paused


def test_pause_of_every_queue_hands_out_nothing(
    db: Database, worker: Conn, db_now: datetime
) -> None:
    """A paused_queues row '*' stops claim() for every queue, one first used after the
    pause too; the worker-name check still comes first; deleting the row restores claims."""
    due = db_now - timedelta(seconds=1)
    before = _queued(db, worker, due)
    with db.transaction() as conn:
        conn.execute(text("INSERT INTO paused_queues (queue, paused_by) VALUES ('*', 'ops')"))
    after = _queued(db, worker, due, queue="new-queue", priority=0)

    assert claim(worker, db.schema, worker="w1", n=10) == []
    assert claim(worker, db.schema, worker="w1", queues=["new-queue"], n=10) == []
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="needs a worker name"):
        claim(worker, db.schema, worker="")
    assert job(db, before)["status"] == job(db, after)["status"] == "queued"

    with db.transaction() as conn:
        conn.execute(text("DELETE FROM paused_queues WHERE queue = '*'"))
    assert [r["id"] for r in claim(worker, db.schema, worker="w1", n=10)] == [after, before]


@pytest.mark.parametrize("attempts_before", [0, 2])
def test_claim_marks_the_job_running_for_the_worker(
    db: Database, worker: Conn, db_now: datetime, attempts_before: int
) -> None:
    """claim() sets running, attempt + 1, the lock and its times, and writes one event."""
    job_id = insert_job(
        db, status="queued", attempt=attempts_before, run_at=db_now - timedelta(seconds=1)
    )

    named, values = _args({"worker": "w7"})
    (row,) = worker.execute(
        sql.SQL("SELECT c.*, now() AS claimed_at FROM {}({}) c").format(
            sql.Identifier(db.schema, "claim"), named
        ),
        values,
    ).fetchall()

    claimed_at = row.pop("claimed_at")
    token = row.pop("claim_token")
    stored = job(db, job_id)
    assert row == {k: v for k, v in stored.items() if k in row}
    assert stored["claim_token_hash"] == hashlib.sha256(token.bytes).digest()
    assert stored["status"] == "running"
    assert stored["attempt"] == attempts_before + 1
    assert stored["locked_by"] == "w7"
    assert stored["locked_at"] == stored["heartbeat_at"] == stored["started_at"] == claimed_at
    assert stored["finished_at"] is None
    (event,) = events_of(db, job_id)
    assert (event["from_status"], event["to_status"]) == ("queued", "running")
    assert (event["actor"], event["at"]) == ("worker:w7", claimed_at)
    assert event["reason"] == {"attempt": attempts_before + 1}


def test_claim_skips_a_job_another_worker_is_claiming(
    pg_url: str, db: Database, worker: Conn, db_now: datetime
) -> None:
    """While one worker's claim is uncommitted, another gets the next job at once (SKIP LOCKED)."""
    first, second = (_queued(db, worker, db_now - timedelta(seconds=1)) for _ in range(2))
    # Only a safety net: a claim that waited on the held row would fail here instead of hanging.
    worker.execute("SET lock_timeout = '10s'")

    with psycopg.connect(pg_url, row_factory=dict_row) as holder:
        assert [r["id"] for r in claim(holder, db.schema, worker="w1")] == [first]
        assert [r["id"] for r in claim(worker, db.schema, worker="w2", n=5)] == [second]
        holder.commit()

    assert (job(db, first)["locked_by"], job(db, second)["locked_by"]) == ("w1", "w2")


def test_concurrent_claimers_never_share_a_job(
    pg_url: str, db: Database, worker: Conn, db_now: datetime
) -> None:
    """8 workers claiming at once from their own connections: every job goes to exactly one."""
    total, workers = 200, 8
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, max_attempts, run_at)"
                " SELECT 'x', 3, CAST(:due AS timestamptz) FROM generate_series(1, :n)"
            ),
            {"due": db_now - timedelta(seconds=1), "n": total},
        )
    start = threading.Barrier(workers)

    def work(index: int) -> list[tuple[int, str]]:
        name = f"w{index}"
        got: list[tuple[int, str]] = []
        with _connect(pg_url) as conn:
            start.wait(timeout=DEADLINE_S)
            while rows := claim(conn, db.schema, worker=name, n=1 + index % 3):
                got.extend((row["id"], name) for row in rows)
        return got

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [
            pair
            for future in [pool.submit(work, i) for i in range(workers)]
            for pair in future.result(timeout=DEADLINE_S)
        ]

    claimed = [job_id for job_id, _ in results]
    assert len(claimed) == len(set(claimed)) == total
    with db.transaction() as conn:
        stored = {
            r.id: (r.status, r.attempt, r.locked_by)
            for r in conn.execute(text("SELECT id, status, attempt, locked_by FROM jobs"))
        }
        events = conn.execute(
            text("SELECT job_id, from_status, to_status, actor FROM job_events")
        ).all()
    assert stored == {job_id: ("running", 1, name) for job_id, name in results}
    assert sorted(tuple(e) for e in events) == sorted(
        (job_id, "queued", "running", f"worker:{name}") for job_id, name in results
    )


# --- heartbeat, complete, fail: the holder, and everyone else --------------------------


def _claimed(db: Database, worker: Conn, name: str = "w1") -> dict[str, Any]:
    call(worker, db.schema, "enqueue", kind="x")
    (row,) = claim(worker, db.schema, worker=name)
    return row


def test_heartbeat_by_the_holder_moves_heartbeat_at_only(db: Database, worker: Conn) -> None:
    """heartbeat() with the claim's token returns true and sets heartbeat_at; no transition."""
    held = _claimed(db, worker)
    before = job(db, held["id"])
    events = events_of(db, held["id"])

    row = worker.execute(
        sql.SQL("SELECT {}(job_id => %s, claim_token => %s) AS ok, now()").format(
            sql.Identifier(db.schema, "heartbeat")
        ),
        [held["id"], held["claim_token"]],
    ).fetchone()

    assert row is not None
    assert row["ok"] is True
    after = job(db, held["id"])
    assert after["heartbeat_at"] == row["now"]
    assert {k: v for k, v in after.items() if k not in ("heartbeat_at", "updated_at")} == {
        k: v for k, v in before.items() if k not in ("heartbeat_at", "updated_at")
    }
    assert events_of(db, held["id"]) == events


def test_claim_returns_a_token_and_stores_only_its_hash(db: Database, worker: Conn) -> None:
    """Each claim hands out a fresh random token; the row keeps sha256 of it, never the token."""
    first = _claimed(db, worker)
    second = _claimed(db, worker)

    assert isinstance(first["claim_token"], UUID)
    assert first["claim_token"] != second["claim_token"]
    stored = job(db, first["id"])
    assert stored["claim_token_hash"] == hashlib.sha256(first["claim_token"].bytes).digest()
    assert str(first["claim_token"]) not in json.dumps(
        [stored, events_of(db, first["id"])], default=str
    )


def test_complete_by_the_holder_succeeds_with_one_event(db: Database, worker: Conn) -> None:
    """complete() by the holder: succeeded, finished, unlocked, one running->succeeded event."""
    held = _claimed(db, worker)

    ok = call(worker, db.schema, "complete", job_id=held["id"], claim_token=held["claim_token"])

    assert ok is True
    done = job(db, held["id"])
    assert (done["status"], done["locked_by"], done["locked_at"]) == ("succeeded", None, None)
    assert done["claim_token_hash"] is None
    assert done["finished_at"] is not None
    assert done["last_error"] is None
    new_events = events_of(db, held["id"])[2:]
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in new_events] == [
        ("running", "succeeded", "worker:w1")
    ]
    assert new_events[0]["at"] == done["finished_at"]


def test_fail_by_the_holder_stores_the_error_with_one_event(db: Database, worker: Conn) -> None:
    """fail() by the holder: failed, unlocked, last_error stored, one running->failed event."""
    held = _claimed(db, worker)
    error = {"type": "TimeoutError", "message": "upstream took 30s", "trace": ["a", "b"]}

    ok = call(
        worker, db.schema, "fail", job_id=held["id"], claim_token=held["claim_token"], error=error
    )

    assert ok is True
    failed = job(db, held["id"])
    assert (failed["status"], failed["locked_by"], failed["locked_at"]) == ("failed", None, None)
    assert failed["last_error"] == error
    assert failed["finished_at"] is not None
    new_events = events_of(db, held["id"])[2:]
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in new_events] == [
        ("running", "failed", "worker:w1")
    ]
    assert new_events[0]["reason"] == {"attempt": 1, "error": error}


def _fenced_call(worker: Conn, schema: str, function: str, job_id: int, token: Any) -> Any:
    if function == "fail":
        return call(worker, schema, "fail", job_id=job_id, claim_token=token, error={"late": True})
    return call(worker, schema, function, job_id=job_id, claim_token=token)


FUNCTIONS = ["heartbeat", "complete", "fail"]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("token", ["guessed", "another_jobs", "none"])
def test_a_caller_without_the_claims_token_changes_nothing(
    db: Database, worker: Conn, function: str, token: str
) -> None:
    """heartbeat/complete/fail with a guessed token, another job's token (the same worker holds
    both) or no token return false; no row changes."""
    held = _claimed(db, worker)
    other = _claimed(db, worker)
    presented = {"guessed": uuid4(), "another_jobs": other["claim_token"], "none": None}[token]
    before = snapshot(db)

    assert _fenced_call(worker, db.schema, function, held["id"], presented) is False

    assert snapshot(db) == before


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("reclaimed_by", ["w1", "w2"])
def test_late_worker_is_fenced_after_stale_requeue_and_reclaim(
    db: Database,
    settings: Settings,
    worker: Conn,
    db_now: datetime,
    function: str,
    reclaimed_by: str,
) -> None:
    """After mark-stale, requeue and a new claim, the first claim's call is refused in full."""
    held = _claimed(db, worker, "w1")
    # The worker went silent: its last sign of life is an hour old.
    with db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET heartbeat_at = heartbeat_at - interval '1 hour',"
                " locked_at = locked_at - interval '1 hour' WHERE id = :id"
            ),
            {"id": held["id"]},
        )
    # Fixed clocks in the past of the real one, so the requeued job is due for claim().
    stale = run_task(db, settings, "mark-stale", now=db_now - timedelta(minutes=1))
    requeued = run_task(db, settings, "requeue", now=db_now)
    assert stale.transitions == {"running->stale": 1}
    assert requeued.transitions == {"stale->queued": 1}
    (again,) = claim(worker, db.schema, worker=reclaimed_by)
    assert (again["id"], again["attempt"]) == (held["id"], 2)
    before = snapshot(db)

    assert _fenced_call(worker, db.schema, function, held["id"], held["claim_token"]) is False

    assert snapshot(db) == before
    assert _fenced_call(worker, db.schema, function, held["id"], again["claim_token"]) is True


OPERATOR_PATHS = {
    # How an operator sends a job back to the queue, from a running first attempt.
    "cancel-requeue": (("jobs", "cancel"), ("jobs", "requeue")),
    "stale-requeue": (("jobs", "reset-stuck"), ("jobs", "requeue")),
    "dead-replay": (None, ("dead-letter", "replay")),
}


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("path", sorted(OPERATOR_PATHS))
def test_the_fence_never_repeats_after_an_operator_sends_the_job_back(
    db: Database, worker: Conn, cli: CliRun, function: str, path: str
) -> None:
    """An operator's requeue gives the job a fresh retry budget but never a used attempt number:
    the same worker name claiming it again gets attempt 2, and the first claim's late
    heartbeat/complete/fail is refused (before the fix, attempt was reset to 0 and the old
    (worker, attempt 1) passed the fence)."""
    held = _claimed(db, worker, "host:1")
    first, then = OPERATOR_PATHS[path]
    if first is None:  # a job that ran out of attempts: failed, then dead-lettered
        assert _fenced_call(worker, db.schema, "fail", held["id"], held["claim_token"]) is True
        with db.transaction() as conn:
            conn.execute(
                text("UPDATE jobs SET max_attempts = 1 WHERE id = :id"), {"id": held["id"]}
            )
        assert cli.json("run", "dead-letter")["transitions"] == {"failed->dead": 1}
    elif first == ("jobs", "reset-stuck"):
        with db.transaction() as conn:
            conn.execute(
                text(
                    "UPDATE jobs SET heartbeat_at = heartbeat_at - interval '1 hour',"
                    " locked_at = locked_at - interval '1 hour' WHERE id = :id"
                ),
                {"id": held["id"]},
            )
        assert cli.json(*first, "--older-than", "10m", "--yes")["changed"] == 1
    else:
        assert cli.json(*first, str(held["id"]), "--yes")["changed"] == 1
    assert cli.json(*then, str(held["id"]), "--yes")["changed"] == 1

    (again,) = claim(worker, db.schema, worker="host:1")
    before = snapshot(db)

    assert again["attempt"] == 2
    assert _fenced_call(worker, db.schema, function, held["id"], held["claim_token"]) is False
    assert snapshot(db) == before
    assert _fenced_call(worker, db.schema, function, held["id"], again["claim_token"]) is True
    stored = job(db, held["id"])
    assert (stored["attempt"], stored["attempt_base"]) == (2, 1)
    claims = [
        e["reason"]["attempt"] for e in events_of(db, held["id"]) if e["to_status"] == "running"
    ]
    assert claims == [1, 2]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("state", ["queued", "succeeded", "failed", "stale", "cancelled"])
def test_a_job_that_is_not_running_is_not_touched(
    db: Database, worker: Conn, db_now: datetime, function: str, state: str
) -> None:
    """heartbeat/complete/fail on a job not running return false, even with its last token."""
    if state == "queued":
        job_id, token = call(worker, db.schema, "enqueue", kind="x"), uuid4()
    else:
        held = _claimed(db, worker, "w1")
        job_id, token = held["id"], held["claim_token"]
        with db.transaction() as conn:
            conn.execute(
                text(
                    "UPDATE jobs SET status = :s, locked_by = NULL, locked_at = NULL,"
                    " finished_at = CAST(:now AS timestamptz) WHERE id = :id"
                ),
                {"s": state, "now": db_now, "id": job_id},
            )
    before = snapshot(db)

    assert _fenced_call(worker, db.schema, function, job_id, token) is False

    assert snapshot(db) == before


@pytest.mark.parametrize("function", FUNCTIONS)
def test_an_unknown_job_id_returns_false(db: Database, worker: Conn, function: str) -> None:
    """heartbeat/complete/fail for a job id that does not exist return false, no error."""
    assert _fenced_call(worker, db.schema, function, 999_999, uuid4()) is False
    assert snapshot(db) == {"jobs": [], "job_events": []}


def test_tokens_stay_out_of_log_liness(db: Database, log_lines: io.StringIO) -> None:
    """At RECONCILER_LOG_LEVEL=debug, SQLAlchemy's lines name the statements run through the
    reconciler's engine (the demo's workers use it) but show neither bound values nor rows."""
    with db.transaction() as conn:
        conn.execute(text("SELECT enqueue(kind => 'x')"))
        token = conn.execute(text("SELECT claim_token FROM claim(worker => 'w1')")).scalar_one()
        assert conn.execute(
            text("SELECT heartbeat(job_id => 1, claim_token => :t)"), {"t": token}
        ).scalar_one()

    logged = log_lines.getvalue()
    assert "SELECT heartbeat(job_id => 1, claim_token => %(t)s)" in logged
    assert str(token) not in logged and token.hex not in logged


def test_tokens_appear_in_no_event_and_no_output(
    db: Database, worker: Conn, cli: CliRun, settings: Settings
) -> None:
    """The claim token is in claim()'s result only: not in job_events, jobs show --json,
    jobs list, or a dead-letter export; the stored hash is in none of them either."""
    running = _claimed(db, worker)
    dead = _claimed(db, worker)
    with db.transaction() as conn:
        conn.execute(text("UPDATE jobs SET max_attempts = 1 WHERE id = :id"), {"id": dead["id"]})
    assert call(worker, db.schema, "fail", job_id=dead["id"], claim_token=dead["claim_token"])
    assert run_task(db, settings, "dead-letter").transitions == {"failed->dead": 1}
    tokens = [running["claim_token"], dead["claim_token"]]
    (stored_hash,) = [r["claim_token_hash"] for r in snapshot(db)["jobs"] if r["claim_token_hash"]]
    secrets = [*(str(t) for t in tokens), *(t.hex for t in tokens), stored_hash.hex()]

    outputs = {
        "events": repr(snapshot(db)["job_events"]),
        "show": cli("jobs", "show", str(running["id"]), "--json")[1],
        "show table": cli("jobs", "show", str(running["id"]))[1],
        "list": cli("jobs", "list", "--json")[1],
        "export": cli("dead-letter", "export")[1],
    }

    assert "claim_token" not in outputs["show"]
    assert str(dead["id"]) in outputs["export"]
    for name, output in outputs.items():
        for secret in secrets:
            assert secret not in output, f"{name} shows a token or its hash"


@pytest.mark.parametrize("name", [None, ""])
def test_claim_without_a_worker_name_is_refused(
    db: Database, worker: Conn, db_now: datetime, name: str | None
) -> None:
    """claim() with a NULL or empty worker raises a clear error and claims nothing."""
    job_id = _queued(db, worker, db_now - timedelta(seconds=1))
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="claim\\(\\) needs a worker name"):
        claim(worker, db.schema, worker=name)
    assert job(db, job_id)["status"] == "queued"


def test_attempt_cannot_go_down_whoever_writes(db: Database, worker: Conn) -> None:
    """Even SQL typed into psql cannot lower attempt (the fence would repeat); a job that stops
    running loses its token's hash."""
    held = _claimed(db, worker)
    with pytest.raises(IntegrityError, match="cannot go down"), db.transaction() as conn:
        conn.execute(text("UPDATE jobs SET attempt = 0 WHERE id = :id"), {"id": held["id"]})
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET status = 'stale', locked_by = NULL WHERE id = :id"),
            {"id": held["id"]},
        )
    assert job(db, held["id"])["claim_token_hash"] is None
    assert job(db, held["id"])["attempt"] == 1
