"""deploy/prometheus: the alert rules are valid and each fires, and stays quiet, as tested."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
REQUIRE_ENV = "RECONCILER_TEST_REQUIRE_PROMTOOL"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"promtool is not installed, and {REQUIRE_ENV}=1 requires these tests")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def test_the_rules_are_valid() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_and_stays_quiet_as_its_tests_say() -> None:
    """promtool test rules: each alert below its threshold or its `for:`, then firing."""
    done = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_test() -> None:
    rules = (PROMETHEUS / "alerts.yml").read_text(encoding="utf-8")
    tests = (PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8")
    alerts = {line.split(":", 1)[1].strip() for line in rules.splitlines() if "- alert:" in line}
    assert alerts
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert


DASHBOARD = PROMETHEUS.parent / "grafana" / "reconciler-dashboard.json"


def test_the_dashboard_has_runbook_004s_six_panels_and_valid_queries(tmp_path: Path) -> None:
    """Six panels; every query is valid PromQL (promtool checks them as recording rules)."""
    import json

    import yaml

    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    assert len(panels) == 6
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    done = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
