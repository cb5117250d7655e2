"""The replica scenario through a real PgBouncer in transaction pooling mode.

Workers and enqueuers connect directly; the two daemon replicas go through
PgBouncer, whose pool is smaller than their connections, so every
transaction may land on a server connection another replica used last. One
replica is SIGKILLed mid-run. Its leases are rows, so they expire after
``RECONCILER_LEASE_TTL`` and the survivor takes them; had it held a session
advisory lock, the lock would stay on a pooled server connection forever,
which is what ``pg_locks`` is checked for. Skipped like the PgBouncer
acceptance test where there is no pgbouncer or no TCP server.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reconciler.db import Database
from tests.helpers import wait_until
from tests.pgbouncer import Bouncer
from tests.reliability.daemon import DaemonReplicas, daemon_available
from tests.reliability.invariants import format_report
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(not daemon_available(), reason="no `reconciler daemon` in this checkout"),
]

# Short, so a dead replica's leases lapse within the scenario: the settings
# require a lease to outlast two statement timeouts.
STATEMENT_TIMEOUT = timedelta(seconds=2)
LEASE_TTL = timedelta(seconds=5)


def _leases(pg_url: str, schema: str) -> list[tuple[str, int, bool]]:
    """Every task's lease: (task, holder's pid, still unexpired) by the database clock."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT task, split_part(holder, ':', 2)::int, expires_at > clock_timestamp()"
                " FROM {} ORDER BY task"
            ).format(sql.Identifier(schema, "task_leases"))
        ).fetchall()
    return [(str(t), int(pid), bool(live)) for t, pid, live in rows]


def _run_pids(pg_url: str, schema: str) -> set[int]:
    """The processes that have recorded a run of any task."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT DISTINCT pid FROM {}").format(sql.Identifier(schema, "runs"))
        ).fetchall()
    return {int(r[0]) for r in rows}


def test_replicas_behind_pgbouncer_keep_every_invariant_and_leave_no_lock(
    db: Database, pg_url: str, schema: str, bouncer: Bouncer, tmp_path: Path
) -> None:
    """Two daemons via PgBouncer, one SIGKILLed: invariants hold, its leases pass, no lock stays."""
    prepare_schema(db)
    w = Workload(
        pg_url,
        schema,
        tmp_path / "records",
        WorkloadConfig(workers=4),
        maintenance=DaemonReplicas.factory(tmp_path / "daemon", replicas=2),
        maintenance_url=bouncer.url,
        settings_overrides={"statement_timeout": STATEMENT_TIMEOUT, "lease_ttl": LEASE_TTL},
    )
    daemons = w.maintenance
    assert isinstance(daemons, DaemonReplicas)
    w.start()
    try:
        # Both replicas have run tasks through the pool before one dies.
        wait_until(
            lambda: set(daemons.pids()) <= _run_pids(pg_url, schema),
            "both replicas to have recorded runs",
            timeout=20,
        )
        dead, survivor = daemons.pids()
        daemons.kill(0, restart=False)
        # The survivor takes every task over once the dead one's leases lapse.
        wait_until(
            lambda: (
                all(pid == survivor for _, pid, _ in _leases(pg_url, schema))
                and len(_leases(pg_url, schema)) == 5
            ),
            "the survivor to have run every task",
            timeout=LEASE_TTL.total_seconds() + 20,
        )
        purged = daemons.summary()["transitions"].get("succeeded->purged", 0)
        wait_until(
            lambda: daemons.summary()["transitions"].get("succeeded->purged", 0) > purged,
            "the survivor to purge more",
            timeout=60,
            poll=0.5,
        )
    finally:
        w.stop(settle=0.5)
    leases = _leases(pg_url, schema)
    assert [t for t, pid, live in leases if live and pid != survivor] == [], leases
    assert dead not in {pid for _, pid, _ in leases}
    ports = sorted(bouncer.server_ports())
    assert ports, "PgBouncer kept no server connection to look at"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        locks = conn.execute(
            "SELECT a.pid, a.client_port, a.application_name, l.objid FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory'"
            " AND (a.client_port = ANY(%s) OR a.application_name LIKE 'reconciler daemon %%')",
            [ports],
        ).fetchall()
    assert locks == [], f"advisory locks on the daemons' server connections: {locks}"
    summary = daemons.summary()
    assert summary["unexpected_errors"] == []
    _, results = w.check(db)
    assert all(r.ok for r in results), "\n" + format_report(results)
