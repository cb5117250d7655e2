"""Every dead-lettered job is said out loud: a log line each, a Sentry event each, limited."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sentry_sdk

from reconciler import signals
from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import insert_job, only_the_daemons_log_handler
from tests.integration.conftest import Recorder, events


@pytest.fixture(autouse=True)
def _fresh_window() -> Iterator[None]:
    signals.reset()
    yield
    signals.reset()


def _exhausted(db: Database, now: datetime, kind: str, message: str, **values: Any) -> int:
    return insert_job(
        db,
        status="failed",
        kind=kind,
        attempt=3,
        max_attempts=3,
        finished_at=now - timedelta(minutes=1),
        last_error=json.dumps({"message": message}),
        **values,
    )


def test_every_dead_lettered_job_gets_a_log_line_with_what_an_operator_needs(
    db: Database, settings: Settings, db_now: datetime, log_lines: io.StringIO
) -> None:
    """Job id, queue, kind, tenant, attempt and the last error's message, at warning."""
    job_id = _exhausted(db, db_now, "email.send", "SMTP timeout", queue="email", tenant_id="acme")
    result = run_task(db, settings, "dead-letter", now=db_now)
    (line,) = events(log_lines, "job.dead_lettered")
    assert line["level"] == "warning"
    assert {k: line[k] for k in ("job_id", "queue", "kind", "tenant", "attempt", "error")} == {
        "job_id": job_id,
        "queue": "email",
        "kind": "email.send",
        "tenant": "acme",
        "attempt": 3,
        "error": "SMTP timeout",
    }
    assert line["run_id"] == result.run_id


def test_a_dry_run_says_nothing(
    db: Database, settings: Settings, db_now: datetime, log_lines: io.StringIO
) -> None:
    """Nothing went dead in a dry run: no line, no event."""
    _exhausted(db, db_now, "k", "boom")
    run_task(db, settings, "dead-letter", now=db_now, dry_run=True)
    assert events(log_lines, "job.dead_lettered") == []


def test_one_sentry_event_per_job_grouped_by_kind_and_error(
    db: Database, settings: Settings, db_now: datetime, sentry: Recorder
) -> None:
    """Each dead job is an event fingerprinted by kind and error, tagged with queue and kind."""
    _exhausted(db, db_now, "email.send", "SMTP timeout")
    _exhausted(db, db_now, "email.send", "SMTP timeout")
    _exhausted(db, db_now, "report.build", "disk full")
    run_task(db, settings, "dead-letter", now=db_now)
    sentry_sdk.flush()
    events = sentry.items("event")
    assert len(events) == 3
    fingerprints = sorted(tuple(e["fingerprint"]) for e in events)
    assert fingerprints == [
        ("reconciler-dead-letter", "email.send", "SMTP timeout"),
        ("reconciler-dead-letter", "email.send", "SMTP timeout"),
        ("reconciler-dead-letter", "report.build", "disk full"),
    ]
    assert {e["tags"]["kind"] for e in events} == {"email.send", "report.build"}


def test_a_mass_failure_sends_a_summary_not_thousands_ofevents(
    db: Database, settings: Settings, db_now: datetime, sentry: Recorder
) -> None:
    """Past RECONCILER_SENTRY_DEAD_LETTER_EVENTS in the window: one summary per run."""
    limited = settings.model_copy(update={"sentry_dead_letter_events": 2})
    for _ in range(5):
        _exhausted(db, db_now, "email.send", "SMTP timeout")
    run_task(db, limited, "dead-letter", now=db_now)
    for _ in range(2):
        _exhausted(db, db_now, "email.send", "SMTP timeout")
    run_task(db, limited, "dead-letter", now=db_now)  # the window is still full
    sentry_sdk.flush()
    messages = [
        e.get("logentry", {}).get("message") or e.get("message") for e in sentry.items("event")
    ]
    per_job = [m for m in messages if m and "dead-lettered:" in m]
    summaries = [m for m in messages if m and "more job(s) dead-lettered" in m]
    assert len(per_job) == 2
    assert len(summaries) == 2
    assert "3 more job(s)" in summaries[0] and "email.send 3" in summaries[0]
    assert "2 more job(s)" in summaries[1]


def test_the_window_frees_up_after_ten_minutes() -> None:
    """The limiter counts events of the last 10 minutes only."""
    now = [1000.0]
    first = signals.DeadLetterSignals(1, run_id=1, clock=lambda: now[0])
    assert signals._take(1, first.clock)
    assert not signals._take(1, first.clock)
    now[0] += signals.WINDOW_S
    assert signals._take(1, first.clock)


def test_every_batch_s_jobs_get_their_lines(
    db: Database, settings: Settings, db_now: datetime, log_lines: io.StringIO
) -> None:
    """35 dead jobs in batches of 10 are 35 lines, one per job, with the run's id."""
    ids = [_exhausted(db, db_now, "k", f"boom {n}") for n in range(35)]
    with only_the_daemons_log_handler():  # so the lines take log_many's direct way
        result = run_task(db, settings, "dead-letter", now=db_now, batch_size=10)
    assert result.batches == 4 and result.changed == 35
    lines = events(log_lines, "job.dead_lettered")
    assert sorted(line["job_id"] for line in lines) == ids
    assert {line["run_id"] for line in lines} == {result.run_id}
