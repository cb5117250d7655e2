"""What every task shares: its context, its result, and the batch loop.

A transition task is one SQL statement (``-- name: apply`` in its SQL file)
that picks at most ``:batch_size`` eligible rows with ``FOR UPDATE SKIP
LOCKED``, changes them, writes their ``job_events`` rows in the same
statement, and returns ``(id, from_status, to_status)`` per row, or, where
fetching a row per job would cost as much as changing it (purge), one tally
row per transition: ``(from_status, to_status, n, sample_ids)``. The loop
runs that statement, one short transaction per batch, until a batch comes
back short (nothing left) or the run's time budget is spent.

Each batch transaction also renews the run's task lease after its statement
(:mod:`reconciler.leases`); when the lease was lost the batch rolls back whole.
Between batches the loop also stops when the daemon is shutting down.

A dry run executes the very same statement once, with a larger limit, in a
transaction that is rolled back: the preview is exactly what the task would
do, and nothing is written.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from reconciler.db import Database
from reconciler.leases import Lease
from reconciler.settings import Settings

if TYPE_CHECKING:
    from reconciler.profiles.live import Bound

__all__ = [
    "DRY_RUN_LIMIT",
    "MIN_BATCH",
    "SAMPLE_SIZE",
    "Progress",
    "RunStatus",
    "Stopped",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskResult",
    "changed",
    "next_batch_size",
]

# A dry run previews at most this many rows per statement: enough to answer
# "how bad is it", small enough that the rolled-back statement stays short.
DRY_RUN_LIMIT = 10_000
# The smallest batch a lock or statement timeout shrinks a batch to: below it a round
# trip costs more than the rows. Sizing toward the target stops earlier, at batch_min.
MIN_BATCH = 10
# Job ids shown as examples in a dry run and in a run's record.
SAMPLE_SIZE = 10


# How a run ended, and why its batch loop stopped.
RunStatus = Literal["ok", "failed"]
Stopped = Literal["done", "time_budget", "shutdown", "dry_run_limit", "error"]


class TaskFailed(Exception):
    """A task could not do its work; the message is for the operator."""


@dataclass
class Progress:
    """What a run has done so far; kept when a later batch fails."""

    transitions: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    # Job ids: bigint for the reconciler's own jobs; a profile's table may use text or uuid.
    sample_ids: list[int | str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    stopped: Stopped = "done"
    # Work that is not a job transition (tables vacuumed, run records deleted):
    # a run that did only this still did work, and says so.
    other_work: int = 0
    # Lines the task writes about its own details, printed under the CLI's summary.
    notes: list[str] = field(default_factory=list)

    def add(self, rows: Sequence[Any]) -> None:
        tally = _tallies(rows)
        for row in rows:
            self.transitions[f"{row.from_status}->{row.to_status}"] += row.n if tally else 1
            if len(self.sample_ids) < SAMPLE_SIZE:
                for job_id in row.sample_ids if tally else (row.id,):
                    if len(self.sample_ids) < SAMPLE_SIZE:
                        self.sample_ids.append(job_id if isinstance(job_id, int) else str(job_id))


@dataclass
class TaskContext:
    """Everything a task needs for one run. ``now`` is the database's clock, read once."""

    db: Database
    settings: Settings
    now: datetime
    dry_run: bool
    batch_size: int
    time_budget: timedelta
    actor: str
    run_id: int | None
    params: Mapping[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    lease: Lease | None = None  # None for dry runs, which write nothing
    # The queue table the run works on: None for the reconciler's own (native) schema,
    # else a profile checked against the live database (reconciler/profiles/).
    profile: Bound | None = None
    # Batch sizing and pacing (RECONCILER_BATCH_TARGET, _MAX, _PAUSE). ``adaptive``: the size
    # follows the target; False when the caller fixed it (--batch-size, schedule params).
    adaptive: bool = False
    batch_target: timedelta = timedelta(milliseconds=100)
    batch_min: int = 100
    batch_max: int = 10_000
    batch_pause: float = 0.0
    should_stop: Callable[[], bool] | None = None
    # Looked up at call time, like out_of_time() does, so a test clock
    # (freezegun) replaces both ends of the measurement or neither.
    _started: float = field(default_factory=lambda: time.monotonic())

    def out_of_time(self) -> bool:
        return time.monotonic() - self._started >= self.time_budget.total_seconds()

    def stop_reason(self) -> Literal["shutdown", "time_budget"] | None:
        """Why no further batch should start: ``shutdown``, ``time_budget``, or None."""
        if self.should_stop is not None and self.should_stop():
            return "shutdown"
        return "time_budget" if self.out_of_time() else None

    def _pause(self, seconds: float) -> None:
        """Rest between batches (RECONCILER_BATCH_PAUSE), cut short by a shutdown."""
        begun = time.monotonic()
        deadline = begun + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                if self.should_stop is not None and self.should_stop():
                    return
                time.sleep(min(left, 0.05))
        finally:
            # The run's record says how long it rested: its pacing, next to its work.
            rested = round((time.monotonic() - begun) * 1000)
            if rested:
                details = self.progress.details
                details["paused_ms"] = details.get("paused_ms", 0) + rested

    def renew_lease(self, conn: Connection) -> None:
        """Renew the task's lease in ``conn``'s transaction; LeaseLost rolls it back."""
        if self.lease is not None:
            self.lease.renew(conn)

    def run_batches(
        self,
        sql: str,
        params: Mapping[str, Any],
        *,
        committed: Callable[[Sequence[Any]], None] | None = None,
        search_path: str | None = None,
        advance: Callable[[Sequence[Any]], Mapping[str, Any]] | None = None,
    ) -> None:
        """Run ``sql`` batch by batch until a short batch or the time budget.

        ``committed(rows)`` is called with each batch's rows once it has committed (never
        for a dry run): what a task says about the jobs it changed. ``search_path``
        replaces the transaction's (a profile whose own SQL functions find their tables
        by it: Procrastinate's). ``advance(rows)`` gives the binds of the next batch from
        this one's rows: a keyset, so a batch starts where the last one ended.
        """
        base = {"now": self.now, "actor": self.actor, "run_id": self.run_id, **params}
        if self.dry_run:
            with self.db.transaction(rollback=True) as conn:
                _set_path(conn, search_path)
                rows = conn.execute(text(sql), {**base, "batch_size": DRY_RUN_LIMIT}).all()
            self.progress.add(rows)
            self.progress.batches += 1
            if changed(rows) >= DRY_RUN_LIMIT:
                self.progress.stopped = "dry_run_limit"
            return
        # Named ids are waited for (no SKIP LOCKED): a smaller batch would wait just the same.
        may_shrink = self.adaptive and "SKIP LOCKED" in sql
        shrunk = 0
        while True:
            size = self.batch_size
            begun = time.monotonic()
            try:
                with self.db.transaction() as conn:
                    _set_path(conn, search_path)
                    rows = conn.execute(text(sql), {**base, "batch_size": size}).all()
                    self.renew_lease(conn)
            except DBAPIError as exc:
                # A batch that ran into the lock or statement timeout rolled back whole:
                # at once again, a quarter as big (a few times, then the run fails).
                if not (may_shrink and _timed_out(exc) and size > MIN_BATCH and shrunk < 6):
                    raise
                self.batch_size, shrunk = max(MIN_BATCH, size // 4), shrunk + 1
                continue
            committed_at = time.monotonic()
            elapsed = committed_at - begun
            if advance is not None and rows:
                base = {**base, **advance(rows)}
            self.progress.add(rows)
            if committed is not None:
                committed(rows)
            self.progress.batches += 1
            if changed(rows) < size:
                return
            reason = self.stop_reason()
            if reason is not None:
                self.progress.stopped = reason
                return
            if self.adaptive:
                # The floor is batch_min, or the size itself when the first batch was
                # smaller or a timeout took it lower: it grows back by doubling, not at once.
                self.batch_size = next_batch_size(
                    size,
                    elapsed,
                    self.batch_target.total_seconds(),
                    low=min(self.batch_min, size),
                    high=self.batch_max,
                )
            # The rest counts from the commit: the time spent saying what the batch
            # changed (a dead job's log line and Sentry event) is rest for the database.
            self._pause(elapsed * self.batch_pause - (time.monotonic() - committed_at))


def _tallies(rows: Sequence[Any]) -> bool:
    """Rows that count jobs (a column ``n``) rather than stand for one each. Asked of the
    first row's fields: a missing attribute of a SQLAlchemy row costs an exception."""
    return bool(rows) and "n" in getattr(rows[0], "_fields", ())


def changed(rows: Sequence[Any]) -> int:
    """How many jobs a batch's rows stand for: one each, or each tally row's ``n``."""
    return sum(row.n for row in rows) if _tallies(rows) else len(rows)


def next_batch_size(
    size: int, elapsed_s: float, target_s: float, *, low: int = MIN_BATCH, high: int
) -> int:
    """The next batch's size: toward ``target_s`` a batch, at most doubling or halving per
    step (one slow or fast batch is noise), within ``low`` (never under MIN_BATCH) and
    ``high``."""
    ratio = 2.0 if elapsed_s <= 0 else min(2.0, max(0.5, target_s / elapsed_s))
    return max(MIN_BATCH, low, min(high, int(size * ratio)))


def _timed_out(exc: DBAPIError) -> bool:
    """The lock timeout or the statement timeout (QueryCanceled), not any other error."""
    return isinstance(exc.orig, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled)


def _set_path(conn: Connection, search_path: str | None) -> None:
    if search_path is not None:
        conn.execute(text("SELECT set_config('search_path', :sp, true)"), {"sp": search_path})


@dataclass(frozen=True)
class Task:
    """A registered task: its CLI name, one line of help, and its function."""

    name: str
    summary: str
    execute: Callable[[TaskContext], None]


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one run, as the CLI prints it, the daemon logs it and metrics count it."""

    task: str
    status: RunStatus
    dry_run: bool
    now: datetime
    transitions: Mapping[str, int]
    batches: int
    duration_ms: int
    stopped: Stopped
    sample_ids: tuple[int | str, ...]
    details: Mapping[str, Any]
    run_id: int | None
    error: str | None = None
    other_work: int = 0
    notes: tuple[str, ...] = ()
    profile: str = "native"

    @property
    def changed(self) -> int:
        return sum(self.transitions.values())

    @property
    def did_work(self) -> bool:
        """True when the run changed a job or did other work (a vacuum, a record deleted)."""
        return self.changed > 0 or self.other_work > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "profile": self.profile,
            "status": self.status,
            "dry_run": self.dry_run,
            "now": self.now.isoformat(),
            "transitions": dict(self.transitions),
            "changed": self.changed,
            "batches": self.batches,
            "duration_ms": self.duration_ms,
            "stopped": self.stopped,
            "sample_ids": list(self.sample_ids),
            "details": dict(self.details),
            "did_work": self.did_work,
            "notes": list(self.notes),
            "run_id": self.run_id,
            "error": self.error,
        }
