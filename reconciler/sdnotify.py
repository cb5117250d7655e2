"""systemd's notify protocol: READY, STOPPING, STATUS and watchdog pings.

When systemd starts a ``Type=notify`` service it sets ``NOTIFY_SOCKET`` to a
unix datagram socket; the service sends newline-separated ``KEY=VALUE``
lines to it. With ``WatchdogSec=`` systemd also sets ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``) and restarts the service if no ``WATCHDOG=1`` arrives in
time. Without ``NOTIFY_SOCKET`` every call here does nothing, so the daemon
runs the same in a terminal, a container or under systemd.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

__all__ = ["notify", "watchdog_interval"]


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``) to systemd; False when not under systemd.

    Never raises: a notification that cannot be sent must not stop the daemon.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> timedelta | None:
    """How often to send ``WATCHDOG=1``: half systemd's timeout, as sd_watchdog_enabled(3)
    advises; None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return timedelta(microseconds=int(usec) / 2)
