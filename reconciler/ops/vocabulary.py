"""The words the operator's commands share: job statuses and priorities.

One place, so the CLI's choices, the filters, stats and check say the same thing.
"""

from __future__ import annotations

__all__ = ["DEAD", "PRIORITIES", "STATUSES"]

STATUSES = ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")
# The dead letters: what the dead-letter commands (list, errors, export, replay, purge) take.
DEAD = ("dead",)
# By number: 0 is critical ... 4 is bulk, as jobs.priority stores them.
PRIORITIES = ("critical", "high", "default", "low", "bulk")
