"""placeholder"""

from __future__ import annotations

from datetime import timedelta

from reconciler.settings import Settings


def run_demo(settings: Settings, *, duration: timedelta, as_json: bool, schema: str) -> int:
    raise NotImplementedError
