"""systemd notifications over a real unix datagram socket."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.sdnotify import notify, watchdog_interval


def test_notify_sends_lines_to_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """READY=1 and a STATUS line arrive as one datagram."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=running") is True
        assert listener.recv(1024) == b"READY=1\nSTATUS=running"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """An @name socket is Linux's abstract namespace."""
    name = f"reconciler-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1")
        assert listener.recv(1024) == b"WATCHDOG=1"


def test_notify_without_systemd_or_with_a_dead_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No NOTIFY_SOCKET: nothing happens; a socket nobody reads: False, never an exception."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify("READY=1") is False


def test_watchdog_interval_is_half_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_USEC=10s -> ping every 5 s; another process's watchdog is not ours."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == timedelta(seconds=5)
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
