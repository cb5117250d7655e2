"""deploy/reconciler.service: valid for systemd, hardened, and in step with the settings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.settings import Settings

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "reconciler.service"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this environment's `reconciler` (verify checks
    that the binary exists; everything else is the shipped file, unchanged)."""
    here = Path(sys.executable).with_name("reconciler")
    text = UNIT.read_text(encoding="utf-8").replace(
        "/opt/reconciler/venv/bin/reconciler", str(here)
    )
    path = tmp_path / "reconciler.service"
    path.write_text(text, encoding="utf-8")
    return path


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


@needs_systemd
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """No error and no warning from `systemd-analyze verify`."""
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", str(_unit_here(tmp_path))], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@needs_systemd
def test_systemd_analyze_security_rates_it_ok(tmp_path: Path) -> None:
    """`systemd-analyze security` exposure at most 1.5 ("OK"): a hardened service."""
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=15", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:]


def test_the_unit_waits_longer_than_the_shutdown_grace_and_refuses_syscalls_with_eperm() -> None:
    """systemd must not SIGKILL inside RECONCILER_SHUTDOWN_GRACE; a filtered syscall fails
    with EPERM (an error the daemon reports) instead of killing the process."""
    unit = _directives()
    stop = unit["TimeoutStopSec"][0]
    assert stop.endswith("s")
    grace = Settings.model_fields["shutdown_grace"].default
    assert int(stop[:-1]) > grace.total_seconds()
    assert unit["SystemCallErrorNumber"] == ["EPERM"]
    assert unit["Type"] == ["notify"]
    assert unit["RestartPreventExitStatus"] == ["2"]
