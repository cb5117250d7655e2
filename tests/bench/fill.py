"""Builds the benchmark's job table with generate_series, relative to one fixed ``now``.

Every row is placed relative to ``now``, the moment every measured run is
given, so which rows are eligible is decided here and nowhere else:

- the bulk: finished jobs (succeeded 80 %, cancelled 10 %, dead 10 %) inside
  their retention, which no task touches;
- a busy queue's live rows, a fixed number whatever the table's size: healthy
  running jobs, a backlog of due queued jobs, failed jobs still in backoff;
- on demand, the eligible rows of each task (``add_eligible``).

Every job also has two ``job_events`` rows (its enqueue and its last
transition), so purge deletes events as it would in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database

__all__ = [
    "LIVE_ROWS",
    "add_eligible",
    "add_idle",
    "eligible_rows",
    "insert_rows",
    "vacuum_analyze",
]

_MINUTE, _HOUR, _DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)

# Each row's moment t (heartbeat of a running job, finish of a finished one,
# run_at of a queued one) is spread over [newest - span, newest] by a hash of
# its number, so runs of the benchmark build the same table.
_FILL = """
INSERT INTO jobs (queue, kind, priority, payload, status, attempt, max_attempts, run_at,
                  locked_by, locked_at, heartbeat_at, started_at, finished_at, created_at)
SELECT 'default', (ARRAY['email', 'report', 'sync'])[1 + mod(g, 3)], mod(g, 5),
       jsonb_build_object('order', g, 'source', 'bench'),
       s.status, CAST(:attempt AS integer), 3,
       CASE WHEN s.status = 'queued' THEN s.t ELSE s.t - interval '1 minute' END,
       CASE WHEN s.status = 'running' THEN 'bench-' || mod(g, 20) END,
       CASE WHEN s.status = 'running' THEN s.t END,
       CASE WHEN s.status = 'running' THEN s.t END,
       CASE WHEN s.status <> 'queued' THEN s.t - interval '1 minute' END,
       CASE WHEN s.status NOT IN ('running', 'queued') THEN s.t END,
       s.t - interval '2 minutes'
FROM generate_series(1, CAST(:n AS integer)) g
CROSS JOIN LATERAL (
    SELECT CAST(:status AS text) AS status,
           CAST(:newest AS timestamptz)
               - mod(g * 2654435761, CAST(:span_s AS bigint) + 1) * interval '1 second' AS t
) s
"""

# Two events per new job: its enqueue, and how it got to where it is now.
_EVENTS = """
INSERT INTO job_events (job_id, from_status, to_status, at, actor)
SELECT j.id, e.from_status, e.to_status, e.at, 'bench'
FROM jobs j
CROSS JOIN LATERAL (VALUES
    (CAST(NULL AS text), 'queued', j.created_at),
    (CASE WHEN j.status = 'queued' THEN NULL ELSE 'running' END, j.status,
     coalesce(j.finished_at, j.started_at, j.created_at))
) AS e (from_status, to_status, at)
WHERE j.id > :after
"""


@dataclass(frozen=True)
class _Rows:
    status: str
    count: int
    newest: timedelta  # how long before now the newest row's moment is
    span: timedelta  # how far back from there the rows spread
    attempt: int = 1


# The live rows of a busy queue: none eligible for any task at now.
LIVE_ROWS = (
    _Rows("running", 1_000, newest=timedelta(seconds=10), span=50 * timedelta(seconds=1)),
    _Rows("queued", 5_000, newest=timedelta(0), span=_HOUR),
    # Failed at now: every retry policy's backoff is longer than zero.
    _Rows("failed", 100, newest=timedelta(0), span=timedelta(0)),
)


def insert_rows(db: Database, now: datetime, rows: list[_Rows]) -> None:
    with db.transaction(statement_timeout=timedelta(minutes=30)) as conn:
        last = conn.execute(text("SELECT coalesce(max(id), 0) FROM jobs")).scalar_one()
        for r in rows:
            if r.count > 0:
                conn.execute(
                    text(_FILL),
                    {
                        "n": r.count,
                        "status": r.status,
                        "attempt": r.attempt,
                        "newest": now - r.newest,
                        "span_s": int(r.span.total_seconds()),
                    },
                )
        conn.execute(text(_EVENTS), {"after": last})


def add_idle(db: Database, now: datetime, count: int, *, live: bool) -> None:
    """Add ``count`` jobs none of which any task may touch (the live rows among them)."""
    rows = list(LIVE_ROWS) if live else []
    finished = count - sum(r.count for r in rows)
    rows += [
        # Inside their retention (30 d, 30 d and 90 d) by at least a day.
        _Rows("succeeded", finished * 8 // 10, newest=_MINUTE, span=29 * _DAY),
        _Rows("cancelled", finished // 10, newest=_MINUTE, span=29 * _DAY),
        _Rows("dead", finished - finished * 9 // 10, newest=_MINUTE, span=89 * _DAY),
    ]
    insert_rows(db, now, rows)


def eligible_rows(task: str, n: int) -> list[_Rows]:
    """``n`` jobs eligible for ``task`` at now."""
    half, fifth = n // 2, n // 5
    return {
        # mark-stale: no heartbeat for 10 minutes to an hour (timeout 5 min).
        "mark-stale": [_Rows("running", n, newest=10 * _MINUTE, span=50 * _MINUTE)],
        # requeue: attempts left, failed an hour to a day ago (backoff at most 5 min).
        "requeue": [
            _Rows("failed", half, newest=_HOUR, span=23 * _HOUR),
            _Rows("stale", n - half, newest=_HOUR, span=23 * _HOUR),
        ],
        # dead-letter: no attempts left.
        "dead-letter": [
            _Rows("failed", half, newest=_HOUR, span=23 * _HOUR, attempt=3),
            _Rows("stale", n - half, newest=_HOUR, span=23 * _HOUR, attempt=3),
        ],
        # purge: past their retention by a day to three months.
        "purge": [
            _Rows("succeeded", n - 2 * fifth, newest=31 * _DAY, span=90 * _DAY),
            _Rows("cancelled", fifth, newest=31 * _DAY, span=90 * _DAY),
            _Rows("dead", fifth, newest=91 * _DAY, span=90 * _DAY),
        ],
    }[task]


def add_eligible(db: Database, now: datetime, per_task: int, tasks: Sequence[str] = ()) -> None:
    """Add ``per_task`` jobs eligible for each of ``tasks`` (default: mark-stale, requeue,
    dead-letter and purge)."""
    chosen = tasks or ("mark-stale", "requeue", "dead-letter", "purge")
    insert_rows(db, now, [rows for task in chosen for rows in eligible_rows(task, per_task)])


def vacuum_analyze(db: Database) -> None:
    """VACUUM (ANALYZE) the job tables: fresh statistics, hint bits set, no dead rows left."""
    with db.autocommit() as conn:
        for table in ("jobs", "job_events"):
            name = sql.Identifier(db.schema, table)
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(name))
