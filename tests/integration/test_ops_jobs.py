"""``reconciler jobs``: list, show, requeue, retry-failed, cancel, reset-stuck on real Postgres."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.helpers import events_of, insert_job, job, jobs_by_status, wait_until
from tests.ops_data import LIVE_TOKEN, CliRun


def test_list_filters_combine(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """Status, queue, kind and tenant filters narrow together; JSON lines parse."""
    rows = cli.json_lines("jobs", "list", "--status", "failed,dead", "--tenant", "acme")
    assert {r["id"] for r in rows} == set(ids["failed_email"]) | set(ids["dead_report"][:2])
    rows = cli.json_lines("jobs", "list", "--queue", "reports", "--kind", "report.build")
    assert {r["status"] for r in rows} == {"running", "succeeded"}
    (stuck,) = [r for r in rows if r["id"] in ids["stuck"]]
    assert stuck["running_for"] >= 25 * 60 and stuck["silent_for"] >= 20 * 60
    rows = cli.json_lines("jobs", "list", "--finished-since", "1h")
    assert {r["id"] for r in rows} == set(ids["failed_email"]) | set(ids["succeeded_recent"])
    rows = cli.json_lines("jobs", "list", "--older-than", "30d")
    assert {r["id"] for r in rows} == set(ids["succeeded_old"]) | set(ids["cancelled_old"])
    rows = cli.json_lines("jobs", "list", "--created-since", "1m")
    assert {r["id"] for r in rows} == set(ids["queued_email"])
    assert len(cli.json_lines("jobs", "list", "--limit", "2")) == 2


def test_list_table_for_people(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """Without --json the list is a table with a title."""
    code, out, _ = cli("jobs", "list", "--status", "dead")
    assert code == 0
    assert "3 job(s)" in out
    assert "report.export" in out


def snapshot(db: Database) -> list[tuple[object, ...]]:
    with db.transaction() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM jobs ORDER BY id"))]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("jobs", "list", "--status", "done"), "unknown status 'done'"),
        (("jobs", "list", "--created-since", "5x"), "cannot read duration"),
        (("jobs", "list", "--created-since", "5"), "a bare number ('5') is ambiguous"),
        (("jobs", "list", "--limit", "0"), "limit '0'"),
        (("jobs", "show", "999999"), "no job with id 999999"),
        (("jobs", "requeue", "999999"), "no job with id 999999"),
        (("jobs", "cancel", "abc"), "job id 'abc' is not a whole number"),
        (("jobs", "cancel"), "needs job ids or a filter"),
        (("jobs", "requeue"), "needs job ids or a filter"),
        (("jobs", "requeue", "--status", "running"), "takes failed, stale, dead or cancelled"),
        (("jobs", "cancel", "--status", "succeeded"), "takes queued, running, failed or stale"),
        (("jobs", "reset-stuck", "--older-than", "ten"), "cannot read duration"),
    ],
)
def test_mistakes_are_one_line_exit_2(
    cli: CliRun, db: Database, ids: dict[str, list[int]], argv: tuple[str, ...], message: str
) -> None:
    """A bad filter, status, duration or id: one line on stderr, exit 2, nothing changed."""
    before = snapshot(db)
    code, _out, err = cli(*argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert snapshot(db) == before


def test_show_has_full_history(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """jobs show: the row and every event, oldest first."""
    job_id = ids["failed_email"][0]
    cli("jobs", "requeue", str(job_id))
    shown = cli.json("jobs", "show", str(job_id))
    assert shown["job"]["id"] == job_id
    assert [(e["from_status"], e["to_status"]) for e in shown["events"]] == [
        ("running", "failed"),
        ("failed", "queued"),
    ]
    code, out, _ = cli("jobs", "show", str(job_id))
    assert code == 0 and "history (2 event(s))" in out


def test_requeue_resets_attempts_and_records_who(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """requeue: dead -> queued due now, a fresh retry budget (attempt_base moves up to attempt;
    attempt itself never goes down), no error, an event with actor and note."""
    job_id = ids["dead_report"][0]
    result = cli.json("jobs", "requeue", str(job_id), "--actor", "cli:alice", "--reason", "INC-7")
    assert result["transitions"] == {"dead->queued": 1}
    row = job(db, job_id)
    assert (row["status"], row["attempt"], row["attempt_base"]) == ("queued", 3, 3)
    assert row["last_error"] is None
    assert row["run_at"] == datetime.fromisoformat(result["now"])
    event = events_of(db, job_id)[-1]
    assert event["actor"] == "cli:alice"
    assert event["run_id"] == result["run_id"]
    assert event["reason"] == {
        "command": "jobs requeue",
        "attempt_before": 3,
        "attempts_reset": True,
        "note": "INC-7",
    }
    with db.transaction() as conn:
        run = conn.execute(
            text("SELECT task, actor, status, details FROM runs WHERE id = :id"),
            {"id": result["run_id"]},
        ).one()
    assert tuple(run) == ("jobs requeue", "cli:alice", "ok", {"filter": {"ids": [job_id]}})


def test_requeue_keep_attempts(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """--keep-attempts leaves attempt and last_error as they were."""
    job_id = ids["failed_email"][0]
    cli.json("jobs", "requeue", str(job_id), "--keep-attempts")
    row = job(db, job_id)
    assert (row["status"], row["attempt"], row["last_error"]) == (
        "queued",
        1,
        {"message": "SMTP timeout"},
    )


def test_requeue_refuses_a_running_job(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """An id whose status requeue does not take is refused, not skipped silently."""
    code, _, err = cli("jobs", "requeue", str(ids["stuck"][0]))
    assert code == 2
    assert f"job {ids['stuck'][0]} is running" in err
    assert job(db, ids["stuck"][0])["status"] == "running"


def test_dry_run_writes_nothing(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """--dry-run previews the same statement and rolls it back: no rows, events or runs."""
    before = jobs_by_status(db)
    result = cli.json("jobs", "retry-failed", "--dry-run")
    assert result["dry_run"] is True
    assert result["transitions"] == {"failed->queued": 3}
    assert sorted(result["sample_ids"]) == sorted(ids["failed_email"])
    assert jobs_by_status(db) == before
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0
        assert (
            conn.execute(
                text("SELECT count(*) FROM job_events WHERE actor LIKE 'cli:%'")
            ).scalar_one()
            == 0
        )


def test_retry_failed_by_queue_in_batches(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """retry-failed requeues the failed jobs of the filter, batch by batch."""
    result = cli.json("jobs", "retry-failed", "--queue", "email", "--batch-size", "2")
    assert result["transitions"] == {"failed->queued": 3}
    assert result["batches"] == 2
    assert all(job(db, i)["status"] == "queued" for i in ids["failed_email"])
    assert all(job(db, i)["status"] == "dead" for i in ids["dead_report"])


def test_limit_caps_a_change(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """--limit N changes at most N jobs, the oldest first."""
    result = cli.json("jobs", "retry-failed", "--limit", "2")
    assert result["changed"] == 2
    assert [job(db, i)["status"] for i in ids["failed_email"]] == ["queued", "queued", "failed"]


def test_confirmation_refused_without_a_terminal(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """Above the threshold and without --yes, a non-terminal stdin gets a refusal, exit 2."""
    cli.setenv("RECONCILER_OPS_CONFIRM_THRESHOLD", "2")
    code, _out, err = cli("jobs", "retry-failed")
    assert code == 2
    assert "stdin is not a terminal" in err and "--yes" in err
    assert all(job(db, i)["status"] == "failed" for i in ids["failed_email"])
    code, _, _ = cli("jobs", "retry-failed", "--yes")
    assert code == 0
    assert all(job(db, i)["status"] == "queued" for i in ids["failed_email"])


def test_cancel_fences_out_the_worker(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """Cancelling a running job clears its lock; the worker's complete() then returns false."""
    job_id = ids["slow"][0]
    result = cli.json("jobs", "cancel", str(job_id))
    assert result["transitions"] == {"running->cancelled": 1}
    assert job(db, job_id)["locked_by"] is None
    assert events_of(db, job_id)[-1]["reason"]["worker"] == "w-live"
    with db.transaction() as conn:
        done = conn.execute(
            text("SELECT complete(:id, :token)"), {"id": job_id, "token": LIVE_TOKEN}
        ).scalar_one()
    assert done is False


def test_cancel_by_filter(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """cancel takes the list filters: here the queued jobs of one queue."""
    result = cli.json("jobs", "cancel", "--queue", "email", "--status", "queued")
    assert result["transitions"] == {"queued->cancelled": 2}
    assert result["filter"] == {"statuses": ["queued"], "queues": ["email"]}


def test_reset_stuck_goes_through_mark_stale(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """reset-stuck runs the mark-stale task with the given timeout: only the silent job moves."""
    result = cli.json("jobs", "reset-stuck", "--older-than", "10m")
    assert result["task"] == "mark-stale"
    assert result["transitions"] == {"running->stale": 1}
    assert job(db, ids["stuck"][0])["status"] == "stale"
    assert job(db, ids["slow"][0])["status"] == "running"
    event = events_of(db, ids["stuck"][0])[-1]
    assert event["actor"].startswith("cli:")
    assert event["reason"]["timeout_s"] == 600


def test_reset_stuck_by_id_takes_that_job_however_fresh_its_heartbeat(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """reset-stuck ID: the operator judged this running job stuck (runbooks 000, 001): it goes
    stale even with a fresh heartbeat, its worker is fenced out, nothing else moves."""
    live = ids["slow"][0]
    preview = cli.json("jobs", "reset-stuck", str(live), "--dry-run")
    assert (preview["dry_run"], preview["sample_ids"]) == (True, [live])
    result = cli.json("jobs", "reset-stuck", str(live), "--reason", "INC-9")
    assert result["transitions"] == {"running->stale": 1}
    assert job(db, live)["status"] == "stale"
    assert job(db, ids["stuck"][0])["status"] == "running"
    assert events_of(db, live)[-1]["actor"].startswith("cli:")
    with db.transaction() as conn:
        done = conn.execute(
            text("SELECT complete(:id, :token)"), {"id": live, "token": LIVE_TOKEN}
        ).scalar_one()
    assert done is False


def test_reset_stuck_refuses_ids_not_running_and_no_choice_at_all(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """An id that is not running, or neither ids nor --older-than: one line, exit 2."""
    code, _, err = cli("jobs", "reset-stuck", str(ids["dead_report"][0]))
    assert code == 2 and "jobs reset-stuck takes running jobs" in err
    code, _, err = cli("jobs", "reset-stuck")
    assert code == 2 and "needs job ids or --older-than" in err
    assert err.count("\n") == 1


def test_reset_stuck_narrowed_by_queue(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """--queue narrows the mark-stale run; other queues are left alone."""
    result = cli.json("jobs", "reset-stuck", "--older-than", "1s", "--queue", "email")
    assert result["changed"] == 0
    result = cli.json(
        "jobs", "reset-stuck", "--older-than", "1s", "--queue", "reports", "--dry-run"
    )
    assert result["transitions"] == {"running->stale": 2}
    assert job(db, ids["stuck"][0])["status"] == "running"


def test_scheduled_mark_stale_unchanged(db: Database, settings: Settings, db_now: datetime) -> None:
    """Without the operator's parameters, mark-stale still uses the settings' timeout."""
    insert_job(db, status="running", heartbeat_at=db_now - timedelta(minutes=4), attempt=1)
    assert run_task(db, settings, "mark-stale", now=db_now).changed == 0


def test_nothing_matches_is_not_a_dry_run(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """A change that matches nothing says so, and is not reported as a dry run."""
    result = cli.json("jobs", "retry-failed", "--queue", "nowhere")
    assert (result["changed"], result["dry_run"], result["run_id"]) == (0, False, None)
    code, out, _ = cli("jobs", "retry-failed", "--queue", "nowhere")
    assert code == 0 and "no job matches; nothing changed" in out


def test_a_change_waits_for_no_one(cli: CliRun, db: Database, ids: dict[str, list[int]]) -> None:
    """While another process holds the task's lease, reset-stuck changes nothing: exit 1."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO task_leases (task, holder, acquired_at, expires_at)"
                " VALUES ('mark-stale', 'daemon:other', now(), now() + interval '1 minute')"
            )
        )
    code, _, err = cli("jobs", "reset-stuck", "--older-than", "10m")
    assert code == 1
    assert "running elsewhere" in err and err.count("\n") == 1
    assert job(db, ids["stuck"][0])["status"] == "running"


def test_a_change_logs_one_event(cli: CliRun, ids: dict[str, list[int]]) -> None:
    """A change that ran logs one ops.change event with who, what and how many; a dry run none."""
    code, _, err = cli("jobs", "retry-failed", "--dry-run")
    assert code == 0 and "ops.change" not in err
    code, _, err = cli("jobs", "retry-failed", "--actor", "cli:carol")
    (line,) = [json.loads(x) for x in err.splitlines() if "ops.change" in x]
    assert (line["command"], line["actor"], line["changed"]) == (
        "jobs retry-failed",
        "cli:carol",
        3,
    )
    assert line["filter"] == {"statuses": ["failed"]}


def test_replay_and_requeue_at_a_given_time(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """--at TIME and --in DURATION make the requeued job due then, not now (runbook 000's
    "reschedule"); the event says when; claim() leaves it alone until then."""
    first, second = ids["dead_report"][:2]
    at = cli.json("dead-letter", "replay", str(first), "--at", "2099-01-02T03:04:05Z")
    later = cli.json("jobs", "requeue", str(second), "--in", "2h")

    assert job(db, first)["run_at"] == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert job(db, second)["run_at"] == datetime.fromisoformat(later["now"]) + timedelta(hours=2)
    assert events_of(db, first)[-1]["reason"]["run_at"].startswith("2099-01-02T03:04:05")
    assert at["transitions"] == {"dead->queued": 1}
    with db.transaction() as conn:
        claimed = (
            conn.execute(text("SELECT id FROM claim(worker => 'w1', n => 100)")).scalars().all()
        )
    assert first not in claimed and second not in claimed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "2099-01-02T03:04"], "has no time zone"),
        (["--at", "tomorrow"], "is not a time"),
        (["--in", "2h", "--at", "2099-01-02T03:04Z"], "not allowed with argument"),
    ],
)
def test_a_requeue_time_that_is_not_clear_is_refused(
    cli: CliRun, db: Database, ids: dict[str, list[int]], args: list[str], message: str
) -> None:
    """A time without a zone, not a time, or both --at and --in: one line, exit 2, no change."""
    job_id = ids["dead_report"][0]
    code, _, err = cli("dead-letter", "replay", str(job_id), *args)
    assert code == 2 and message in err
    assert job(db, job_id)["status"] == "dead"


def test_a_succeeded_job_is_replayed_only_when_named(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """jobs requeue ID replays a succeeded job as a new attempt (runbook 003); a filter that
    does not name --status succeeded never sweeps succeeded jobs along."""
    done = ids["succeeded_recent"][0]
    swept = cli.json("jobs", "requeue", "--queue", "reports", "--yes")
    assert "succeeded->queued" not in swept["transitions"]
    assert job(db, done)["status"] == "succeeded"

    replayed = cli.json("jobs", "requeue", str(done), "--reason", "re-run report")
    assert replayed["transitions"] == {"succeeded->queued": 1}
    row = job(db, done)
    assert (row["status"], row["finished_at"], row["attempt_base"]) == (
        "queued",
        None,
        row["attempt"],
    )


@pytest.mark.parametrize("role", ["slow", "failed_email", "dead_report"])
def test_mark_succeeded_by_hand_with_a_reason(
    cli: CliRun, db: Database, ids: dict[str, list[int]], role: str
) -> None:
    """mark-succeeded: running, failed or dead -> succeeded by an operator, with the reason in
    the event (runbook 001); a running job's worker is fenced out."""
    job_id = ids[role][0]
    before = job(db, job_id)["status"]
    result = cli.json("jobs", "mark-succeeded", str(job_id), "--reason", "sent by hand, INC-12")
    assert result["transitions"] == {f"{before}->succeeded": 1}
    row = job(db, job_id)
    assert (row["status"], row["locked_by"], row["claim_token_hash"]) == ("succeeded", None, None)
    event = events_of(db, job_id)[-1]
    assert event["reason"]["note"] == "sent by hand, INC-12"
    assert event["actor"].startswith("cli:")
    if role == "slow":
        with db.transaction() as conn:
            assert (
                conn.execute(
                    text("SELECT heartbeat(:id, :t)"), {"id": job_id, "t": LIVE_TOKEN}
                ).scalar_one()
                is False
            )


def test_mark_succeeded_needs_ids_and_a_reason(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """Without --reason, or for a cancelled job: one line, exit 2, nothing changes."""
    job_id = ids["dead_report"][0]
    code, _, err = cli("jobs", "mark-succeeded", str(job_id))
    assert code == 2 and "needs --reason" in err
    cancelled = cli.json("jobs", "cancel", str(ids["stuck"][0]))["sample_ids"][0]
    code, _, err = cli("jobs", "mark-succeeded", str(cancelled), "--reason", "x")
    assert code == 2 and "is cancelled" in err
    assert job(db, job_id)["status"] == "dead"


def _hold_row(db: Database, job_id: int) -> Any:
    """A second connection holding job ``job_id`` FOR UPDATE (a worker mid-heartbeat)."""
    conn = db.engine.connect()
    conn.begin()
    db.pin(conn)
    conn.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
    return conn


def _waiting_on_lock(db: Database) -> bool:
    with db.transaction() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
        )


def test_a_named_job_held_by_a_worker_is_waited_for_not_skipped(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """`jobs cancel ID` on a row another transaction holds waits for it, then changes it.

    A filter skips locked rows (bulk changes never wait on workers); a job the operator
    named by id is never passed over silently with "0 changed" and exit 0.
    """
    target = ids["queued_email"][0]
    cli.setenv("RECONCILER_LOCK_TIMEOUT", "60s")
    holder = _hold_row(db, target)
    outcome: list[tuple[int, str, str]] = []
    thread = threading.Thread(
        target=lambda: outcome.append(cli("jobs", "cancel", str(target), "--yes"))
    )
    thread.start()
    try:
        wait_until(lambda: _waiting_on_lock(db), "the cancel waits on the held row")
        assert job(db, target)["status"] == "queued"
    finally:
        holder.rollback()
        holder.close()
    thread.join(timeout=120)
    ((code, _, err),) = outcome
    assert code == 0, err
    assert job(db, target)["status"] == "cancelled"


def test_a_named_job_held_past_the_lock_timeout_is_reported_not_changed(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """Held past RECONCILER_LOCK_TIMEOUT: exit 1 and one line naming the job; job intact."""
    target, other = ids["queued_email"][:2]
    cli.setenv("RECONCILER_LOCK_TIMEOUT", "100ms")
    holder = _hold_row(db, target)
    try:
        code, _, err = cli("jobs", "cancel", str(target), str(other), "--yes")
    finally:
        holder.rollback()
        holder.close()
    assert code == 1
    assert f"job {target} not changed" in err
    assert "RECONCILER_LOCK_TIMEOUT" in err
    assert job(db, target)["status"] == "queued"


def test_reset_stuck_by_id_waits_for_a_heartbeat_in_flight(
    cli: CliRun, db: Database, ids: dict[str, list[int]]
) -> None:
    """reset-stuck ID behind a worker's open heartbeat: reports the job not changed."""
    target = ids["stuck"][0]
    cli.setenv("RECONCILER_LOCK_TIMEOUT", "100ms")
    holder = _hold_row(db, target)
    try:
        code, _, err = cli("jobs", "reset-stuck", str(target), "--yes")
    finally:
        holder.rollback()
        holder.close()
    assert code == 1
    assert f"job {target} not changed" in err
    assert job(db, target)["status"] == "running"
