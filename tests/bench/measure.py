"""The measurements: idle runs, full batched runs through run_task, and their baselines.

Every run goes through :func:`reconciler.runner.run_task`, as the CLI and the
daemon run tasks. A batch's transaction is timed from the moment its
connection leaves the pool to the moment it returns (``BEGIN``, the
statement, fetching its rows and ``COMMIT`` are inside), by listening to the
engine's events: no timing code in the reconciler itself.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Engine, event, text

from reconciler.db import Database
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.bench.fill import vacuum_analyze
from tests.bench.statements import Statement, task_statements

__all__ = ["IDLE_REPEATS", "FullRun", "Idle", "full_run", "idle_runs"]

# Idle runs take milliseconds on a shared machine: a median of several.
IDLE_REPEATS = 21

# A full run must drain everything, whatever the settings' per-run budget.
_NO_BUDGET = timedelta(hours=1)
# A baseline is one statement over every eligible row: no per-batch timeout.
_BASELINE_TIMEOUT = timedelta(minutes=30)

# The runbook way: one plain statement over the task's predicate, no events,
# no SKIP LOCKED, no batches. Bound with the task's own parameters.
_PLAIN = {
    "mark-stale": """
        UPDATE jobs j
        SET status = 'stale', locked_by = NULL, locked_at = NULL,
            finished_at = CAST(:now AS timestamptz)
        WHERE j.status = 'running'
          AND coalesce(j.heartbeat_at, j.locked_at, j.updated_at) < CAST(:now AS timestamptz)
              - make_interval(secs => CAST(:default_timeout_s AS double precision))""",
    "requeue": """
        UPDATE jobs j
        SET status = 'queued', run_at = CAST(:now AS timestamptz), finished_at = NULL
        WHERE j.status IN ('failed', 'stale')
          AND j.attempt < j.max_attempts
          AND coalesce(j.finished_at, j.updated_at) + coalesce(
                (SELECT backoff(j.attempt, p.initial_delay, p.max_delay, p.multiplier,
                                p.jitter, j.id)
                 FROM policy_for(j.kind, j.priority) p),
                interval '0') <= CAST(:now AS timestamptz)""",
    "dead-letter": """
        UPDATE jobs j
        SET status = 'dead', finished_at = CAST(:now AS timestamptz)
        WHERE j.status IN ('failed', 'stale') AND j.attempt >= j.max_attempts""",
    "purge": """
        DELETE FROM jobs j
        WHERE j.status = CAST(:status AS text)
          AND j.finished_at < CAST(:horizon AS timestamptz)""",
}


@contextmanager
def batch_timer(engine: Engine, statements: Sequence[Statement]) -> Iterator[list[float]]:
    """Milliseconds of every transaction that ran one of ``statements``, in order."""
    watched = {str(text(s.sql).compile(dialect=engine.dialect)) for s in statements}
    started: dict[int, float] = {}
    batch: set[int] = set()
    durations: list[float] = []

    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        started[id(dbapi_conn)] = time.perf_counter()

    def before_execute(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement in watched:
            batch.add(id(conn.connection.dbapi_connection))

    def checkin(dbapi_conn: Any, record: Any) -> None:
        begun = started.pop(id(dbapi_conn), None)
        if id(dbapi_conn) in batch and begun is not None:
            batch.discard(id(dbapi_conn))
            durations.append((time.perf_counter() - begun) * 1000)

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("checkout", checkout),
        ("before_cursor_execute", before_execute),
        ("checkin", checkin),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        yield durations
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)


@dataclass(frozen=True)
class Idle:
    """An idle run: nothing eligible. Medians over several runs."""

    run_ms: float  # the whole run_task call: its runs record and every batch
    batch_ms: float  # one batch transaction: the selection finding nothing


def idle_runs(
    dbs: Sequence[Database],
    settings: Settings,
    task: str,
    now: datetime,
    *,
    repeats: int = IDLE_REPEATS,
) -> list[Idle]:
    """Run ``task`` where it has nothing to do, on each of ``dbs`` in turn, after a warm-up.

    Taking turns spreads the noise of a shared machine evenly over the tables compared.
    """
    statements = task_statements(dbs[0], settings, task, now=now, batch_size=1)
    runs: list[list[float]] = [[] for _ in dbs]
    batches: list[list[float]] = [[] for _ in dbs]
    for db in dbs:
        run_task(db, settings, task, now=now)
    for _ in range(repeats):
        for db, db_runs, db_batches in zip(dbs, runs, batches, strict=True):
            with batch_timer(db.engine, statements) as timed:
                begun = time.perf_counter()
                result = run_task(db, settings, task, now=now)
                db_runs.append((time.perf_counter() - begun) * 1000)
            db_batches.extend(timed)
            if result.status != "ok" or result.changed:
                raise RuntimeError(f"idle {task} was not idle: {result.to_dict()}")
    return [
        Idle(run_ms=statistics.median(r), batch_ms=statistics.median(b))
        for r, b in zip(runs, batches, strict=True)
    ]


@dataclass(frozen=True)
class Timed:
    """Rows changed and the seconds it took."""

    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class FullRun:
    """A task's full run over its eligible rows, and the same rows moved unbatched."""

    task: str
    batched: Timed  # run_task, batch by batch
    batches: int
    longest_batch_ms: float  # the longest single transaction of the batched run
    median_batch_ms: float
    unbatched: Timed  # the task's own statement without LIMIT, in one transaction
    plain: Timed  # one plain UPDATE/DELETE, no events, in one transaction


def _checkpoint(db: Database) -> None:
    """A checkpoint, so that the next measurement starts as the others do: without it the
    one that follows a checkpoint writes every page it touches whole into the WAL (full-page
    writes) and the others do not. Skipped without the privilege (PostgreSQL 15:
    superuser or pg_checkpoint)."""
    with db.autocommit() as conn, contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def _once(db: Database, work: list[tuple[str, dict[str, Any]]]) -> Timed:
    """Run ``work`` in one transaction, timed, then roll it back (and vacuum the remains,
    and checkpoint)."""
    rows = 0
    with db.transaction(statement_timeout=_BASELINE_TIMEOUT, rollback=True) as conn:
        begun = time.perf_counter()
        for sql, params in work:
            result = conn.execute(text(sql), params)
            # A tally statement (purge's) returns a row per transition with its count ``n``.
            tally = result.returns_rows and "n" in list(result.keys())
            rows += sum(row.n for row in result) if tally else result.rowcount
        seconds = time.perf_counter() - begun
    vacuum_analyze(db)
    _checkpoint(db)
    return Timed(rows, seconds)


def full_run(db: Database, settings: Settings, task: str, now: datetime) -> FullRun:
    """Both baselines on the eligible rows (rolled back), then the real batched run."""
    statements = task_statements(db, settings, task, now=now, batch_size=settings.batch_size)
    _checkpoint(db)
    plain = _once(db, [(_PLAIN[task], dict(s.params)) for s in statements])
    unbatched = _once(db, [(s.sql, {**s.params, "batch_size": None}) for s in statements])
    with batch_timer(db.engine, statements) as batches:
        begun = time.perf_counter()
        result = run_task(db, settings, task, now=now, time_budget=_NO_BUDGET)
        seconds = time.perf_counter() - begun
    if result.status != "ok" or result.stopped != "done":
        raise RuntimeError(f"{task} did not finish: {result.to_dict()}")
    return FullRun(
        task=task,
        batched=Timed(result.changed, seconds),
        batches=result.batches,
        longest_batch_ms=max(batches),
        median_batch_ms=statistics.median(batches),
        unbatched=unbatched,
        plain=plain,
    )
