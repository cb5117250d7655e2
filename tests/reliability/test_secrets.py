"""The database password and the Sentry DSN never show in anything the suite captures.

A short workload whose every connection URL carries a distinctive password,
two daemon replicas with a Sentry DSN (aimed at a local port nothing listens
on: check-ins and events are really sent, and fail, without leaving the
machine), their connections terminated now and then so errors get logged,
and the CLI with ``--json`` and with a database that does not exist. Then
everything is scanned for the password (raw and URL-encoded) and the DSN's
key: the daemons' logs, the workers' and enqueuers' records, the CLI's
output, the ``runs`` table, ``ps`` and the daemons' ``/proc/<pid>/cmdline``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from reconciler.db import Database
from tests.helpers import wait_until
from tests.pgbouncer import free_port
from tests.reliability.daemon import REPO, DaemonReplicas, daemon_available
from tests.reliability.faults import FaultSchedule
from tests.reliability.invariants import format_report
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(not daemon_available(), reason="no `reconciler daemon` in this checkout"),
]

PASSWORD = "Sup3r%Secr3t@x"
DSN_KEY = "0123456789abcdef0123456789abcdef"


def _secret_forms() -> list[str]:
    return sorted({PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), DSN_KEY})


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_password_and_sentry_dsn_never_show_anywhere(
    db: Database, pg_url: str, schema: str, tmp_path: Path
) -> None:
    """Logs, records, --json, errors, runs, ps, cmdline: no password, no DSN key."""
    base = make_url(pg_url)
    if not base.host or base.host.startswith("/"):
        pytest.skip("the test server has no TCP address to put a password-bearing URL on")
    # The server trusts local connections, so the password is sent and ignored.
    secret_url = base.set(password="PLACEHOLDER").render_as_string(hide_password=False)
    secret_url = secret_url.replace("PLACEHOLDER", quote(PASSWORD, safe=""), 1)
    # Nothing listens there: the SDK's sends fail at once, on this machine.
    dsn = f"http://{DSN_KEY}@127.0.0.1:{free_port()}/42"
    prepare_schema(db)
    daemon_dir = tmp_path / "daemon"
    w = Workload(
        secret_url,
        schema,
        tmp_path / "records",
        WorkloadConfig(workers=3, enqueue_rate=15.0),
        maintenance=DaemonReplicas.factory(
            daemon_dir, replicas=2, env={"RECONCILER_SENTRY_DSN": dsn}
        ),
    )
    daemons = w.maintenance
    assert isinstance(daemons, DaemonReplicas)
    faults = FaultSchedule(w, ["terminate"], every=1.5)
    captured: dict[str, str] = {}
    w.start()
    faults.start()
    try:
        wait_until(
            lambda: (
                all(b'"daemon.started"' in p.read_bytes() for p in daemon_dir.glob("replica-*.log"))
                and len(list(daemon_dir.glob("replica-*.log"))) == 2
            ),
            "both replicas to start",
            timeout=30,
        )
        # Until there is something to leak: runs that moved jobs, and terminated connections.
        wait_until(
            lambda: (
                faults.injected["terminate"] > 0
                and daemons.summary()["transitions"].get("running->stale", 0) > 0
            ),
            "some work, terminations included",
            timeout=120,
            poll=0.5,
        )
        captured["ps -eo args"] = subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True, check=True
        ).stdout
        for pid in daemons.pids():
            captured[f"/proc/{pid}/cmdline"] = (
                Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            )
    finally:
        faults.stop()
        w.stop(settle=0.5)
    summary = daemons.summary()
    assert summary["unexpected_errors"] == []  # no crash, no traceback, with Sentry unreachable
    assert faults.injected["terminate"] > 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(
        RECONCILER_DATABASE_URL=secret_url,
        RECONCILER_SCHEMA=schema,
        RECONCILER_SENTRY_DSN=dsn,
        RECONCILER_LOG_FORMAT="json",
    )
    ok = _cli(env, "run", "mark-stale", "--json")
    assert ok.returncode == 0, ok.stderr
    captured["cli run --json"] = ok.stdout + ok.stderr
    status = _cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    captured["cli status --json"] = status.stdout + status.stderr
    missing_db = secret_url.replace(f"/{base.database}", "/no_such_db", 1)
    failed = _cli({**env, "RECONCILER_DATABASE_URL": missing_db}, "run", "mark-stale", "--json")
    assert failed.returncode != 0
    assert "no_such_db" in failed.stdout + failed.stderr  # the error says what, just not how
    captured["cli failing run"] = failed.stdout + failed.stderr

    for path in sorted([*daemon_dir.iterdir(), *(tmp_path / "records").iterdir()]):
        captured[str(path.relative_to(tmp_path))] = path.read_bytes().decode(errors="replace")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT r::text FROM {} r").format(sql.Identifier(schema, "runs"))
        ).fetchall()
    captured["runs"] = "\n".join(str(r[0]) for r in rows)

    assert "reconciler daemon" in captured["ps -eo args"]  # taken while they ran
    for text in [p.read_text() for p in daemon_dir.glob("replica-*.log")]:
        assert '"sentry": true' in text  # the DSN really was in use
    leaks = [
        (name, form) for name, text in captured.items() for form in _secret_forms() if form in text
    ]
    assert leaks == []
    _, results = w.check(db)
    assert all(r.ok for r in results), "\n" + format_report(results)
