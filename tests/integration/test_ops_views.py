"""Read-only views and pauses: ``stats``, ``errors``, ``workers``, ``pause``/``resume``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.stats import collect, render, watch
from tests.ops_data import CliRun, insert_event, seed


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_url: str,
    schema: str,
    db: Database,
) -> CliRun:
    return CliRun(monkeypatch, capsys, pg_url, schema)


@pytest.fixture
def ids(db: Database, db_now: datetime) -> dict[str, list[int]]:
    return seed(db, db_now)


def test_stats_numbers(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """stats: depth, oldest due per queue/priority against the target, durations, failure rate."""
    stats = cli.json("stats")
    depth = {(d["queue"], d["priority"], d["status"]): d["jobs"] for d in stats["depth"]}
    assert depth[("email", 1, "failed")] == 3
    assert depth[("reports", 2, "dead")] == 3
    (email,) = [r for r in stats["oldest_due"] if r["queue"] == "email"]
    assert (email["priority_name"], email["due"], email["target_s"]) == ("high", 2, 5.0)
    assert email["oldest_wait"] >= 1
    assert email["late"] is (email["oldest_wait"] > 5)
    (build,) = stats["durations"]
    assert (build["kind"], build["succeeded"], build["avg_s"], build["p95_s"]) == (
        "report.build",
        2,
        3.0,
        3.9,
    )
    rates = {r["kind"]: r for r in stats["failure_rate"]}
    assert (rates["email.send"]["failed"], rates["email.send"]["failure_rate"]) == (3, 1.0)
    assert rates["report.build"]["failure_rate"] == 0.0
    hours = {(t["status"]) for t in stats["throughput"]}
    assert {"failed", "succeeded"} <= hours


def test_stats_since_narrows_the_window(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """--since 5m leaves out what finished ten and thirty minutes ago."""
    stats = cli.json("stats", "--since", "5m")
    assert stats["durations"] == [] and stats["failure_rate"] == []


def test_stats_table_shows_late_and_paused(
    cli: CliRun, db: Database, db_now: datetime, ids: dict[str, list[int]]
) -> None:
    """The table marks a late priority and a paused queue."""
    with db.transaction() as conn:
        conn.execute(
            text("UPDATE jobs SET run_at = :t WHERE status = 'queued'"),
            {"t": db_now - timedelta(minutes=1)},
        )
    cli("pause", "email")
    code, out, _ = cli("stats")
    assert code == 0
    assert "email (paused)" in out
    assert "paused queues" in out


def test_watch_redraws(db: Database, ids: dict[str, list[int]]) -> None:
    """watch redraws the tables every interval (here three rounds, no real sleep)."""
    drawn: list[int] = []
    slept: list[float] = []

    def draw() -> object:
        drawn.append(1)
        return render(collect(db, since=timedelta(hours=1)))

    watch(draw, interval=timedelta(seconds=2), rounds=3, sleep=slept.append)  # type: ignore[arg-type]
    assert len(drawn) == 3 and slept == [2.0, 2.0]


def test_errors_groups_recent_failures(
    cli: CliRun, db: Database, db_now: datetime, ids: dict[str, list[int]]
) -> None:
    """errors: failed attempts of the window by message and kind; lost workers count too."""
    insert_event(db, ids["stuck"][0], "running", "stale", db_now - timedelta(minutes=5))
    insert_event(
        db,
        ids["failed_email"][0],
        "running",
        "failed",
        db_now - timedelta(hours=3),
        reason={"error": {"message": "old"}},
    )
    rows = cli.json_lines("errors")
    assert [(r["error"], r["kind"], r["failures"]) for r in rows] == [
        ("SMTP timeout", "email.send", 3),
        ("(no heartbeat: worker lost)", "report.build", 1),
    ]
    rows = cli.json_lines("errors", "--since", "4h", "--queue", "email")
    assert [(r["error"], r["failures"]) for r in rows] == [("SMTP timeout", 3), ("old", 1)]
    code, out, _ = cli("errors")
    assert code == 0 and "SMTP timeout" in out


def test_workers_flags_the_silent_one_and_budgets(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """workers: the crashed worker is probably dead; the budget counts live jobs only."""
    report = cli.json("workers", "--heartbeat-interval", "15s")
    by_name = {w["worker"]: w for w in report["workers"]}
    assert by_name["w-crashed"]["probably_dead"] is True
    assert by_name["w-live"]["probably_dead"] is False
    assert report["probably_dead"] == ["w-crashed"]
    budget = report["heartbeat_budget"]
    assert (budget["running_jobs"], budget["expected_per_minute"]) == (1, 4.0)
    assert [(t["tenant_id"], t["expected_per_minute"]) for t in budget["tenants"]] == [
        ("globex", 4.0)
    ]
    report = cli.json("workers", "--timeout", "30m")
    assert report["probably_dead"] == []
    code, out, _ = cli("workers")
    assert code == 0 and "probably dead" in out


def test_pause_stops_claims_and_resume_restores(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """A paused queue hands out no job to claim(); after resume it does."""
    result = cli.json("pause", "email", "--reason", "SMTP outage", "--actor", "cli:bob")
    assert result["pause"] == ["email"]
    assert [(p["queue"], p["paused_by"], p["reason"]) for p in result["paused"]] == [
        ("email", "cli:bob", "SMTP outage")
    ]
    with db.transaction() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM claim('w9', ARRAY['email'], 10)")).scalar_one()
            == 0
        )
    assert cli.json("resume", "email")["resume"] == ["email"]
    with db.transaction() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM claim('w9', ARRAY['email'], 10)")).scalar_one()
            == 2
        )


def test_pause_refuses_a_typo_and_resume_an_unpaused(
    cli: CliRun, ids: dict[str, list[int]]
) -> None:
    """A queue with no jobs needs --force; resuming a queue that is not paused is refused."""
    code, _, err = cli("pause", "emial")
    assert code == 2 and "'emial' has no jobs" in err
    assert cli.json("pause", "emial", "--force")["pause"] == ["emial"]
    code, _, err = cli("resume", "email")
    assert code == 2 and "not paused" in err
    code, _, err = cli("pause")
    assert code == 2 and "name the queues" in err


def test_pause_all_and_dry_run(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """--all pauses every queue that has jobs; --dry-run changes nothing."""
    preview = cli.json("pause", "--all", "--dry-run")
    assert preview["pause"] == ["bulk", "email", "reports"] and preview["paused"] == []
    assert cli.json("pause", "--all")["pause"] == ["bulk", "email", "reports"]
    assert cli.json("resume", "--all")["paused"] == []
