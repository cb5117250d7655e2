"""The words the operator's commands share: job statuses, priorities, latency targets.

One place, so the CLI's choices, the filters, stats and check say the same thing.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = ["DEAD", "LATENCY_TARGETS", "PRIORITIES", "STATUSES"]

STATUSES = ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")
# The dead letters: what the dead-letter commands (list, errors, export, replay, purge) take.
DEAD = ("dead",)
# By number: 0 is critical ... 4 is bulk, as jobs.priority stores them.
PRIORITIES = ("critical", "high", "default", "low", "bulk")
# Runbook 004's latency targets per priority; bulk is best effort (no target).
LATENCY_TARGETS: dict[int, timedelta | None] = {
    0: timedelta(seconds=1),
    1: timedelta(seconds=5),
    2: timedelta(seconds=30),
    3: timedelta(minutes=2),
    4: None,
}
