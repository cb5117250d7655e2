"""Per-job signals: every job the reconciler dead-letters is said out loud.

A dead job is one nobody will retry: runbooks 002, 003 and 004 want to hear of
each one. So the dead-letter task, for each job it moved (once its batch has
committed), logs one ``job.dead_lettered`` line at warning (job id, queue, kind,
tenant, attempt, the last error's message) and, when Sentry is configured, sends
one event per job, fingerprinted by kind and error so Sentry groups them into
one issue per failure. A mass failure must not spend the Sentry quota: at most
``RECONCILER_SENTRY_DEAD_LETTER_EVENTS`` events per 10 minutes per process, and
past that one summary event per run says how many more jobs went dead, by kind.
Logs are never limited: they are the record.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import sentry_sdk

from reconciler.logs import log_many
from reconciler.settings import Settings

__all__ = ["WINDOW_S", "DeadLetterSignals", "dead_lettered", "reset"]

WINDOW_S = 600.0  # the rate limit's window: 10 minutes

_lock = threading.Lock()
_sent: deque[float] = deque()  # when each per-job event of the window was sent


def reset() -> None:
    """Forget the window (a new process starts empty; tests start each case so)."""
    with _lock:
        _sent.clear()


def _take(limit: int, clock: Callable[[], float]) -> bool:
    """One event's room in the window, if there is any left."""
    with _lock:
        now = clock()
        while _sent and now - _sent[0] >= WINDOW_S:
            _sent.popleft()
        if len(_sent) >= limit:
            return False
        _sent.append(now)
        return True


class DeadLetterSignals:
    """The signals of one dead-letter run."""

    def __init__(
        self, limit: int, *, run_id: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.run_id = run_id
        self.clock = clock
        self.suppressed: Counter[str] = Counter()

    def jobs(self, rows: Sequence[Any]) -> None:
        """One committed batch's dead jobs: a log line each, and an event each while the
        window has room."""
        log_many(
            "reconciler.signals",
            "warning",
            "job.dead_lettered",
            (
                {
                    "job_id": row.id,
                    "queue": row.queue,
                    "kind": row.kind,
                    "tenant": row.tenant_id,
                    "attempt": row.attempt,
                    "from_status": row.from_status,
                    "error": row.error,
                    "run_id": self.run_id,
                }
                for row in rows
            ),
        )
        if not sentry_sdk.get_client().is_active():
            return
        for row in rows:
            if _take(self.limit, self.clock):
                self._event(row)
            else:
                self.suppressed[row.kind] += 1

    def _event(self, row: Any) -> None:
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("task", "dead-letter")
            scope.set_tag("queue", row.queue)
            scope.set_tag("kind", row.kind)
            scope.fingerprint = ["reconciler-dead-letter", row.kind, row.error or ""]
            scope.set_context(
                "job",
                {
                    "id": row.id,
                    "tenant": row.tenant_id,
                    "attempt": row.attempt,
                    "from_status": row.from_status,
                    "run_id": self.run_id,
                },
            )
            sentry_sdk.capture_message(
                f"job {row.id} ({row.kind}) dead-lettered: {row.error or 'no error recorded'}",
                level="error",
            )

    def finish(self) -> None:
        """One summary event for the jobs past the limit, if any."""
        if not self.suppressed:
            return
        total = sum(self.suppressed.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.suppressed.most_common(10))
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("task", "dead-letter")
            scope.fingerprint = ["reconciler-dead-letter-summary"]
            sentry_sdk.capture_message(
                f"{total} more job(s) dead-lettered (run {self.run_id}), past the limit of "
                f"{self.limit} events per 10 minutes: {kinds}; see reconciler dead-letter errors",
                level="error",
            )
        self.suppressed.clear()


def dead_lettered(settings: Settings, *, run_id: int | None) -> DeadLetterSignals:
    """The signals of a dead-letter run, rate limited as the settings say."""
    return DeadLetterSignals(settings.sentry_dead_letter_events, run_id=run_id)
