"""Read-only views and pauses: ``stats``, ``errors``, ``workers``, ``pause``/``resume``."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database
from reconciler.ops.stats import collect, render, watch
from reconciler.settings import Settings
from tests.helpers import insert_job, wait_until
from tests.ops_data import CliRun, insert_event


def test_stats_numbers(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """stats: depth, oldest due per queue/priority against the target, durations, failure rate."""
    stats = cli.json("stats")
    depth = {(d["queue"], d["priority"], d["status"]): d["jobs"] for d in stats["depth"]}
    # Finished jobs count over the window (24 h): the 40-day-old ones are not read.
    assert not [k for k in depth if k[0] == "bulk"]
    assert stats["jobs_estimate"] >= 0
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


def test_watch_redraws(db: Database, settings: Settings, ids: dict[str, list[int]]) -> None:
    """watch redraws the tables every interval (here three rounds, no real sleep)."""
    drawn: list[int] = []
    slept: list[float] = []

    def draw() -> object:
        drawn.append(1)
        return render(collect(db, since=timedelta(hours=1), settings=settings))

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
    """--all pauses every queue with one row '*'; --dry-run changes nothing."""
    preview = cli.json("pause", "--all", "--dry-run")
    assert preview["pause"] == ["*"] and preview["paused"] == []
    result = cli.json("pause", "--all")
    assert result["pause"] == ["*"]
    assert [(p["queue"], p["queued"]) for p in result["paused"]] == [("*", 2)]
    assert cli.json("pause", "--all")["pause"] == []
    assert cli.json("resume", "--all", "--dry-run")["resume"] == ["*"]
    assert cli.json("resume", "--all")["paused"] == []


def _claimable(db: Database, queues: list[str] | None = None) -> int:
    """How many jobs claim() hands out (rolled back, so the jobs stay queued)."""
    with db.transaction(rollback=True) as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM claim('w9', CAST(:q AS text[]), 100)"), {"q": queues}
            ).scalar_one()
        )


def test_pause_all_stops_every_queue_also_a_new_one(
    cli: CliRun, db: Database, db_now: datetime, ids: dict[str, list[int]]
) -> None:
    """After pause --all, claim() hands out nothing, also of a queue first used later;
    resume --all lifts it and every single-queue pause with it."""
    assert _claimable(db) == 2
    cli("pause", "email")
    assert cli.json("pause", "--all", "--reason", "DB failover")["pause"] == ["*"]
    with db.transaction() as conn:
        conn.execute(
            text("SELECT enqueue(kind => 'x', queue => 'brand-new', run_at => :t)"),
            {"t": db_now - timedelta(seconds=1)},
        )
    assert _claimable(db) == 0
    assert _claimable(db, ["brand-new"]) == 0

    result = cli.json("resume", "--all")
    assert (result["resume"], result["paused"]) == (["*", "email"], [])
    assert _claimable(db) == 3


def test_resume_of_one_queue_under_pause_all_is_refused(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """resume QUEUE while every queue is paused: one line saying so and how, exit 2;
    '*' as a queue name points to --all."""
    cli("pause", "--all", "--actor", "cli:bob")
    code, out, err = cli("resume", "email")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "cannot resume 'email' alone: all queues are paused (pause --all by cli:bob at " in err
    assert err.rstrip().endswith("to resume them: reconciler resume --all")
    assert _claimable(db) == 0
    for verb in ("pause", "resume"):
        code, _, err = cli(verb, "*")
        assert code == 2 and f"use reconciler {verb} --all" in err


def test_pause_and_resume_leave_a_history(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """Every pause and resume is a queue_pause_events row with who and why; pause --history
    lists them newest first, of the queues named plus those of every queue."""
    cli("pause", "email", "--actor", "cli:bob", "--reason", "SMTP outage")
    cli("pause", "reports", "--actor", "cli:bob")
    cli("resume", "email", "--actor", "cli:ann", "--reason", "SMTP back")
    cli("pause", "--all", "--actor", "cli:ann", "--reason", "failover")
    cli("resume", "--all", "--actor", "cli:bob")
    cli("resume", "--all")  # nothing paused: nothing recorded

    rows = cli.json("pause", "--history")["history"]
    assert [(r["queue"], r["action"], r["actor"], r["reason"]) for r in rows] == [
        ("reports", "resume", "cli:bob", None),
        ("*", "resume", "cli:bob", None),
        ("*", "pause", "cli:ann", "failover"),
        ("email", "resume", "cli:ann", "SMTP back"),
        ("reports", "pause", "cli:bob", None),
        ("email", "pause", "cli:bob", "SMTP outage"),
    ]
    assert rows[0]["at"] >= rows[-1]["at"]
    email = cli.json("pause", "--history", "email", "--limit", "3")["history"]
    assert [(r["queue"], r["action"]) for r in email] == [
        ("*", "resume"),
        ("*", "pause"),
        ("email", "resume"),
    ]
    code, out, _ = cli("pause", "--history")
    assert code == 0 and "all queues" in out and "SMTP outage" in out


def test_pause_all_shows_in_stats_check_and_jobs(
    cli: CliRun, db: Database, db_now: datetime, ids: dict[str, list[int]]
) -> None:
    """stats marks every queue paused and lists "all queues"; check lists it; jobs show says
    the job's queue is paused."""
    cli("pause", "--all", "--reason", "outage")
    stats = cli.json("stats")
    assert stats["oldest_due"] and all(r["paused"] for r in stats["oldest_due"])
    assert [p["queue"] for p in stats["paused"]] == ["*"]
    code, out, _ = cli("stats")
    assert code == 0
    assert "ALL QUEUES PAUSED" in out
    cells = {cell.strip() for line in out.splitlines() for cell in line.split("│")}
    assert {"email (paused)", "reports (paused)", "all queues"} <= cells
    # bulk holds one job cancelled 40 days ago: outside stats' window (24 h), not a row.
    assert "bulk (paused)" not in cells
    _, out, _ = cli("check", "--json")
    report = json.loads(out)
    (paused,) = [f for f in report["findings"] if f["check"] == "paused_queues"]
    assert paused["message"] == "paused (left out of backlog and latency): all queues"
    assert cli.json("jobs", "show", str(ids["queued_email"][0]))["job"]["queue_paused"] is True


def _claim_in(conn: psycopg.Connection[Any], schema: str, queue: str) -> list[int]:
    return [
        row[0]
        for row in conn.execute(
            sql.SQL("SELECT id FROM {}(worker => 'w9', queues => ARRAY[%s], n => 10)").format(
                sql.Identifier(schema, "claim")
            ),
            [queue],
        )
    ]


def test_a_pause_waits_for_the_claims_under_way_and_no_claim_after_it_gets_a_job(
    cli: CliRun, db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    """Strict pause: a claim in an open transaction holds the pause back; once the pause
    returns, that claim has committed (its job was handed out before the pause) and every
    later claim of the queue gets nothing. Before the fix the pause committed at once and the
    claim in flight still handed out its job after it."""
    first = insert_job(db, status="queued", queue="q", run_at=db_now - timedelta(seconds=1))
    second = insert_job(db, status="queued", queue="q", run_at=db_now - timedelta(seconds=1))
    cli.setenv("RECONCILER_LOCK_TIMEOUT", "2m")  # the pause waits until the test says
    with (
        psycopg.connect(pg_url) as worker,
        psycopg.connect(pg_url, autocommit=True) as watch,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        in_flight = _claim_in(worker, schema, "q")  # transaction left open
        pausing = pool.submit(cli, "pause", "q", "--json")
        wait_until(
            lambda: (
                watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%LOCK TABLE paused_queues%%'"
                ).fetchone()
                == (1,)
                or pausing.done()
            ),
            "the pause waits for the claim under way",
        )
        assert not pausing.done(), pausing.result()
        worker.commit()
        code, _, err = pausing.result(timeout=60)
        assert code == 0, err
        after = _claim_in(worker, schema, "q")
        worker.commit()
    assert (sorted(in_flight), after) == (sorted([first, second]), [])


def test_a_pause_blocked_past_the_lock_timeout_pauses_nothing(
    cli: CliRun, db: Database, pg_url: str, schema: str, db_now: datetime
) -> None:
    """A transaction that called claim() and stays open past the lock timeout: the pause fails
    with one line saying why (exit 1) and nothing is paused; workers were never stalled."""
    insert_job(db, status="queued", queue="q")
    cli.setenv("RECONCILER_LOCK_TIMEOUT", "200ms")
    with psycopg.connect(pg_url) as worker:
        _claim_in(worker, schema, "q")
        code, _, err = cli("pause", "q")
        worker.rollback()
    assert code == 1
    assert err.count("\n") == 1 and "nothing paused" in err
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM paused_queues")).scalar_one() == 0
