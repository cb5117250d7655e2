"""The README stays true: every setting and every task is documented there."""

from __future__ import annotations

from pathlib import Path

from reconciler.settings import Settings
from reconciler.tasks import TASKS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _env_name(field: str) -> str:
    return "RECONCILER_SCHEMA" if field == "schema_name" else f"RECONCILER_{field.upper()}"


def test_every_setting_is_in_the_readme_table() -> None:
    """Each Settings field appears as `RECONCILER_...` in the configuration table."""
    missing = [
        _env_name(name) for name in Settings.model_fields if f"`{_env_name(name)}`" not in README
    ]
    assert missing == []


def test_every_task_is_in_the_readme() -> None:
    """Each registered task has a row in the README's task table."""
    assert [name for name in TASKS if f"| `{name}` |" not in README] == []


def test_the_configuration_error_example_is_what_the_cli_prints() -> None:
    """The README's example of a bad setting shows the CLI's real one-line error."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_HEARTBEAT_TIMEOUT"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "mark-stale"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() in README
