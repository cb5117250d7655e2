"""The operator's commands as an operator runs them: the real CLI in a subprocess."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from reconciler.db import Database
from tests.helpers import jobs_by_status
from tests.ops_data import run_reconciler, seed


@pytest.fixture
def seeded(db: Database, db_now: datetime) -> dict[str, list[int]]:
    return seed(db, db_now)


def test_every_read_command_prints_json(
    pg_url: str, schema: str, seeded: dict[str, list[int]]
) -> None:
    """stats, workers, check: one JSON object; list, errors: JSON lines; all parse."""
    for argv, lines in (
        (["stats"], False),
        (["workers"], False),
        (["jobs", "show", str(seeded["stuck"][0])], False),
        (["jobs", "list", "--status", "failed"], True),
        (["dead-letter", "list"], True),
        (["dead-letter", "errors"], True),
        (["errors"], True),
    ):
        done = run_reconciler([*argv, "--json"], url=pg_url, schema=schema)
        assert done.returncode == 0, done.stderr
        parsed = [json.loads(line) for line in done.stdout.splitlines()]
        assert parsed, argv
        assert len(parsed) == 1 or lines, argv


def test_changes_dry_run_then_apply(
    pg_url: str, schema: str, seeded: dict[str, list[int]], tmp_path: Path
) -> None:
    """A dry run previews, the real run changes and says which run recorded it."""
    preview = run_reconciler(
        ["jobs", "retry-failed", "--queue", "email", "--dry-run", "--json"],
        url=pg_url,
        schema=schema,
    )
    assert json.loads(preview.stdout)["transitions"] == {"failed->queued": 3}
    done = run_reconciler(["jobs", "retry-failed", "--queue", "email"], url=pg_url, schema=schema)
    assert done.returncode == 0, done.stderr
    assert "jobs retry-failed: changed 3 job(s) in 1 batch" in done.stdout
    export = run_reconciler(
        ["dead-letter", "export", "--output", "dead.jsonl", "--json"],
        url=pg_url,
        schema=schema,
        cwd=str(tmp_path),
    )
    assert json.loads(export.stdout)["jobs"] == 3
    purge = run_reconciler(["dead-letter", "purge", "--all", "--json"], url=pg_url, schema=schema)
    assert json.loads(purge.stdout)["changed"] == 3


def test_confirmation_refused_without_terminal(
    pg_url: str, schema: str, db: Database, seeded: dict[str, list[int]]
) -> None:
    """Above the threshold with stdin not a terminal: one line, exit 2, nothing changed."""
    argv = ["jobs", "cancel", "--queue", "email"]
    done = run_reconciler(
        argv, url=pg_url, schema=schema, extra_env={"RECONCILER_OPS_CONFIRM_THRESHOLD": "4"}
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "stdin is not a terminal" in done.stderr
    assert jobs_by_status(db)["cancelled"] == 1
    done = run_reconciler(
        [*argv, "--yes"],
        url=pg_url,
        schema=schema,
        extra_env={"RECONCILER_OPS_CONFIRM_THRESHOLD": "4"},
    )
    assert done.returncode == 0
    assert jobs_by_status(db)["cancelled"] == 1 + 5


def test_mistakes_exit_2_without_traceback(pg_url: str, schema: str, db: Database) -> None:
    """Unknown status, bad duration, unknown id, empty destructive filter: exit 2, one line."""
    for argv, words in (
        (["jobs", "list", "--status", "zombie"], "unknown status 'zombie'"),
        (["purge", "--older-than", "thirty days"], "cannot read duration"),
        (["jobs", "cancel", "424242"], "no job with id 424242"),
        (["dead-letter", "purge"], "needs job ids or a filter"),
    ):
        done = run_reconciler(argv, url=pg_url, schema=schema)
        assert done.returncode == 2, argv
        assert words in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_check_exit_code_in_a_subprocess(
    pg_url: str, schema: str, seeded: dict[str, list[int]]
) -> None:
    """check on the seeded queue: a crashed worker and a slow job are warnings, exit 1."""
    done = run_reconciler(["check", "--json"], url=pg_url, schema=schema)
    report = json.loads(done.stdout)
    assert done.returncode == report["exit_code"] == 1
    levels = {f["check"]: f["level"] for f in report["findings"]}
    assert levels["dead_workers"] == levels["slow_jobs"] == "warning"


def test_help_lists_the_commands(pg_url: str, schema: str) -> None:
    """reconciler --help names every operator's command."""
    done = run_reconciler(["--help"], url=pg_url, schema=schema)
    for name in (
        "stats",
        "jobs",
        "dead-letter",
        "errors",
        "workers",
        "pause",
        "resume",
        "purge",
        "check",
    ):
        assert name in done.stdout
