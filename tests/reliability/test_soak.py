"""The soak command, short, as the suite runs it: exit 0 and every invariant PASS."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.reliability.daemon import REPO

pytestmark = pytest.mark.reliability

INVARIANT_LINE = re.compile(r"^(PASS|FAIL)\s+(\d+)\. ", re.MULTILINE)


def test_a_short_soak_with_kills_and_terminations_passes_every_invariant(pg_url: str) -> None:
    """20 s, 4 workers, workers killed and maintenance connections terminated: 7 x PASS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.soak",
            "--duration",
            "20s",
            "--workers",
            "4",
            "--faults",
            "kill,terminate",
            "--database-url",
            pg_url,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    verdicts = {int(n): verdict for verdict, n in INVARIANT_LINE.findall(proc.stdout)}
    assert verdicts == dict.fromkeys(range(1, 8), "PASS"), report
    injected = next(line for line in proc.stdout.splitlines() if line.startswith("faults injected"))
    assert "'kill'" in injected and "'terminate'" in injected, report
