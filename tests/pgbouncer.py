"""A real PgBouncer in transaction pooling mode, in front of the test server.

Shared by the acceptance test (the daemon and ad hoc runs behind it) and the
reliability suite (daemon replicas behind it, one killed). Registered as a
pytest plugin by ``tests/conftest.py``, so any test can ask for
``bouncer_url``. Skips where there is no ``pgbouncer`` binary or no TCP
PostgreSQL to put it in front of.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from tests.acceptance.daemons import eventually

__all__ = ["Bouncer", "bouncer", "bouncer_url", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found is None and Path("/usr/sbin/pgbouncer").exists():
        found = "/usr/sbin/pgbouncer"
    return found


@dataclass(frozen=True)
class Bouncer:
    """A running PgBouncer: the URL to give clients, and its admin console."""

    url: str
    port: int
    admin_user: str

    def server_ports(self) -> set[int]:
        """Local ports of PgBouncer's server connections (``SHOW SERVERS``).

        They are the ``client_port`` of its backends in ``pg_stat_activity``:
        the way to find, on the real server, the connections its clients used.
        The admin console speaks only the simple query protocol, hence
        ``exec_`` on the raw connection.
        """
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user=self.admin_user,
            autocommit=True,
        ) as conn:
            result = conn.pgconn.exec_(b"SHOW SERVERS")
            names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            column = names.index("local_port")
            return {
                int((result.get_value(row, column) or b"0").decode())
                for row in range(result.ntuples)
            }


REQUIRE_ENV = "RECONCILER_TEST_REQUIRE_PGBOUNCER"


def _unavailable(why: str) -> None:
    """Skip, saying why; fail instead where CI's PostgreSQL 15 pass requires PgBouncer
    (there a failed installation must fail the build, not skip quietly)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{why}, and {REQUIRE_ENV}=1 requires the PgBouncer tests to run")
    pytest.skip(why)


@pytest.fixture
def bouncer(pg_url: str) -> Iterator[Bouncer]:
    """PgBouncer with a pool smaller than its clients, so server connections are shared."""
    binary = _binary()
    url = make_url(pg_url)
    why = None
    if binary is None:
        why = "pgbouncer is not installed"
    elif not url.host or url.host.startswith("/"):
        why = "the test server has no TCP address to put PgBouncer in front of"
    if why is not None:
        _unavailable(why)
    assert binary is not None
    port = free_port()
    user = url.username or "postgres"
    work = Path(tempfile.mkdtemp(prefix="reconciler-pgbouncer-"))
    work.chmod(0o777)  # as root, pgbouncer drops to 'nobody', which must write its log here
    config = work / "pgbouncer.ini"
    config.write_text(
        f"""
[databases]
{url.database} = host={url.host} port={url.port or 5432} dbname={url.database} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
admin_users = {user}
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {work}/pgbouncer.log
pidfile = {work}/pgbouncer.pid
""",
        encoding="utf-8",
    )
    config.chmod(0o644)
    run_as = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = work / "pgbouncer.log"
    proc = subprocess.Popen([binary, *run_as, str(config)])
    bounced = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    try:

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                assert proc.poll() is None, log.read_text() if log.exists() else "no log"
                return False
            return True

        eventually(accepting, timeout=10, what="pgbouncer to listen")
        yield Bouncer(bounced, port, user)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def bouncer_url(bouncer: Bouncer) -> str:
    """A postgresql:// URL that goes through PgBouncer to the test database."""
    return bouncer.url
