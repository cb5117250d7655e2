"""``reconciler check``: each alert condition gives its finding and its exit code (0, 1, 2)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.check import evaluate
from reconciler.partitions import partition_events
from reconciler.schedule import load_schedule
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from tests.helpers import insert_job
from tests.ops_data import CliRun, insert_event

TASKS = ("mark-stale", "requeue", "dead-letter", "purge", "partitions", "vacuum-analyze")


def ran(db: Database, task: str, at: datetime, status: str = "ok") -> None:
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO runs (task, started_at, finished_at, status, host, pid, actor)"
                " VALUES (:t, :at, :at, :s, 'h', 1, 'test')"
            ),
            {"t": task, "at": at, "s": status},
        )


@pytest.fixture
def healthy(db: Database, db_now: datetime) -> None:
    """Every maintenance task has just run.

    Just now, not a minute ago: requeue runs every second, so a run a minute old is
    already overdue by a second or two later (db_now is truncated to the second).
    """
    for task in TASKS:
        ran(db, task, db_now)


def findings(cli: CliRun) -> tuple[int, dict[str, str]]:
    code, out, err = cli("check", "--json")
    report = json.loads(out)
    assert report["exit_code"] == code, err
    return code, {f["check"]: f["level"] for f in report["findings"]}


def test_all_ok_exit_0(cli: CliRun, healthy: None) -> None:
    """A quiet, maintained queue: every finding ok, exit 0; the table says OK."""
    code, levels = findings(cli)
    assert code == 0
    assert set(levels.values()) == {"ok"}
    assert {"failure_rate", "backlog", "dead_letter_spike", "dead_workers", "slow_jobs"} <= set(
        levels
    )
    code, out, _ = cli("check")
    assert code == 0 and "OK" in out


def attempts(db: Database, now: datetime, failed: int, succeeded: int) -> None:
    job_id = insert_job(db, status="queued")
    for i in range(failed + succeeded):
        to = "failed" if i < failed else "succeeded"
        insert_event(db, job_id, "running", to, now - timedelta(minutes=5))


@pytest.mark.parametrize(
    ("failed", "succeeded", "code", "level"),
    [(3, 17, 1, "warning"), (15, 5, 2, "critical"), (1, 25, 0, "ok"), (5, 5, 0, "ok")],
)
def test_failure_rate(
    cli: CliRun,
    db: Database,
    db_now: datetime,
    healthy: None,
    failed: int,
    succeeded: int,
    code: int,
    level: str,
) -> None:
    """Over 10 % failed is a warning, over 50 % critical; under 20 attempts is too few to judge."""
    attempts(db, db_now, failed, succeeded)
    got, levels = findings(cli)
    assert (got, levels["failure_rate"]) == (code, level)


def test_backlog(cli: CliRun, db: Database, db_now: datetime, healthy: None) -> None:
    """Jobs due for over the backlog age count; a paused queue does not; thresholds from env."""
    cli.setenv("RECONCILER_CHECK_BACKLOG_WARNING", "2")
    cli.setenv("RECONCILER_CHECK_BACKLOG_CRITICAL", "4")
    for _ in range(3):
        insert_job(db, status="queued", priority=4, run_at=db_now - timedelta(minutes=10))
    insert_job(db, status="queued", priority=4, run_at=db_now - timedelta(minutes=4))
    assert findings(cli)[1]["backlog"] == "warning"
    for _ in range(2):
        insert_job(db, status="queued", priority=4, run_at=db_now - timedelta(minutes=10))
    assert findings(cli)[0] == 2
    cli("pause", "default")
    assert findings(cli)[1]["backlog"] == "ok"


def test_counts_stop_past_the_cap_and_say_over(
    cli: CliRun, db: Database, db_now: datetime, healthy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backlog, slow and due counts stop at the cap (so a backlog of millions costs what one
    of the cap does) and the message says "over N"; the levels are as if counted whole."""
    from reconciler.ops import check

    monkeypatch.setattr(check, "COUNT_CAP", 4)
    cli.setenv("RECONCILER_CHECK_BACKLOG_WARNING", "1")
    cli.setenv("RECONCILER_CHECK_BACKLOG_CRITICAL", "2")
    for _ in range(6):
        insert_job(db, status="queued", priority=0, run_at=db_now - timedelta(minutes=10))
        insert_job(db, status="running", attempt=1, started_at=db_now - timedelta(hours=2))
    code, out, _ = cli("check", "--json")
    report = {f["check"]: f for f in json.loads(out)["findings"]}
    assert code == 2 and report["backlog"]["level"] == "critical"
    assert report["backlog"]["message"].startswith("over 3 queued job(s)")
    assert report["slow_jobs"]["message"].startswith("over 3 job(s) running")
    assert "over 3 due" in report["latency:critical"]["message"]


def test_pause_all_leaves_every_queue_out_of_backlog_and_latency(
    cli: CliRun, db: Database, db_now: datetime, healthy: None
) -> None:
    """After pause --all no queue counts as backlog or late, one first used after the pause
    too; the paused finding says "all queues"."""
    cli.setenv("RECONCILER_CHECK_BACKLOG_WARNING", "1")
    insert_job(db, status="queued", priority=0, run_at=db_now - timedelta(minutes=10))
    cli("pause", "--all")
    for queue in ("default", "first-used-now"):
        insert_job(db, queue=queue, status="queued", priority=0, run_at=db_now - timedelta(hours=1))
    code, out, _ = cli("check", "--json")
    by_check = {f["check"]: f for f in json.loads(out)["findings"]}
    assert code == 0
    assert by_check["backlog"]["value"] == 0
    assert "latency:critical" not in by_check
    assert by_check["paused_queues"]["message"].endswith(": all queues")
    cli("resume", "--all")
    assert findings(cli)[1]["latency:critical"] == "critical"


def test_dead_letter_spike(cli: CliRun, db: Database, db_now: datetime, healthy: None) -> None:
    """Jobs that went dead within the window; older deaths do not count."""
    cli.setenv("RECONCILER_CHECK_DEAD_LETTER_WARNING", "1")
    cli.setenv("RECONCILER_CHECK_DEAD_LETTER_CRITICAL", "2")
    job_id = insert_job(db, status="dead", attempt=3, finished_at=db_now)
    insert_event(db, job_id, "failed", "dead", db_now - timedelta(hours=2))
    insert_event(db, job_id, "failed", "dead", db_now - timedelta(minutes=1))
    assert findings(cli)[1]["dead_letter_spike"] == "ok"
    insert_event(db, job_id, "failed", "dead", db_now - timedelta(minutes=1))
    assert findings(cli)[0] == 1
    insert_event(db, job_id, "failed", "dead", db_now - timedelta(minutes=1))
    assert findings(cli)[0] == 2


def test_dead_worker(cli: CliRun, db: Database, db_now: datetime, healthy: None) -> None:
    """A worker whose every job is silent past the heartbeat timeout: warning, exit 1."""
    insert_job(
        db,
        status="running",
        locked_by="w1",
        attempt=1,
        started_at=db_now,
        heartbeat_at=db_now - timedelta(minutes=6),
    )
    code, levels = findings(cli)
    assert (code, levels["dead_workers"]) == (1, "warning")
    insert_job(
        db,
        status="running",
        locked_by="w1",
        attempt=1,
        started_at=db_now,
        heartbeat_at=db_now - timedelta(seconds=5),
    )
    assert findings(cli)[0] == 0


def test_slow_job(cli: CliRun, db: Database, db_now: datetime, healthy: None) -> None:
    """A job running for over an hour (heartbeating fine): warning, exit 1."""
    insert_job(
        db,
        status="running",
        attempt=1,
        started_at=db_now - timedelta(minutes=61),
        heartbeat_at=db_now,
    )
    code, levels = findings(cli)
    assert (code, levels["slow_jobs"]) == (1, "warning")


def test_task_never_ran(cli: CliRun, db: Database, db_now: datetime) -> None:
    """A scheduled task that never ran is a warning (is the daemon running?)."""
    code, levels = findings(cli)
    assert code == 1
    assert levels["task:mark-stale"] == levels["task:vacuum-analyze"] == "warning"


def test_task_overdue_by_its_schedule(cli: CliRun, db: Database, db_now: datetime) -> None:
    """Overdue as `reconciler status` says: mark-stale (every 30s) last started 3 minutes ago."""
    for task in TASKS:
        ran(db, task, db_now)
    assert findings(cli)[0] == 0
    ran(db, "mark-stale", db_now - timedelta(minutes=3))
    with db.transaction() as conn:
        conn.execute(
            text("DELETE FROM runs WHERE task = 'mark-stale' AND started_at > :t"),
            {"t": db_now - timedelta(minutes=2)},
        )
    code, levels = findings(cli)
    assert (code, levels["task:mark-stale"]) == (1, "warning")
    assert levels["task:requeue"] == "ok"


def test_task_failing(cli: CliRun, db: Database, db_now: datetime, healthy: None) -> None:
    """A task whose last run failed is a warning, with its error."""
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE runs SET status = 'failed', error = 'lock timeout' WHERE task = 'requeue'")
        )
    code, out, _ = cli("check")
    assert code == 1 and "requeue failed in its last run: lock timeout" in out


def test_tasks_follow_the_schedule_file(
    cli: CliRun, db: Database, db_now: datetime, healthy: None, tmp_path: Path
) -> None:
    """A task the schedule file does not list is not checked; a bad file is UNKNOWN (3)."""
    schedule = tmp_path / "schedule.toml"
    schedule.write_text('[mark-stale]\nevery = "30s"\n')
    cli.setenv("RECONCILER_SCHEDULE_FILE", str(schedule))
    levels = findings(cli)[1]
    assert "task:mark-stale" in levels and "task:purge" not in levels
    schedule.write_text("[mark-stale]\nevery = 30\n")
    code, out, _ = cli("check")
    assert code == 3 and out.count("\n") == 1 and "UNKNOWN" in out


@pytest.mark.parametrize(
    ("priority", "waited", "code"),
    [
        (1, timedelta(seconds=1), 0),
        (1, timedelta(seconds=20), 1),
        (1, timedelta(minutes=1), 2),
        (4, timedelta(minutes=4), 0),
    ],
)
def test_latency_target(
    cli: CliRun,
    db: Database,
    db_now: datetime,
    healthy: None,
    priority: int,
    waited: timedelta,
    code: int,
) -> None:
    """Oldest due job past its priority's target: warning; past 10x: critical; bulk: none."""
    insert_job(db, status="queued", priority=priority, run_at=db_now - waited)
    assert findings(cli)[0] == code


def test_latency_targets_come_from_the_setting(
    cli: CliRun, db: Database, db_now: datetime, healthy: None
) -> None:
    """RECONCILER_LATENCY_TARGETS moves the line: 20 s waited is a warning for high (5 s)
    by default, fine with a 1 m target, critical with a 1 s target (10x)."""
    insert_job(db, status="queued", priority=1, run_at=db_now - timedelta(seconds=20))
    assert findings(cli)[0] == 1
    cli.setenv("RECONCILER_LATENCY_TARGETS", '{"high": "1m"}')
    assert findings(cli)[0] == 0
    cli.setenv("RECONCILER_LATENCY_TARGETS", '{"high": "1s"}')
    assert findings(cli)[0] == 2
    code, out, _ = cli("stats", "--json")
    assert code == 0
    (high,) = [r for r in json.loads(out)["oldest_due"] if r["priority"] == 1]
    assert high["target_s"] == 1.0


def test_worst_finding_wins(cli: CliRun, db: Database, db_now: datetime) -> None:
    """A warning and a critical together: exit 2, and the table lists both."""
    insert_job(db, status="queued", priority=0, run_at=db_now - timedelta(minutes=1))
    code, out, _ = cli("check")
    assert code == 2
    assert "CRITICAL" in out and "WARNING" in out and "latency:critical" in out


def test_a_forgotten_pause_of_every_queue_is_a_warning(
    cli: CliRun, db: Database, db_now: datetime, healthy: None
) -> None:
    """pause --all older than RECONCILER_CHECK_PAUSE_ALL_AGE (1h) warns, naming who paused and
    how to resume; a fresh one is only reported."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO paused_queues (queue, paused_at, paused_by, reason)"
                " VALUES ('*', :at, 'cli:bob', 'DB failover')"
            ),
            {"at": db_now - timedelta(minutes=30)},
        )
    code, out, _ = cli("check", "--json")
    (finding,) = [f for f in json.loads(out)["findings"] if f["check"] == "pause_all"]
    assert (code, finding["level"]) == (0, "ok")

    with db.transaction() as conn:
        conn.execute(
            text("UPDATE paused_queues SET paused_at = :at"), {"at": db_now - timedelta(hours=2)}
        )
    code, out, _ = cli("check", "--json")
    (finding,) = [f for f in json.loads(out)["findings"] if f["check"] == "pause_all"]
    assert (code, finding["level"]) == (1, "warning")
    assert "cli:bob" in finding["message"] and "reconciler resume --all" in finding["message"]


def test_a_check_that_cannot_judge_exits_3_unknown_never_1(cli: CliRun, db: Database) -> None:
    """An internal error (a table gone from under it) is UNKNOWN (3) with one line, no traceback."""
    with db.transaction() as conn:
        conn.execute(text("ALTER TABLE runs RENAME TO runs_gone"))
    code, out, _ = cli("check")
    assert code == 3
    (line,) = out.splitlines()
    assert line.startswith("reconciler check: UNKNOWN: internal error: ")
    assert "runs" in line
    assert "Traceback" not in out
    code, out, _ = cli("check", "--json")
    assert code == 3
    report = json.loads(out)
    assert report["status"] == "unknown" and report["exit_code"] == 3


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECONCILER_CHECK_FAILURE_RATE_WARNING", "nan"),
        ("RECONCILER_CHECK_WINDOW", "-5m"),
        ("RECONCILER_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none"),
    ],
)
def test_a_check_misconfigured_or_cut_off_exits_3_not_2(
    cli: CliRun, db: Database, variable: str, value: str
) -> None:
    """A bad setting or an unreachable database is UNKNOWN (3), not CRITICAL (2)."""
    with pytest.MonkeyPatch.context() as env:  # undone before the fixtures' teardown
        env.setenv(variable, value)
        code, out, _ = cli("check")
    assert code == 3
    (line,) = out.splitlines()
    assert line.startswith("reconciler check: UNKNOWN: ")


def test_check_with_bad_arguments_exits_3(cli: CliRun, db: Database) -> None:
    """An unknown option is UNKNOWN to a monitor too."""
    code, out, _ = cli("check", "--no-such-option")
    assert code == 3
    assert "UNKNOWN" in out


def test_a_partitioned_ledger_reports_how_far_its_partitions_reach(
    cli: CliRun, db: Database, settings: Settings, healthy: None
) -> None:
    """No finding with the plain ledger; partitioned, ok while the partitions reach half of
    RECONCILER_EVENTS_PARTITIONS_AHEAD, a warning under it, critical under a day."""
    assert "events_partitions" not in findings(cli)[1]

    partition_events(db, unit="day", ahead=timedelta(days=7))
    assert findings(cli)[1]["events_partitions"] == "ok"

    with db.transaction() as conn:
        upper = conn.execute(text(query("ops/check", "events_partitions"))).scalar_one()
    schedule = load_schedule(None)
    for before, level in [(timedelta(days=3), "warning"), (timedelta(hours=12), "critical")]:
        (found,) = [
            f
            for f in evaluate(db, settings, schedule, now=upper - before)
            if f.check == "events_partitions"
        ]
        assert found.level == level, found
        assert "reconciler run partitions" in found.message
