"""Refusals and confirmation: how an operator's command says no, or asks first."""

from __future__ import annotations

import sys
from typing import TextIO

from reconciler.tasks.base import DRY_RUN_LIMIT

__all__ = ["OpsError", "confirm"]


class OpsError(Exception):
    """A refusal or a mistake in what was asked; the CLI prints the one line, exit ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def confirm(
    what: str,
    count: int,
    *,
    threshold: int,
    yes: bool,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Ask before changing more than ``threshold`` jobs; never ask without a terminal."""
    if yes or count <= threshold:
        return
    stdin = stdin or sys.stdin
    stderr = stderr or sys.stderr
    shown = f"at least {count}" if count >= DRY_RUN_LIMIT else str(count)
    if not stdin.isatty():
        raise OpsError(
            f"this would {what} {shown} jobs, more than the confirmation threshold of "
            f"{threshold} (RECONCILER_OPS_CONFIRM_THRESHOLD), and stdin is not a terminal to "
            "ask on: add --yes to go ahead, or --dry-run to preview"
        )
    stderr.write(f"{what.capitalize()} {shown} jobs? [y/N] ")
    stderr.flush()
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise OpsError("nothing changed (not confirmed)", code=1)
