"""The daemon as the maintenance: replicas, one SIGKILLed, connections terminated.

The same workload and invariants as the in-process loop's scenarios, with
real ``reconciler daemon`` processes doing the maintenance.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.db import Database
from tests.helpers import wait_until
from tests.reliability.daemon import DaemonReplicas, daemon_available
from tests.reliability.faults import FaultSchedule
from tests.reliability.invariants import format_report
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema

# A SIGKILLed replica keeps the tasks it was running from the other replica until its
# leases lapse: RECONCILER_LEASE_TTL after their last renewal, by design (leases.py).
# Short here (the least the settings allow: twice the statement timeout), and part of
# the "nothing stuck" bound: a job whose worker died just as the killed replica took
# mark-stale's lease waits up to one TTL longer than without a kill.
STATEMENT_TIMEOUT = timedelta(seconds=5)
LEASE_TTL = 2 * STATEMENT_TIMEOUT

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(not daemon_available(), reason="no `reconciler daemon` in this checkout"),
]


def test_daemon_replicas_keep_every_invariant(
    db: Database, pg_url: str, schema: str, tmp_path: Path
) -> None:
    """Two daemons; one is SIGKILLed and restarted, their connections terminated: all hold."""
    prepare_schema(db)
    w = Workload(
        pg_url,
        schema,
        tmp_path / "records",
        WorkloadConfig(workers=6, slack=WorkloadConfig.slack + LEASE_TTL),
        maintenance=DaemonReplicas.factory(tmp_path / "daemon", replicas=2),
        settings_overrides={"statement_timeout": STATEMENT_TIMEOUT, "lease_ttl": LEASE_TTL},
    )
    daemons = w.maintenance
    assert isinstance(daemons, DaemonReplicas)
    faults = FaultSchedule(w, ["terminate"], every=1.5)
    w.start()
    faults.start()

    def moved(transition: str) -> int:
        return int(daemons.summary()["transitions"].get(transition, 0))

    try:
        # Polls for work done, never a window in which it must happen: on a loaded
        # 2-core machine a 7 s window once saw no stale mark at all.
        wait_until(lambda: moved("running->stale") > 0, "a first stale mark", timeout=120, poll=0.5)
        daemons.kill(0)
        stale, purged = moved("running->stale"), moved("succeeded->purged")
        wait_until(
            lambda: moved("running->stale") > stale and moved("succeeded->purged") > purged,
            "marks and purges after one replica was SIGKILLed",
            timeout=120,
            poll=0.5,
        )
    finally:
        faults.stop()
        w.stop(settle=0.5)
    summary = daemons.summary()
    assert summary["unexpected_errors"] == []
    assert summary["transitions"].get("running->stale", 0) > 0
    _, results = w.check(db)
    assert all(r.ok for r in results), "\n" + format_report(results)
