"""deploy/: the example environment lists every setting; the files name files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _variables() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else f"RECONCILER_{name.upper()}")
    return names


def test_the_example_environment_lists_every_setting() -> None:
    """Each RECONCILER_* setting appears in reconciler.env.example (set or commented)."""
    text = (DEPLOY / "reconciler.env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^#?(RECONCILER_[A-Z_]+)=", text, flags=re.MULTILINE))
    assert listed == _variables()


def test_the_example_environment_parses_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines set in it, and every commented default once uncommented, are valid."""
    text = (DEPLOY / "reconciler.env.example").read_text(encoding="utf-8")
    for line in text.splitlines():
        if re.match(r"^#?RECONCILER_[A-Z_]+=.", line):
            key, _, value = line.lstrip("#").partition("=")
            monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.schema_name == "reconciler"
    assert settings.heartbeat_timeout_overrides  # the example override parses


def test_deploy_files_name_files_that_exist() -> None:
    """Every repository path a deploy file mentions (deploy/..., schedules/...) exists."""
    for path in DEPLOY.rglob("*"):
        if not path.is_file():
            continue
        for mentioned in re.findall(r"\b((?:deploy|schedules)/[\w./-]+\w)", path.read_text()):
            assert (ROOT / mentioned).exists(), f"{path.name} names {mentioned}, which is missing"
