"""Running the real CLI as subprocesses, and waiting on them without sleeping blind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["DaemonProcess", "eventually", "fast_schedule"]

T = TypeVar("T")

FAST = """
[mark-stale]
every = "1s"
[requeue]
every = "1s"
[dead-letter]
every = "1s"
[purge]
every = "1s"
[vacuum-analyze]
every = "2s"
"""


def fast_schedule(directory: Path, body: str = FAST) -> Path:
    path = directory / "schedule.toml"
    path.write_text(body, encoding="utf-8")
    return path


def eventually(check: Callable[[], T | None], *, timeout: float = 20, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)


class DaemonProcess:
    """``python -m reconciler daemon`` with its stderr (JSON log lines) in a file."""

    def __init__(self, log_dir: Path, env: dict[str, str], name: str = "daemon") -> None:
        self.log_path = log_dir / f"{name}.log"
        self.out_path = log_dir / f"{name}.out"
        self._err = self.log_path.open("w")
        self._out = self.out_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "daemon"],
            env={**os.environ, "RECONCILER_LOG_FORMAT": "json", **env},
            stdout=self._out,
            stderr=self._err,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text() + self.out_path.read_text()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_event(
        self,
        name: str,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 20,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            assert self.proc.poll() is None or name == "daemon.stopped", self.output()
            return next((e for e in self.events(name) if where(e)), None)

        return eventually(check, timeout=timeout, what=f"{name} in {self.log_path}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def wait(self, timeout: float = 30) -> int:
        """The exit code of a daemon already told to stop."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
        self._out.close()
