"""A small queue in every state an operator meets, placed relative to the database's clock.

Used by the operator's-toolkit tests and by the README examples' test. Every
row is put where a command has something to find: failures to group, dead
jobs to export, a crashed worker, a slow job, old rows to purge.
"""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import text

from reconciler.cli import main
from reconciler.db import Database
from tests.helpers import insert_job

__all__ = ["CliRun", "insert_event", "seed"]


def insert_event(
    db: Database,
    job_id: int,
    from_status: str | None,
    to_status: str,
    at: datetime,
    *,
    actor: str = "worker:w1",
    reason: dict[str, Any] | None = None,
) -> None:
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)"
                " VALUES (:j, :f, :t, :at, :actor, CAST(:reason AS jsonb))"
            ),
            {
                "j": job_id,
                "f": from_status,
                "t": to_status,
                "at": at,
                "actor": actor,
                "reason": json.dumps(reason or {}),
            },
        )


# The claim token the live worker of the seed (w-live, job "slow") holds.
LIVE_TOKEN = UUID("00000000-0000-4000-8000-0000000000aa")


def seed(db: Database, now: datetime) -> dict[str, list[int]]:
    """Insert the queue; returns job ids by label."""

    def ago(**delta: float) -> datetime:
        return now - timedelta(**delta)

    ids: dict[str, list[int]] = {}

    def add(label: str, **values: Any) -> int:
        job_id = insert_job(db, **values)
        ids.setdefault(label, []).append(job_id)
        return job_id

    # email: three attempts failed ten minutes ago (SMTP timeout), two just due.
    for _ in range(3):
        error = {"message": "SMTP timeout"}
        job_id = add(
            "failed_email",
            queue="email",
            kind="email.send",
            tenant_id="acme",
            priority=1,
            status="failed",
            attempt=1,
            started_at=ago(minutes=11),
            finished_at=ago(minutes=10),
            created_at=ago(minutes=12),
            last_error=json.dumps(error),
        )
        insert_event(db, job_id, "running", "failed", ago(minutes=10), reason={"error": error})
    for _ in range(2):
        add(
            "queued_email",
            queue="email",
            kind="email.send",
            tenant_id="globex",
            priority=1,
            status="queued",
            run_at=ago(seconds=1),
            created_at=ago(seconds=1),
        )
    # reports: dead letters of two errors and two tenants.
    for tenant, message in (
        ("acme", "disk full"),
        ("acme", "disk full"),
        ("globex", "bad template"),
    ):
        error = {"message": message}
        job_id = add(
            "dead_report",
            queue="reports",
            kind="report.export",
            tenant_id=tenant,
            status="dead",
            attempt=3,
            started_at=ago(days=2, minutes=1),
            finished_at=ago(days=2),
            created_at=ago(days=2, hours=1),
            last_error=json.dumps(error),
        )
        insert_event(db, job_id, "failed", "dead", ago(days=2), actor="reconciler:dead-letter")
    # A crashed worker: its only job has been silent for 20 minutes.
    add(
        "stuck",
        queue="reports",
        kind="report.build",
        tenant_id="acme",
        status="running",
        attempt=1,
        locked_by="w-crashed",
        locked_at=ago(minutes=25),
        heartbeat_at=ago(minutes=20),
        started_at=ago(minutes=25),
        created_at=ago(minutes=26),
    )
    # A live worker with a job running for two hours.
    add(
        "slow",
        queue="reports",
        kind="report.build",
        tenant_id="globex",
        status="running",
        attempt=1,
        locked_by="w-live",
        claim_token=LIVE_TOKEN,
        locked_at=ago(hours=2),
        heartbeat_at=ago(seconds=10),
        started_at=ago(hours=2),
        created_at=ago(hours=2),
    )
    # Finished work: recent successes (durations), and old rows for purge.
    for seconds in (2, 4):
        job_id = add(
            "succeeded_recent",
            queue="reports",
            kind="report.build",
            status="succeeded",
            attempt=1,
            started_at=ago(minutes=30, seconds=seconds),
            finished_at=ago(minutes=30),
            created_at=ago(minutes=31),
        )
        insert_event(db, job_id, "running", "succeeded", ago(minutes=30))
    for _ in range(4):
        add(
            "succeeded_old",
            queue="reports",
            kind="report.build",
            status="succeeded",
            attempt=1,
            started_at=ago(days=40, seconds=5),
            finished_at=ago(days=40),
            created_at=ago(days=40, minutes=1),
        )
    add(
        "cancelled_old",
        queue="bulk",
        kind="archive",
        priority=4,
        status="cancelled",
        finished_at=ago(days=40),
        created_at=ago(days=41),
    )
    return ids


class CliRun:
    """``reconciler ...`` in this process, against the test's schema; output captured."""

    def __init__(self, monkeypatch: Any, capsys: Any, url: str, schema: str) -> None:
        monkeypatch.setenv("RECONCILER_DATABASE_URL", url)
        monkeypatch.setenv("RECONCILER_SCHEMA", schema)
        monkeypatch.setenv("RECONCILER_LOG_FORMAT", "json")
        self._monkeypatch = monkeypatch
        self._capsys = capsys

    def setenv(self, name: str, value: str) -> None:
        self._monkeypatch.setenv(name, value)

    def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        self._capsys.readouterr()
        self._monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        captured = self._capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def json_lines(self, *argv: str) -> list[Any]:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines() if line.strip()]
