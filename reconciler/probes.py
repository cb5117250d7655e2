"""The daemon's HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

Off unless ``RECONCILER_HTTP_ADDR`` is set (``127.0.0.1:9464``; binding a
non-loopback address is the operator's explicit choice). One small threaded
server beside the scheduler:

- ``/healthz`` (liveness): 200 while the process's main loop and its scheduler
  are alive and ticking; 503 once they stop or stall. It never touches the
  database, so a database outage does not get a healthy daemon restarted (the
  tasks retry on their own).
- ``/readyz`` (readiness): 200 when the database answers within 2 s on a
  connection of its own (never the tasks' pool) and the schema is at this
  build's version; 503 with the reason otherwise.

- ``/metrics``: the Prometheus exposition (``reconciler/metrics.py``).

Answers are one line of text (or the exposition); nothing is logged per request.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg import sql

from reconciler.sqlfiles import migration_files

__all__ = ["Probe", "bind_http", "parse_addr", "start_serving"]

_ADDR = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})$")
# The main loop ticks every second at most; three missed ticks and more is a stall.
STALL_S = 10.0
READY_TIMEOUT_S = 2
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_addr(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ValueError saying what is wrong."""
    m = _ADDR.match(value.strip())
    if m is None:
        raise ValueError(
            f"{value!r} is not host:port; write e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464"
        )
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not 1 to 65535")
    return m.group("v6") or m.group("host"), port


class Probe:
    """What the endpoints look at: the daemon's liveness marks, and how to reach the DB."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        running: Callable[[], bool],
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.dsn = dsn
        self.metrics = metrics
        self.schema = schema
        self.running = running
        self.alive_at = time.monotonic()
        self.expected = max(version for version, _, _ in migration_files())

    def tick(self) -> None:
        """The main loop is alive (called every tick)."""
        self.alive_at = time.monotonic()

    def healthz(self) -> tuple[int, str]:
        if not self.running():
            return 503, "not running: the scheduler has stopped"
        stalled = time.monotonic() - self.alive_at
        if stalled > STALL_S:
            return 503, f"stalled: the main loop has not ticked for {stalled:.0f}s"
        return 200, "ok"

    def readyz(self) -> tuple[int, str]:
        try:
            with psycopg.connect(
                self.dsn,
                connect_timeout=READY_TIMEOUT_S,
                options=f"-c statement_timeout={READY_TIMEOUT_S * 1000}",
                application_name="reconciler readyz",
                autocommit=True,
            ) as conn:
                row = conn.execute(
                    sql.SQL("SELECT max(version) FROM {}").format(
                        sql.Identifier(self.schema, "schema_migrations")
                    )
                ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 503, f"not ready: schema {self.schema!r} is not migrated"
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return 503, f"not ready: the database does not answer: {first}"
        version = row[0] if row else None
        if version != self.expected:
            return 503, f"not ready: schema at version {version}, this build needs {self.expected}"
        return 200, "ready"


def _handler(probe: Probe) -> type[BaseHTTPRequestHandler]:
    def text_route(answer: Callable[[], tuple[int, str]]) -> Callable[[], tuple[int, str, bytes]]:
        def route() -> tuple[int, str, bytes]:
            code, text = answer()
            return code, "text/plain; charset=utf-8", (text + "\n").encode()

        return route

    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/healthz": text_route(probe.healthz),
        "/readyz": text_route(probe.readyz),
    }
    if probe.metrics is not None:
        metrics = probe.metrics
        routes["/metrics"] = lambda: (200, METRICS_CONTENT_TYPE, metrics())
    missing = f"not found: {', '.join(sorted(routes))}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            code, content_type, body = (
                route() if route else (404, "text/plain; charset=utf-8", missing)
            )
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would drown the log

    return Handler


def bind_http(addr: str, probe: Probe) -> ThreadingHTTPServer:
    """The endpoint, bound but not yet serving; OSError (e.g. the port is in use) if it
    cannot bind. Bind before anything starts (a port in use is a start-up error), serve
    with :func:`start_serving` once the scheduler runs; stop it with ``shutdown()``."""
    host, port = parse_addr(addr)
    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket

        class V6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = V6
    server = server_class((host, port), _handler(probe))
    server.daemon_threads = True
    return server


def start_serving(server: ThreadingHTTPServer) -> None:
    """Answer requests in a daemon thread."""
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
