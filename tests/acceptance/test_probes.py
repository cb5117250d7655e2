"""The daemon's /healthz and /readyz: liveness never asks the database, readiness does."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from reconciler.db import Database
from reconciler.probes import parse_addr
from tests.acceptance.daemons import DaemonProcess, eventually, fast_schedule
from tests.pgbouncer import free_port


def _get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body) of GET path, or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _daemon(tmp_path: Path, pg_url: str, db: Database, port: int) -> DaemonProcess:
    """`reconciler daemon` on the test's schema, fast schedule, endpoint on ``port``."""
    return DaemonProcess(
        tmp_path,
        {
            "RECONCILER_DATABASE_URL": pg_url,
            "RECONCILER_SCHEMA": db.schema,
            "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path)),
            "RECONCILER_HTTP_ADDR": f"127.0.0.1:{port}",
        },
    )


def test_healthy_and_ready_with_a_current_schema(pg_url: str, db: Database, tmp_path: Path) -> None:
    """/healthz 200 ok, /readyz 200 ready, anything else 404; SIGTERM still exits 0."""
    port = free_port()
    daemon = _daemon(tmp_path, pg_url, db, port)
    try:
        eventually(lambda: _get(port, "/healthz") == (200, "ok\n"), what="/healthz to answer ok")
        assert _get(port, "/readyz") == (200, "ready\n")
        missing = _get(port, "/nope?x=1")
        assert missing is not None and missing[0] == 404

        def counted() -> str | None:
            got = _get(port, "/metrics")
            assert got is not None and got[0] == 200
            ran = 'reconciler_task_runs_total{status="ok",task="mark-stale"}'
            return got[1] if ran in got[1] else None

        text = eventually(counted, timeout=60, what="a mark-stale run counted at /metrics")
        # Not ready while the schema is not this build's, ready again once it is.
        with db.transaction() as conn:
            conn.exec_driver_sql("ALTER TABLE schema_migrations RENAME TO schema_migrations_away")
        gone = _get(port, "/readyz")
        assert gone is not None and gone[0] == 503 and "is not migrated" in gone[1]
        assert _get(port, "/healthz") == (200, "ok\n")
        with db.transaction() as conn:
            conn.exec_driver_sql("ALTER TABLE schema_migrations_away RENAME TO schema_migrations")
        assert _get(port, "/readyz") == (200, "ready\n")
        assert "reconciler_jobs" in text and "reconciler_metrics_stale 0.0" in text
        assert "reconciler_ledger_pending_gaps 0.0" in text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()


def test_a_database_outage_is_not_ready_but_still_alive(tmp_path: Path) -> None:
    """Nothing listens at the database's address: /readyz 503 saying so, /healthz 200, so an
    orchestrator stops routing to it instead of restarting a daemon that will recover."""
    port = free_port()
    daemon = DaemonProcess(
        tmp_path,
        {
            "RECONCILER_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:9/none",
            "RECONCILER_SCHEDULE_FILE": str(fast_schedule(tmp_path, '[requeue]\nevery = "1s"\n')),
            "RECONCILER_HTTP_ADDR": f"127.0.0.1:{port}",
        },
    )
    try:
        eventually(lambda: _get(port, "/healthz") == (200, "ok\n"), what="/healthz to answer ok")
        ready = _get(port, "/readyz")
        assert ready is not None and ready[0] == 503
        assert ready[1].startswith("not ready: the database does not answer")
        assert "pw" not in ready[1]
        scraped = _get(port, "/metrics")  # answers at once, from the (empty) cache
        assert scraped is not None and scraped[0] == 200
        assert "reconciler_metrics_stale 1.0" in scraped[1]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()


def test_a_port_in_use_is_one_line_and_exit_2(pg_url: str, db: Database, tmp_path: Path) -> None:
    """Another process listens there: the daemon does not start, one line names the setting."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = _daemon(tmp_path, pg_url, db, port)
        assert daemon.wait() == 2
    err = daemon.log_path.read_text()
    assert "RECONCILER_HTTP_ADDR" in err and "cannot listen there" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_addresses_parse(value: str, expected: tuple[str, int]) -> None:
    assert parse_addr(value) == expected


@pytest.mark.parametrize("value", ["9464", "127.0.0.1", "127.0.0.1:99999", "::1:9464", "a b:1"])
def test_bad_addresses_are_refused(value: str) -> None:
    """Each is a ValueError saying how to write it (the settings turn it into one line)."""
    with pytest.raises(ValueError, match=r"host:port|1 to 65535"):
        parse_addr(value)


def test_the_scraped_job_counters_match_the_ledger_under_a_workload(
    pg_url: str, db: Database, tmp_path: Path
) -> None:
    """A workload through the SQL API while the daemon serves /metrics: once it settles,
    the sum of reconciler_job_transitions_total equals the ledger's events since start."""
    import re
    import threading

    import psycopg
    from psycopg import sql

    port = free_port()
    daemon = _daemon(tmp_path, pg_url, db, port)

    def ledger() -> int:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(db.schema, "job_events"))
            ).fetchone()
            return int(row[0]) if row else 0

    def counted() -> float:
        got = _get(port, "/metrics")
        assert got is not None and got[0] == 200
        values = re.findall(r"^reconciler_job_transitions_total\{[^}]*\} (\S+)$", got[1], re.M)
        return sum(float(v) for v in values)

    def work(seed: int) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.schema)))
            for i in range(20):
                conn.execute("SELECT enqueue(kind => 'w', queue => 'email')")
                row = conn.execute("SELECT id, claim_token FROM claim(worker => 'w')").fetchone()
                if row is not None:
                    fn = "fail" if (i + seed) % 4 == 0 else "complete"
                    conn.execute(sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(fn)), row)
                if i % 5 == 0:
                    _get(port, "/metrics")  # scrapes while the workload runs

    try:
        eventually(lambda: _get(port, "/healthz") == (200, "ok\n"), what="/healthz to answer ok")
        before = ledger()  # nothing writes before this: the daemon's head is here
        writers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join(timeout=120)
        eventually(
            lambda: counted() == ledger() - before,
            timeout=60,
            what="the scraped counters to equal the ledger's new events",
        )
        assert ledger() - before >= 4 * 20 * 2
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()
