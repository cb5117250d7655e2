"""`reconciler status`: next run and overdue, at the boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from freezegun import freeze_time

from reconciler.schedule import Entry
from reconciler.status import LastRun, Lease, task_status

EVERY_30S = Entry("mark-stale", every=timedelta(seconds=30))
DAILY = Entry("purge", cron="17 3 * * *")
STARTED = datetime(2026, 11, 23, 3, 17, 0, tzinfo=UTC)


def _run(started: datetime = STARTED) -> LastRun:
    return LastRun(1, started, started + timedelta(seconds=1), "ok", {}, 1, None, "h")


def test_interval_next_run_and_overdue_boundary() -> None:
    """Next = start + 30 s; overdue only after one more period (at least 1 m) plus jitter."""
    next_run = STARTED + timedelta(seconds=30)
    limit = next_run + timedelta(minutes=1) + timedelta(seconds=3)  # jitter: 30s / 10
    on_time = task_status("mark-stale", EVERY_30S, _run(), None, limit)
    late = task_status("mark-stale", EVERY_30S, _run(), None, limit + timedelta(seconds=1))
    assert on_time.next_run == late.next_run == next_run
    assert on_time.overdue is False
    assert late.overdue is True


def test_cron_next_run_is_the_next_match_after_the_last_start() -> None:
    """Daily at 03:17: the next is tomorrow's; overdue an hour (and jitter) after it."""
    tomorrow = datetime(2026, 11, 24, 3, 17, tzinfo=UTC)
    status = task_status("purge", DAILY, _run(), None, tomorrow + timedelta(minutes=90))
    assert status.next_run == tomorrow
    assert status.overdue is True
    assert task_status("purge", DAILY, _run(), None, tomorrow).overdue is False


def test_running_never_scheduled_and_never_ran() -> None:
    """A run in progress is not overdue; unscheduled is not overdue; never ran is unknown."""
    much_later = STARTED + timedelta(days=3)
    lease = Lease("host:1:ab", much_later, much_later + timedelta(minutes=1))
    assert task_status("mark-stale", EVERY_30S, _run(), lease, much_later).overdue is False
    unscheduled = task_status("requeue", None, _run(), None, much_later)
    assert (unscheduled.enabled, unscheduled.next_run, unscheduled.overdue) == (False, None, False)
    never = task_status("mark-stale", EVERY_30S, None, None, much_later)
    assert (never.next_run, never.overdue) == (None, None)


def test_status_against_a_frozen_python_clock() -> None:
    """A 30 s task last started 03:17:00 is on time at 03:18:33 and overdue one second later."""
    with freeze_time("2026-11-23 03:18:33") as frozen:
        on_time = task_status("mark-stale", EVERY_30S, _run(), None, datetime.now(UTC))
        frozen.tick(timedelta(seconds=1))
        late = task_status("mark-stale", EVERY_30S, _run(), None, datetime.now(UTC))
    assert on_time.overdue is False
    assert late.overdue is True
    assert late.to_dict()["next_run"] == "2026-11-23T03:17:30+00:00"
