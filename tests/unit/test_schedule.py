"""The schedule file: the shipped default, strict checking, crontab semantics, next runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from reconciler.schedule import (
    Entry,
    ScheduleError,
    load_schedule,
    next_runs,
    parse_schedule,
)
from reconciler.tasks import TASKS

FILE = Path("sched.toml")


def _error(source: str) -> str:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(source, FILE)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_default_schedule_pins_every_task() -> None:
    """The shipped file schedules all seven tasks (reindex switched off), as the README says."""
    schedule = load_schedule()
    assert [e.task for e in schedule.entries] == list(TASKS)
    assert {e.task: e.describe() for e in schedule.entries} == {
        "mark-stale": "every 30s",
        "requeue": "every 1s",
        "dead-letter": "every 1m",
        "purge": "cron 17 3 * * * (UTC)",
        "partitions": "every 1h",
        "vacuum-analyze": "cron 43 3 * * * (UTC)",
        "reindex": "cron 53 3 * * 0 (UTC)",
    }
    purge = schedule.get("purge")
    assert purge is not None and purge.time_budget == timedelta(minutes=10)
    assert [e.task for e in schedule.entries if not e.enabled] == ["reindex"]


def test_entry_with_params_jitter_and_disabled() -> None:
    """Every key of an entry is read."""
    schedule = parse_schedule(
        '[requeue]\nevery = "5s"\nenabled = false\njitter = "0s"\n'
        '[requeue.params]\nbatch_size = 50\ntime_budget = "3s"\nbatch_pause = 2\n',
        FILE,
    )
    (entry,) = schedule.entries
    assert entry == Entry(
        "requeue", every=timedelta(seconds=5), enabled=False, jitter=timedelta(0),
        batch_size=50, time_budget=timedelta(seconds=3), batch_pause=2.0,
    )  # fmt: skip
    assert entry.params_dict()["batch_pause"] == 2.0
    assert schedule.enabled() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('[mark-stal]\nevery = "30s"\n', "sched.toml: line 1: [mark-stal]: unknown task; known"),
        (
            '[requeue]\nevery = "30s"\nevry = "1m"\n',
            "sched.toml: line 3: [requeue] evry: unknown key; allowed: every, cron,",
        ),
        ('[requeue]\nevery = "-5s"\n', "sched.toml: line 2: [requeue] every: '-5s' is negative"),
        ('[requeue]\nevery = "0s"\n', "sched.toml: line 2: [requeue] every: '0s' must be longer"),
        ("[requeue]\nevery = 30\n", "[requeue] every: must be a duration in quotes"),
        ('[requeue]\nevery = "30 sec"\n', "[requeue] every: cannot read duration '30 sec'"),
        (
            '\n[purge]\ncron = "61 3 * * *"\n',
            "sched.toml: line 3: [purge] cron: '61 3 * * *' is not a valid crontab line",
        ),
        ('[purge]\ncron = "3 * * *"\n', "[purge] cron: '3 * * *' is not a valid crontab line: ex"),
        ('[purge]\ncron = "0 3 * * 8"\n', "weekday '8' is not 0-7"),
        ("[purge]\nenabled = true\n", "sched.toml: line 1: [purge]: needs exactly one of every"),
        ('[purge]\nevery = "1m"\ncron = "0 3 * * *"\n', "[purge]: needs exactly one of"),
        ('[purge]\nevery = "1m"\nenabled = "yes"\n', "[purge] enabled: must be true or false"),
        (
            '[purge]\nevery = "1m"\n[purge.params]\nbatch = 5\n',
            "sched.toml: line 4: [purge.params] batch: unknown key; allowed: batch_size",
        ),
        (
            '[purge]\nevery = "1m"\n[purge.params]\nbatch_size = 0\n',
            "line 4: [purge.params] batch_size: must be a whole number from 1 to 100000",
        ),
        ('every = "1m"\n', "sched.toml: line 1: every: unknown top-level key"),
        (
            '[purge]\nevery = "1m"\n[purge.params]\nbatch_pause = -1\n',
            "[purge.params] batch_pause: must be a number from 0 to 100",
        ),
        (
            '[purge]\nevery = "1m"\n[purge.params]\nbatch_pause = nan\n',
            "[purge.params] batch_pause: must be a number from 0 to 100",
        ),
        (
            '[purge]\nevery = "1m"\n[purge.params]\nbatch_pause = "2"\n',
            "[purge.params] batch_pause: must be a number from 0 to 100",
        ),
        # Hostile values: NaN, infinities, absurd numbers, bytes TOML cannot hold.
        ('[requeue]\nevery = "nan"\n', "[requeue] every: cannot read duration 'nan'"),
        ('[requeue]\nevery = "1s"\njitter = nan\n', "[requeue] jitter: must be a duration"),
        ('[requeue]\nevery = "1s"\njitter = -inf\n', "[requeue] jitter: must be a duration"),
        (
            '[requeue]\nevery = "1s"\n[requeue.params]\nbatch_size = 1e9\n',
            "[requeue.params] batch_size: must be a whole number from 1 to 100000",
        ),
        (
            '[requeue]\nevery = "1s"\n[requeue.params]\ntime_budget = "1e400s"\n',
            "[requeue.params] time_budget: cannot read duration '1e400s'",
        ),
        ('[requeue]\nevery = "99999999999d"\n', "longer than 3650d"),
        ('[requeue]\nevery = "1s\x00"\n', "sched.toml: not valid TOML: "),
        ('[purge\nevery = "1m"\n', "sched.toml: not valid TOML: "),
    ],
)
def test_bad_schedule_is_one_line_naming_file_line_and_key(source: str, expected: str) -> None:
    """Each mistake: one line with the file, the line, the key and what is wrong."""
    assert expected in _error(source)


def test_missing_file_is_a_schedule_error(tmp_path: Path) -> None:
    """A schedule file that is not there is named, not a traceback."""
    with pytest.raises(ScheduleError, match=r"nope\.toml: cannot read the schedule file"):
        load_schedule(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("weekday", "day"),
    [("0", 29), ("7", 29), ("sun", 29), ("1", 30), ("1-5", 24), ("5-7", 27), ("6,0", 28)],
)
def test_cron_weekdays_follow_crontab(weekday: str, day: int) -> None:
    """0 and 7 are Sunday, as in crontab (APScheduler 3 alone would say Monday)."""
    monday_noon = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    entry = Entry("purge", cron=f"0 3 * * {weekday}")
    assert entry.next_after(monday_noon) == datetime(2026, 11, day, 3, 0, tzinfo=UTC)


def test_next_after_for_interval_and_cron() -> None:
    """Interval: last start + every. Cron: the next matching minute strictly after."""
    started = datetime(2026, 11, 23, 3, 17, 0, tzinfo=UTC)
    assert Entry("requeue", every=timedelta(seconds=15)).next_after(started) == started + (
        timedelta(seconds=15)
    )
    daily = Entry("purge", cron="17 3 * * *")
    assert daily.next_after(started) == datetime(2026, 11, 24, 3, 17, tzinfo=UTC)
    assert daily.next_after(started - timedelta(minutes=1)) == started


@freeze_time("2026-11-23 10:00:00", tz_offset=0)
def test_next_runs_from_the_python_clock() -> None:
    """`reconciler schedule`: intervals from now, crons at their next match, disabled never."""
    schedule = parse_schedule(
        '[requeue]\nevery = "15s"\n[purge]\ncron = "17 3 * * *"\n'
        '[dead-letter]\nevery = "1m"\nenabled = false\n',
        FILE,
    )
    now = datetime.now(UTC)
    assert next_runs(schedule, now) == {
        "requeue": datetime(2026, 11, 23, 10, 0, 15, tzinfo=UTC),
        "purge": datetime(2026, 11, 24, 3, 17, tzinfo=UTC),
        "dead-letter": None,
    }


def test_monitor_config_rounds_up_to_minutes() -> None:
    """Sentry counts whole minutes: a 30 s interval is a 1 minute monitor."""
    config = Entry("mark-stale", every=timedelta(seconds=30)).monitor_config(timedelta(seconds=35))
    assert config["schedule"] == {"type": "interval", "value": 1, "unit": "minute"}
    assert config["max_runtime"] == 1
    cron = Entry("purge", cron="17 3 * * *").monitor_config(timedelta(minutes=10))
    assert cron["schedule"] == {"type": "crontab", "value": "17 3 * * *"}
    assert cron["timezone"] == "UTC"
