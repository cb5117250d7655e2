"""A dead-letter export counts as a backup only once its file and folder are on disk.

Faults are injected into a real ``reconciler dead-letter export`` process: I/O
errors from the kernel with ``strace -e inject`` at each durable step (the
file's fsync, the link into place, the folder's fsync), and a SIGKILL between
the durable file and its record. After each, no export is recorded for a file
that is not there, and ``dead-letter purge`` deletes nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reconciler.db import Database
from tests.acceptance.conftest import _base_env
from tests.helpers import jobs_by_status, wait_until
from tests.ops_data import seed

STRACE = shutil.which("strace")


def _env(pg_url: str, schema: str) -> dict[str, str]:
    return {**_base_env(), "RECONCILER_DATABASE_URL": pg_url, "RECONCILER_SCHEMA": schema}


def _exports(pg_url: str, schema: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ops_exports"))
        ).fetchone()
    assert row is not None
    return int(row[0])


def _purge(pg_url: str, schema: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "dead-letter", "purge", "--all", "--yes"],
        env=_env(pg_url, schema),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Which call fails, and at which of its calls in the process (strace counts per syscall).
FAULTS = {
    "fsync of the file": "fsync:error=EIO:when=1",
    "link into place": "link:error=ENOSPC:when=1",
    "fsync of the folder": "fsync:error=EIO:when=2",
}


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_an_io_error_at_any_durable_step_records_no_backup(
    pg_url: str, schema: str, db: Database, db_now: datetime, tmp_path: Path, fault: str
) -> None:
    """An I/O error at each step: one line, non-zero exit, no export recorded, no partial file
    left, and purge still refuses (before the fix, the export was recorded before the fsync
    and the rename, so purge deleted jobs whose file never reached the disk)."""
    seed(db, db_now)
    target = tmp_path / "dead.jsonl"
    done = subprocess.run(
        [
            str(STRACE),
            "-f",
            "-qq",
            "-o",
            os.devnull,
            "-e",
            f"inject={FAULTS[fault]}",
            sys.executable,
            "-m",
            "reconciler",
            "dead-letter",
            "export",
            "--output",
            str(target),
        ],
        env=_env(pg_url, schema),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "nothing was recorded as a backup" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert _exports(pg_url, schema) == 0
    assert not (tmp_path / "dead.jsonl.partial").exists()

    purge = _purge(pg_url, schema, tmp_path)
    assert purge.returncode == 2 and "no export" in purge.stderr
    assert jobs_by_status(db)["dead"] == 3


def test_killed_between_the_durable_file_and_its_record_nothing_counts(
    pg_url: str, schema: str, db: Database, db_now: datetime, tmp_path: Path
) -> None:
    """SIGKILL after the file is on disk but before its record commits (held up by a lock on
    ops_exports): the file is there, no export is recorded, purge deletes nothing."""
    seed(db, db_now)
    target = tmp_path / "dead.jsonl"
    exports = sql.Identifier(schema, "ops_exports")
    with psycopg.connect(pg_url) as holder, psycopg.connect(pg_url, autocommit=True) as watch:
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(exports))
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "dead-letter", "export", "--output", str(target)],
            env=_env(pg_url, schema),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: (
                    watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%%INSERT INTO ops_exports%%'"
                    ).fetchone()
                    == (1,)
                    or proc.poll() is not None
                ),
                "the export waits to record itself",
            )
            assert proc.poll() is None, proc.communicate()
            assert target.exists()  # on disk before any record is attempted
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=60)
            holder.rollback()
    assert _exports(pg_url, schema) == 0
    assert len(target.read_text().splitlines()) == 3
    purge = _purge(pg_url, schema, tmp_path)
    assert purge.returncode == 2
    assert jobs_by_status(db)["dead"] == 3
