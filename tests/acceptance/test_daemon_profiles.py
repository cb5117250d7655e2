"""The daemon with several profiles: runbook 002's two tables, and native, in one process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from reconciler.db import Database
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.profile_tables import DDL, PROFILES


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.close()


def test_one_daemon_heals_both_of_runbook_002s_tables(
    db: Database, pg_url: str, tmp_path: Path, daemon: list[DaemonProcess]
) -> None:
    paths = []
    with db.transaction() as conn:
        for name, table in (
            ("ai-course-jobs", "ai_course_jobs"),
            ("ai-media-jobs", "ai_media_jobs"),
        ):
            conn.execute(text(DDL[name]))
            # A runner died an hour ago, holding a job with one attempt left.
            conn.execute(
                text(
                    f"INSERT INTO {table} (status, retry_count, max_retries, locked_by,"
                    " last_heartbeat)"
                    " VALUES ('processing', 1, 3, 'runner-1', now() - interval '1 hour')"
                )
            )
            body = (PROFILES / f"{name}.toml").read_text(encoding="utf-8")
            path = tmp_path / f"{name}.toml"
            path.write_text(body.replace('schema = "public"', f'schema = "{db.schema}"'))
            paths.append(str(path))
    env = {
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": db.schema,
        "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path)),
        "RECONCILER_PROFILES": ",".join(["native", *paths]),
    }
    process = DaemonProcess(tmp_path, env)
    daemon.append(process)

    def statuses() -> list[str] | None:
        with db.transaction(rollback=True) as conn:
            found = [
                conn.execute(text(f"SELECT status FROM {t}")).scalar_one()
                for t in ("ai_course_jobs", "ai_media_jobs")
            ]
        return found if found == ["pending", "pending"] else None

    # processing -> stale (mark-stale), then stale -> pending after the backoff (requeue)
    eventually(statuses, timeout=60, what="both tables' dead runner's jobs requeued")
    started = process.events("daemon.started")[0]
    assert started["profiles"] == ["native", "ai-course-jobs", "ai-media-jobs"]
    with db.transaction(rollback=True) as conn:
        profiles = {
            row.profile
            for row in conn.execute(
                text("SELECT DISTINCT profile FROM runs WHERE task = 'requeue'")
            )
        }
        ledger = conn.execute(
            text("SELECT profile, from_status, to_status FROM ledger ORDER BY id")
        ).all()
    assert profiles == {"native", "ai-course-jobs", "ai-media-jobs"}
    assert sorted(map(tuple, ledger)) == sorted(
        [
            ("ai-course-jobs", "processing", "stale"),
            ("ai-course-jobs", "stale", "pending"),
            ("ai-media-jobs", "processing", "stale"),
            ("ai-media-jobs", "stale", "pending"),
        ]
    )
    assert process.stop() == 0


def test_a_bad_profile_stops_the_daemon_before_it_starts(
    db: Database, pg_url: str, tmp_path: Path, daemon: list[DaemonProcess]
) -> None:
    env = {
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_SCHEMA": db.schema,
        "RECONCILER_PROFILES": f"native,{tmp_path / 'missing.toml'}",
    }
    process = DaemonProcess(tmp_path, env)
    daemon.append(process)
    assert process.wait(timeout=60) == 2
    assert "missing.toml: no such profile file" in process.output()
