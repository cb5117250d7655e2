"""Small helpers to place rows and read them back in tests."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text
from structlog.stdlib import ProcessorFormatter

from reconciler.db import Database

__all__ = ["events_of", "insert_job", "job", "jobs_by_status"]

_COLUMNS = (
    "queue",
    "kind",
    "tenant_id",
    "priority",
    "payload",
    "status",
    "attempt",
    "max_attempts",
    "run_at",
    "locked_by",
    "locked_at",
    "heartbeat_at",
    "started_at",
    "finished_at",
    "created_at",
    "last_error",
    "idempotency_key",
    "attempt_base",
    "claim_token",  # stored as claim_token_hash, as claim() stores it
)


_BINDS = {
    "payload": "CAST(:payload AS jsonb)",
    "last_error": "CAST(:last_error AS jsonb)",
    "claim_token": "sha256(uuid_send(CAST(:claim_token AS uuid)))",
}


def insert_job(db: Database, **values: Any) -> int:
    """Insert one job row as it would look at some point of its life; returns its id."""
    values.setdefault("kind", "test")
    values.setdefault("max_attempts", 3)
    if values.get("status") == "running":
        values.setdefault("locked_by", "w1")
    unknown = set(values) - set(_COLUMNS)
    assert not unknown, f"unknown columns {unknown}"
    cols = ", ".join("claim_token_hash" if k == "claim_token" else k for k in values)
    binds = ", ".join(_BINDS.get(k, f":{k}") for k in values)
    with db.transaction() as conn:
        job_id = conn.execute(
            text(f"INSERT INTO jobs ({cols}) VALUES ({binds}) RETURNING id"), values
        ).scalar_one()
    assert isinstance(job_id, int)
    return job_id


def job(db: Database, job_id: int) -> dict[str, Any]:
    with db.transaction() as conn:
        row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).one()
    return dict(row._mapping)


def events_of(db: Database, job_id: int) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        rows = conn.execute(
            text("SELECT * FROM job_events WHERE job_id = :id ORDER BY id"), {"id": job_id}
        ).all()
    return [dict(r._mapping) for r in rows]


def jobs_by_status(db: Database) -> dict[str, int]:
    with db.transaction() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    return {r[0]: int(r[1]) for r in rows}


def at(base: datetime, **delta: float) -> datetime:
    from datetime import timedelta

    return base + timedelta(**delta)


def scalar(db: Database, sql: str, **params: Any) -> Any:
    """One value from one query, in the test schema."""
    with db.transaction() as conn:
        return conn.execute(text(sql), params).scalar_one()


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 60.0, poll: float = 0.02
) -> None:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` seconds.

    The one way the tests wait for something: a deadline generous enough for a loaded
    2-core machine, never a fixed window in which the thing must happen.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting until {what}")
        time.sleep(poll)


@contextlib.contextmanager
def only_the_daemons_log_handler() -> Iterator[None]:
    """The root logger with the handler configure_logging installed and no other, as in
    a real process. pytest adds capturing handlers of its own to the root as each test
    starts, which sends reconciler.logs.log_many the ordinary way, one record a line."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [h for h in saved if isinstance(h.formatter, ProcessorFormatter)]
    assert len(root.handlers) == 1, "configure_logging has not installed its handler"
    try:
        yield
    finally:
        root.handlers[:] = saved
