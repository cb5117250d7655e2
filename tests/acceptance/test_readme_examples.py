"""The README's examples outside Operations: quick start, policies, the daemon's commands.

Every ``python -m reconciler ...`` line of those sections runs against the test's schema
(``export`` lines are the test's own environment; ``pip install``, ``daemon`` and
``demo`` are covered by test_wheel, test_daemon and test_demo), and what each is said to
do is checked.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from sqlalchemy import text

from reconciler.db import Database
from tests.acceptance.conftest import CLI
from tests.procrastinate_env import Pq
from tests.profile_tables import DDL, PROFILES

README = Path(__file__).resolve().parents[2] / "README.md"
ELSEWHERE = ("daemon", "demo")  # long-running: their own acceptance tests


def _section(title: str) -> str:
    body = README.read_text(encoding="utf-8")
    start = body.index(f"\n{title}\n")
    end = body.find("\n## ", start + 1)
    return body[start : end if end != -1 else None]


def _subsection(title: str) -> str:
    """A ### section alone, up to the next ### (or ##) heading."""
    section = _section(title)
    end = section.find("\n### ", len(title) + 2)
    return section[: end if end != -1 else None]


def _lines(section: str) -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    found = []
    for block in blocks:
        for line in block.splitlines():
            if not line.startswith("python -m reconciler "):
                continue
            argv = shlex.split(line, comments=True)[3:]
            if argv and argv[0] not in ELSEWHERE:
                found.append(argv)
    return found


def _policy(db: Database, where: str) -> dict[str, object] | None:
    with db.transaction() as conn:
        row = conn.execute(text(f"SELECT * FROM retry_policies WHERE {where}")).first()
    return None if row is None else dict(row._mapping)


def test_quick_start_examples_do_what_they_say(cli: CLI, db: Database) -> None:
    """`run mark-stale`, `migrate`, `run mark-stale --dry-run`: exit 0, say what they did."""
    lines = _lines(_section("## Quick start"))
    assert ["migrate"] in lines and ["run", "mark-stale", "--dry-run"] in lines
    for argv in lines:
        done = cli(*argv)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        assert "Traceback" not in done.stderr
        if argv[0] == "migrate":
            assert "up to date" in done.stdout or "applied" in done.stdout
        if argv[0] == "run":
            assert "mark-stale" in done.stdout


def test_policy_examples_change_the_policies_as_described(cli: CLI, db: Database) -> None:
    """show; set priority 1 to 5 attempts, max delay 10m; set a kind's row; delete it."""
    lines = _lines(_section("### Retry policies"))
    assert len(lines) == 4
    for argv in lines:
        done = cli(*argv)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        if argv == ["policies"]:
            assert "critical" in done.stdout
        if argv[:4] == ["policies", "set", "--priority", "1"]:
            high = _policy(db, "priority = 1")
            assert high is not None and high["max_attempts"] == 5
            assert str(high["max_delay"]) == "0:10:00"
        if argv[:4] == ["policies", "set", "--kind", "send-email"]:
            row = _policy(db, "kind = 'send-email'")
            assert row is not None and row["max_attempts"] == 8 and row["jitter"] == 0.2
        if argv[:2] == ["policies", "delete"]:
            assert _policy(db, "kind = 'send-email'") is None
    done = cli("policies", "--json")
    assert done.returncode == 0
    assert all(json.loads(line) for line in done.stdout.splitlines())


def test_daemon_section_commands_run(cli: CLI, db: Database) -> None:
    """migrate, schedule and status from "Running the daemon" (the daemon itself: test_daemon)."""
    lines = _lines(_section("## Running the daemon"))
    assert {a[0] for a in lines} >= {"migrate", "schedule", "status"}
    for argv in lines:
        done = cli(*argv)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        if argv[0] == "schedule":
            assert "mark-stale" in done.stdout and "vacuum-analyze" in done.stdout
        if argv[0] == "status":
            assert "mark-stale" in done.stdout


def test_the_procrastinate_walkthrough_finds_and_retries_a_dead_workers_job(
    cli: CLI, pq: Pq
) -> None:
    """The README's Procrastinate lines, in order, on Procrastinate's real schema."""
    lines = _lines(_subsection("### Procrastinate"))
    assert [argv[:2] for argv in lines] == [
        ["migrate"],
        ["profiles", "check"],
        ["run", "mark-stale"],
        ["run", "mark-stale"],
    ]
    worker = pq.sql(
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour')"
        " RETURNING id"
    )[0][0]
    job = pq.defer()
    pq.sql(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
        (worker, job),
    )
    env = {"RECONCILER_PROFILES": f"procrastinate:{pq.schema}"}
    outputs = []
    for argv in lines:
        done = cli(*argv, env=env)
        # profiles check exits 1: Procrastinate's purge wants one more index
        assert done.returncode in ((0, 1) if argv[0] == "profiles" else (0,)), done.stderr
        outputs.append(done.stdout)
    assert "mark-stale for procrastinate (dry run, nothing written): would change 1" in outputs[2]
    assert "doing -> todo" in outputs[3]
    assert pq.status(job) == ("todo", 1)


def test_the_table_profile_lines_check_preview_and_list(
    cli: CLI, db: Database, tmp_path: Path
) -> None:
    """The README's lines for a table described in TOML, on runbook 002's two tables."""
    lines = _lines(_subsection("### Any other table"))
    assert [argv[:2] for argv in lines] == [
        ["profiles", "check"],
        ["run", "mark-stale"],
        ["jobs", "list"],
    ]
    paths = []
    with db.transaction() as conn:
        for name in ("ai-course-jobs", "ai-media-jobs"):
            conn.execute(text(DDL[name]))
            body = (PROFILES / f"{name}.toml").read_text(encoding="utf-8")
            path = tmp_path / f"{name}.toml"
            path.write_text(body.replace('schema = "public"', f'schema = "{db.schema}"'))
            paths.append(str(path))
        conn.execute(
            text(
                "INSERT INTO ai_course_jobs (status, last_heartbeat)"
                " VALUES ('processing', now() - interval '1 hour'), ('failed', NULL)"
            )
        )
    env = {"RECONCILER_PROFILES": ",".join(paths)}
    checked, preview, listed = (cli(*argv, env=env) for argv in lines)
    assert checked.returncode == 1 and "NO INDEX" in checked.stdout  # indexes to add
    assert preview.returncode == 0, preview.stderr
    assert "would change 1 job(s)" in preview.stdout and "processing -> stale" in preview.stdout
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[1] for line in listed.stdout.splitlines()] == ["failed"]
