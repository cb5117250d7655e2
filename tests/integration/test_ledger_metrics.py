"""Job counters from the ledger: each event counted once, late commits included."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ledger_metrics import GAP_TTL_S, LedgerCounters


def _conn(pg_url: str, db: Database, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    conn = psycopg.connect(pg_url, autocommit=autocommit)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.schema)))
    if not autocommit:
        conn.commit()
    return conn


def _total(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for family in registry.collect() for s in family.samples if s.name == name)


def test_a_workers_day_is_counted_by_transition_attempt_duration_and_wait(
    pg_url: str, db: Database
) -> None:
    """Counting starts at the head; enqueue, claim, complete, fail show up once each."""
    registry = CollectorRegistry()
    ledger = LedgerCounters(db, registry)
    with _conn(pg_url, db) as conn:
        conn.execute("SELECT enqueue(kind => 'before', queue => 'email')")
        assert ledger.poll()  # the head: what came before is not counted
        for _ in range(3):
            conn.execute("SELECT enqueue(kind => 'k', queue => 'email', priority => 1)")
        for fn in ("complete", "complete", "fail"):
            row = conn.execute(
                "SELECT id, claim_token FROM claim(worker => 'w', queues => '{email}')"
            ).fetchone()
            assert row is not None
            if fn == "fail":
                conn.execute('SELECT fail(%s, %s, \'{"message": "boom"}\')', row)
            else:
                conn.execute(f"SELECT {fn}(%s, %s)", row)
    assert ledger.poll()
    value = registry.get_sample_value
    base = {"queue": "email", "priority": "high"}
    assert (
        value(
            "reconciler_job_transitions_total",
            {**base, "from_status": "none", "to_status": "queued"},
        )
        == 3
    )
    assert (
        value(
            "reconciler_job_transitions_total",
            {**base, "from_status": "running", "to_status": "succeeded"},
        )
        == 2
    )
    assert value("reconciler_job_failures_total", {**base, "attempt": "1"}) == 1
    assert value("reconciler_job_duration_seconds_count", {**base, "outcome": "succeeded"}) == 2
    assert value("reconciler_job_wait_seconds_count", base) == 3
    assert _total(registry, "reconciler_job_transitions_total") == 9  # 3 + 3 claims + 3 ends
    assert ledger.poll()  # nothing new: nothing more counted
    assert _total(registry, "reconciler_job_transitions_total") == 9


def test_an_event_that_commits_after_a_later_one_is_counted_once(pg_url: str, db: Database) -> None:
    """A takes an id, B takes the next and commits, the scrape runs, then A commits: the
    cursor has passed A's id, and A's event is still counted, once."""
    registry = CollectorRegistry()
    ledger = LedgerCounters(db, registry)
    assert ledger.poll()
    with _conn(pg_url, db, autocommit=False) as a, _conn(pg_url, db) as b:
        a.execute("SELECT enqueue(kind => 'a')")  # id N, not committed
        b.execute("SELECT enqueue(kind => 'b')")  # id N + 1, committed
        assert ledger.poll()
        assert _total(registry, "reconciler_job_transitions_total") == 1
        assert len(ledger.gaps) == 1
        a.commit()
    assert ledger.poll()
    assert _total(registry, "reconciler_job_transitions_total") == 2
    assert ledger.gaps == {}
    assert ledger.poll()
    assert _total(registry, "reconciler_job_transitions_total") == 2


def test_a_rolled_back_id_is_given_up_after_the_gap_ttl(pg_url: str, db: Database) -> None:
    """An id that never commits is watched for GAP_TTL_S, then dropped; nothing counted."""
    now = [0.0]
    registry = CollectorRegistry()
    ledger = LedgerCounters(db, registry, clock=lambda: now[0])
    assert ledger.poll()
    with _conn(pg_url, db, autocommit=False) as a, _conn(pg_url, db) as b:
        a.execute("SELECT enqueue(kind => 'a')")
        b.execute("SELECT enqueue(kind => 'b')")
        a.rollback()
    assert ledger.poll()
    assert len(ledger.gaps) == 1
    now[0] += GAP_TTL_S + 1
    assert ledger.poll()
    assert ledger.gaps == {}
    assert _total(registry, "reconciler_job_transitions_total") == 1


def test_concurrent_writers_committing_in_any_order_are_counted_exactly(
    pg_url: str, db: Database
) -> None:
    """Eight connections enqueue in transactions held open for random moments while the
    ledger is polled throughout: in the end the counters equal the ledger, event for event."""
    registry = CollectorRegistry()
    ledger = LedgerCounters(db, registry)
    assert ledger.poll()
    with db.transaction() as conn:
        head = conn.execute(text("SELECT coalesce(max(id), 0) FROM job_events")).scalar_one()
    stop = threading.Event()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with _conn(pg_url, db, autocommit=False) as conn:
            for _ in range(25):
                conn.execute("SELECT enqueue(kind => 'w')")
                stop.wait(rng.uniform(0, 0.01))
                if rng.random() < 0.2:
                    conn.rollback()
                else:
                    conn.commit()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        assert ledger.poll()
    for t in threads:
        t.join()
    assert ledger.poll()
    with db.transaction() as conn:
        truth = conn.execute(
            text("SELECT count(*) FROM job_events WHERE id > :h"), {"h": head}
        ).scalar_one()
    assert truth > 0
    assert _total(registry, "reconciler_job_transitions_total") == truth
