"""One heartbeat rule: mark-stale, ``workers``, ``check`` and ``jobs list`` agree on who is dead."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from reconciler.db import Database
from tests.helpers import insert_job
from tests.ops_data import CliRun

OVERRIDES = json.dumps({"kind:export": "1h", "queue:media": "15m"})


@pytest.fixture
def silent(cli: CliRun, db: Database, db_now: datetime) -> dict[str, int]:
    """Three workers, each silent for 20 minutes on one job; the default timeout is 5 min."""
    cli.setenv("RECONCILER_HEARTBEAT_TIMEOUT_OVERRIDES", OVERRIDES)
    ago = db_now - timedelta(minutes=20)
    return {
        # kind:export allows an hour: alive.
        "exporter": insert_job(
            db,
            kind="export",
            status="running",
            locked_by="exporter",
            attempt=1,
            locked_at=ago,
            heartbeat_at=ago,
        ),
        # queue:media allows 15 minutes: dead.
        "encoder": insert_job(
            db,
            kind="encode",
            queue="media",
            status="running",
            locked_by="encoder",
            attempt=1,
            locked_at=ago,
            heartbeat_at=ago,
        ),
        # The default, 5 minutes: dead; and it never sent a heartbeat (its claim counts).
        "mailer": insert_job(
            db,
            kind="email",
            status="running",
            locked_by="mailer",
            attempt=1,
            locked_at=ago,
            heartbeat_at=None,
        ),
    }


def test_mark_stale_workers_and_check_agree_with_overrides(
    cli: CliRun, silent: dict[str, int]
) -> None:
    """With kind:export=1h and queue:media=15m, all three call the same workers dead: the
    encoder and the mailer, not the exporter that mark-stale rightly leaves alone."""
    preview = cli.json("run", "mark-stale", "--dry-run")
    would_stale = set(preview["sample_ids"])

    report = cli.json("workers")
    dead = set(report["probably_dead"])

    check_exit, out, _ = cli("check", "--json")
    finding = next(f for f in json.loads(out)["findings"] if f["check"] == "dead_workers")

    assert would_stale == {silent["encoder"], silent["mailer"]}
    assert dead == {"encoder", "mailer"}
    assert (check_exit, finding["level"]) == (1, "warning")
    assert "exporter" not in finding["message"]
    assert "encoder" in finding["message"] and "mailer" in finding["message"]
    assert report["heartbeat_timeout_overrides_s"] == {"kind:export": 3600.0, "queue:media": 900.0}


def test_a_heartbeat_within_the_override_keeps_the_budget_and_the_job(
    cli: CliRun, silent: dict[str, int]
) -> None:
    """The live exporter counts in the heartbeat budget; the dead ones do not."""
    report = cli.json("workers")
    assert report["heartbeat_budget"]["running_jobs"] == 1

    result = cli.json("run", "mark-stale")
    assert result["transitions"] == {"running->stale": 2}
    assert cli.json("workers")["probably_dead"] == []


def test_jobs_list_reports_silence_from_the_same_last_sign_of_life(
    cli: CliRun, silent: dict[str, int]
) -> None:
    """A job that never heartbeat is silent since its claim, in jobs list as in mark-stale."""
    rows = cli.json_lines("jobs", "list", "--status", "running")
    silent_for = {r["id"]: r["silent_for"] for r in rows}
    assert silent_for[silent["mailer"]] is not None
    assert silent_for[silent["mailer"]] == silent_for[silent["exporter"]]
