"""The README's "Operations" section: every example runs, in order, against a seeded queue."""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime
from pathlib import Path

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


def test_every_example_runs(cli: CLI, db: Database, db_now: datetime, tmp_path: Path) -> None:
    """Each example exits 0 (check: 0, 1 or 2) with no traceback; --json output parses."""
    seed(db, db_now)
    # The backfill example reads its jobs from a file, as a shell would.
    (tmp_path / "backfill.jsonl").write_text(
        '{"kind": "report.build", "idempotency_key": "b-1"}\n{"kind": "report.build"}\n'
    )
    for line in examples():
        argv = shlex.split(line)[1:]
        stdin = ""
        if "<" in argv:
            at = argv.index("<")
            stdin = (tmp_path / argv[at + 1]).read_text()
            argv = argv[:at] + argv[at + 2 :]
        done = cli(*argv, stdin=stdin, cwd=tmp_path)
        allowed = {0, 1, 2} if argv[0] == "check" else {0}
        assert done.returncode in allowed, f"{line}\n{done.stderr}"
        assert "Traceback" not in done.stderr, line
        if "--json" in argv:
            for out in done.stdout.splitlines():
                json.loads(out)
    assert (tmp_path / "dead-reports.jsonl").exists()


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
