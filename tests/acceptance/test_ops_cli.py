"""The operator's commands as an operator runs them: the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from reconciler.db import Database
from tests.acceptance.conftest import CLI
from tests.helpers import jobs_by_status
from tests.ops_data import seed

NO_TERMINAL = ""  # stdin is a pipe with nothing in it


@pytest.fixture
def seeded(db: Database, db_now: datetime) -> dict[str, list[int]]:
    return seed(db, db_now)


def test_every_read_command_prints_json(cli: CLI, seeded: dict[str, list[int]]) -> None:
    """stats, workers, show: one JSON object; list, errors: JSON lines; all parse."""
    for argv, lines in (
        (["stats"], False),
        (["workers"], False),
        (["jobs", "show", str(seeded["stuck"][0])], False),
        (["jobs", "list", "--status", "failed"], True),
        (["dead-letter", "list"], True),
        (["dead-letter", "errors"], True),
        (["errors"], True),
    ):
        done = cli(*argv, "--json", stdin=NO_TERMINAL)
        assert done.returncode == 0, done.stderr
        parsed = [json.loads(line) for line in done.stdout.splitlines()]
        assert parsed, argv
        assert len(parsed) == 1 or lines, argv


def test_changes_dry_run_then_apply(cli: CLI, seeded: dict[str, list[int]], tmp_path: Path) -> None:
    """A dry run previews; the real run changes and names the run that recorded it."""
    preview = cli("jobs", "retry-failed", "--queue", "email", "--dry-run", "--json")
    assert json.loads(preview.stdout)["transitions"] == {"failed->queued": 3}
    done = cli("jobs", "retry-failed", "--queue", "email", stdin=NO_TERMINAL)
    assert done.returncode == 0, done.stderr
    assert "jobs retry-failed: changed 3 job(s) in 1 batch" in done.stdout
    export = cli("dead-letter", "export", "--output", "dead.jsonl", "--json", cwd=tmp_path)
    assert json.loads(export.stdout)["jobs"] == 3
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 3
    purge = cli("dead-letter", "purge", "--all", "--json", stdin=NO_TERMINAL)
    assert json.loads(purge.stdout)["changed"] == 3


def test_confirmation_refused_without_terminal(
    cli: CLI, db: Database, seeded: dict[str, list[int]]
) -> None:
    """Above the threshold with stdin not a terminal: one line, exit 2, nothing changed."""
    low = {"RECONCILER_OPS_CONFIRM_THRESHOLD": "4"}
    done = cli("jobs", "cancel", "--queue", "email", env=low, stdin=NO_TERMINAL)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "stdin is not a terminal" in done.stderr
    assert jobs_by_status(db)["cancelled"] == 1
    done = cli("jobs", "cancel", "--queue", "email", "--yes", env=low, stdin=NO_TERMINAL)
    assert done.returncode == 0
    assert jobs_by_status(db)["cancelled"] == 1 + 5


def test_mistakes_exit_2_without_traceback(cli: CLI, db: Database) -> None:
    """Unknown status, bad duration, unknown id, empty destructive filter: exit 2, one line."""
    for argv, words in (
        (["jobs", "list", "--status", "zombie"], "unknown status 'zombie'"),
        (["purge", "--older-than", "thirty days"], "cannot read duration"),
        (["jobs", "cancel", "424242"], "no job with id 424242"),
        (["dead-letter", "purge"], "needs job ids or a filter"),
    ):
        done = cli(*argv, stdin=NO_TERMINAL)
        assert done.returncode == 2, argv
        assert words in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_check_exit_code_in_a_subprocess(cli: CLI, seeded: dict[str, list[int]]) -> None:
    """check on the seeded queue: a crashed worker and a slow job are warnings, exit 1."""
    done = cli("check", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == report["exit_code"] == 1
    levels = {f["check"]: f["level"] for f in report["findings"]}
    assert levels["dead_workers"] == levels["slow_jobs"] == "warning"


def test_help_lists_the_commands(cli: CLI) -> None:
    """reconciler --help names every operator's command."""
    done = cli("--help")
    for name in ("stats", "jobs", "dead-letter", "errors", "workers", "pause", "resume", "purge"):
        assert name in done.stdout
    assert "check" in done.stdout


def _answer_prompt(argv: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with a terminal on stdin and stderr; answer its prompt; return (code, output)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", *argv],
        env=env,
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
        text=False,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            seen += os.read(master, 4096)
    assert b"[y/N]" in seen, seen
    os.write(master, answer)
    out, _ = proc.communicate(timeout=30)
    os.close(master)
    return proc.returncode, seen.decode() + out.decode()


@pytest.mark.parametrize(("answer", "code", "cancelled"), [(b"y\n", 0, 1 + 5), (b"n\n", 1, 1)])
def test_confirmation_on_a_terminal(
    pg_url: str,
    schema: str,
    db: Database,
    seeded: dict[str, list[int]],
    answer: bytes,
    code: int,
    cancelled: int,
) -> None:
    """On a terminal the command asks; y goes ahead, anything else changes nothing (exit 1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(
        RECONCILER_DATABASE_URL=pg_url,
        RECONCILER_SCHEMA=schema,
        RECONCILER_LOG_FORMAT="json",
        RECONCILER_OPS_CONFIRM_THRESHOLD="4",
    )
    got, output = _answer_prompt(["jobs", "cancel", "--queue", "email"], env, answer)
    assert got == code, output
    assert "Cancel 5 jobs? [y/N]" in output
    assert jobs_by_status(db)["cancelled"] == cancelled
