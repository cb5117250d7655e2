"""A black-holed connection: a TCP proxy that stops forwarding without closing.

The server's statement_timeout fires, but its answer never arrives; TCP
keepalives never fire either, because the proxy's own kernel answers them.
Only the client can give up: Database.deadline shuts the engine's sockets
down once a transaction outlasts its statement timeout by a margin, so the
blocked read fails and the run ends (failed, or with a database error the
daemon logs and retries) instead of hanging.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.tasks import TaskResult
from tests.conftest import connect, make_settings
from tests.helpers import wait_until


class BlackHoleProxy:
    """Forwards TCP both ways until black_hole(); then holds every socket open, silent."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.forwarding = True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self.closed:
            if not self.forwarding:
                select.select([], [], [], 0.1)  # hold the socket, read nothing, send nothing
                continue
            ready, _, _ = select.select([src], [], [], 0.1)
            if not ready or not self.forwarding:
                continue
            try:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
            except OSError:
                return

    def black_hole(self) -> None:
        self.forwarding = False

    def close(self) -> None:
        self.closed = True
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[BlackHoleProxy]:
    url = make_url(pg_url)
    if not url.host or url.host.startswith("/") or "host" in url.query:
        pytest.skip("the test server is reached by a socket file, not TCP")
    p = BlackHoleProxy(url.host, url.port or 5432)
    yield p
    p.close()


def test_run_task_gives_up_on_a_black_holed_connection(
    db: Database, pg_url: str, schema: str, proxy: BlackHoleProxy
) -> None:
    """A run whose server goes silent ends within its deadline instead of hanging."""
    via = (
        make_url(pg_url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )
    settings = make_settings(
        via, schema, statement_timeout=timedelta(seconds=1), lock_timeout=timedelta(seconds=1)
    )
    through = connect(via, schema, settings)
    results: list[TaskResult | Exception] = []
    try:
        assert run_task(through, settings, "mark-stale").status == "ok"  # the proxy works
        proxy.black_hole()

        def run() -> None:
            try:
                results.append(run_task(through, settings, "mark-stale"))
            except Exception as exc:  # a database error is giving up too
                results.append(exc)

        threading.Thread(target=run, daemon=True).start()
        # Liveness, not speed: the deadline (statement timeout + 5 s) plus a
        # reconnect attempt (connect_timeout 10 s), with room to spare. Without
        # the deadline it was still stuck after 75 s.
        wait_until(lambda: bool(results), "run_task to give up", timeout=60)
        outcome = results[0]
        if isinstance(outcome, TaskResult):
            assert outcome.status == "failed"
        else:
            assert isinstance(outcome, OperationalError | DBAPIError), repr(outcome)
    finally:
        proxy.close()  # releases the stuck run: its socket is closed under it
        through.dispose()
