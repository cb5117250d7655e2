"""The README's "Operations" section: every example runs, in order, against a seeded queue."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from reconciler.cli import build_parser
from reconciler.db import Database
from tests.acceptance.conftest import CLI
from tests.ops_data import seed

README = Path(__file__).resolve().parents[2] / "README.md"


def operations_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Operations\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def examples() -> list[str]:
    """Lines of the section's ```sh blocks that start with ``reconciler``."""
    blocks = re.findall(r"```sh\n(.*?)```", operations_section(), flags=re.DOTALL)
    return [
        line for block in blocks for line in block.splitlines() if line.startswith("reconciler ")
    ]


def test_the_section_has_examples_of_every_command() -> None:
    """The examples cover each operator's command at least once."""
    used = {shlex.split(line)[1] for line in examples()}
    assert used >= {
        "stats",
        "jobs",
        "errors",
        "workers",
        "dead-letter",
        "pause",
        "resume",
        "purge",
        "check",
    }


State = dict[str, Any]


def _state(db: Database) -> State:
    """What the examples change: each job's status, the paused queues."""
    with db.transaction() as conn:
        jobs: dict[int, str] = {
            r.id: r.status for r in conn.execute(text("SELECT id, status FROM jobs"))
        }
        paused = set(conn.execute(text("SELECT queue FROM paused_queues")).scalars())
    return {"jobs": jobs, "paused": paused}


def _unchanged(before: State, after: State, out: str) -> None:
    assert after == before, "a dry run changed something"


def _moved(ids: set[int], status: str) -> Callable[[State, State, str], None]:
    def check(before: State, after: State, out: str) -> None:
        assert {i: after["jobs"].get(i) for i in ids} == dict.fromkeys(ids, status)

    return check


def _no_job(where: Callable[[int, str], bool]) -> Callable[[State, State, str], None]:
    def check(before: State, after: State, out: str) -> None:
        assert not [i for i, st in after["jobs"].items() if where(i, st)], after["jobs"]

    return check


def _says(*words: str) -> Callable[[State, State, str], None]:
    def check(before: State, after: State, out: str) -> None:
        for word in words:
            assert word in out, f"{word!r} not in:\n{out}"

    return check


def _paused(queues: set[str]) -> Callable[[State, State, str], None]:
    def check(before: State, after: State, out: str) -> None:
        assert after["paused"] == queues

    return check


# What each example is said to do, against the seeded queue of tests/ops_data.py (ids in
# insertion order: failed email 1-3, queued email 4-5, dead reports 6-8 (8: globex),
# the stuck job 9, the slow one 10, succeeded 11-16, cancelled 17).
EFFECTS: dict[str, Callable[[State, State, str], None]] = {
    "reconciler stats": _says("queued", "failed", "dead"),
    "reconciler jobs list --status failed --queue email": _says("email.send", "failed"),
    "reconciler jobs list --status running": _says("report.build", "running"),
    "reconciler jobs show 1": _says("email.send", "SMTP timeout"),
    "reconciler errors --since 1h": _says("SMTP timeout"),
    "reconciler workers --heartbeat-interval 30s": _says("w-crashed", "w-live"),
    "reconciler jobs reset-stuck --older-than 10m --dry-run": _unchanged,
    "reconciler jobs reset-stuck --older-than 10m": _moved({9}, "stale"),
    "reconciler jobs retry-failed --queue email --dry-run": _unchanged,
    'reconciler jobs retry-failed --queue email --reason "SMTP back, INC-42"': _moved(
        {1, 2, 3}, "queued"
    ),
    'reconciler jobs cancel 4 --reason "duplicate order"': _moved({4}, "cancelled"),
    "reconciler jobs requeue 4": _moved({4}, "queued"),
    "reconciler dead-letter list": _says("report.export"),
    "reconciler dead-letter errors": _says("disk full", "bad template"),
    "reconciler dead-letter replay --tenant globex --dry-run": _unchanged,
    "reconciler dead-letter replay 8": _moved({8}, "queued"),
    "reconciler dead-letter purge --kind report.export --dry-run": _unchanged,
    "reconciler dead-letter purge --kind report.export": _no_job(lambda i, st: i in (6, 7)),
    'reconciler pause email --reason "SMTP provider outage"': _paused({"email"}),
    "reconciler resume email": _paused(set()),
    'reconciler pause --all --reason "DB failover, INC-43"': _paused({"*"}),
    'reconciler resume --all --reason "failover done"': _paused(set()),
    "reconciler pause --history": _says("SMTP provider outage", "failover done"),
    "reconciler purge --older-than 30d --dry-run": _unchanged,
    "reconciler purge --older-than 30d": _no_job(lambda i, st: i in range(13, 18)),
    "reconciler check": _says("reconciler check: "),
}


def test_every_example_runs(cli: CLI, db: Database, db_now: datetime, tmp_path: Path) -> None:
    """Each example exits 0 (check: 0, 1 or 2, a finding, never 3) with no traceback, its
    --json output parses, and it does what the README says it does (EFFECTS)."""
    seed(db, db_now)
    # The backfill example reads its jobs from a file, as a shell would.
    (tmp_path / "backfill.jsonl").write_text(
        '{"kind": "report.build", "idempotency_key": "b-1"}\n{"kind": "report.build"}\n'
    )
    checked: set[str] = set()
    for line in examples():
        argv = shlex.split(line)[1:]
        stdin = ""
        if "<" in argv:
            at = argv.index("<")
            stdin = (tmp_path / argv[at + 1]).read_text()
            argv = argv[:at] + argv[at + 2 :]
        before = _state(db)
        done = cli(*argv, stdin=stdin, cwd=tmp_path, env={"COLUMNS": "200"})
        allowed = {0, 1, 2} if argv[0] == "check" else {0}
        assert done.returncode in allowed, f"{line}\n{done.stderr}"
        assert "Traceback" not in done.stderr, line
        if "--json" in argv:
            lines = done.stdout.splitlines()
            assert lines, f"{line}: no JSON at all"
            for out in lines:
                json.loads(out)
        if line in EFFECTS:
            EFFECTS[line](before, _state(db), done.stdout)
            checked.add(line)
    assert checked == set(EFFECTS), "an EFFECTS entry no longer matches a README example"
    exported = (tmp_path / "dead-reports.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in exported) == [6, 7]  # 8 was replayed
    with db.transaction() as conn:
        keyed = conn.execute(
            text("SELECT kind, priority FROM jobs WHERE idempotency_key = 'report-7'")
        ).one()
        backfilled = conn.execute(
            text("SELECT count(*) FROM jobs WHERE idempotency_key = 'b-1'")
        ).scalar_one()
    assert tuple(keyed) == ("report.build", 1)
    assert backfilled == 1


def test_the_procedure_table_commands_parse() -> None:
    """Every command named in the runbook table is valid syntax (placeholders filled in)."""
    table = operations_section().split("### A night on call")[0]
    filled = {
        "ID": "1",
        "ID...": "1",
        "QUEUE...": "email",
        "Q": "email",
        "K": "kind",
        "FILE": "x.jsonl",
    }
    commands = re.findall(r"`(reconciler [^`]*)`", table)
    assert len(commands) > 20
    for command in commands:
        words = [filled.get(w, w) for w in shlex.split(command)[1:] if w not in ("...", "--all,")]
        if "<" in words:  # a shell redirection, not an argument
            words = words[: words.index("<")]
        build_parser().parse_args(words)
