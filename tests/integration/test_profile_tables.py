"""Table profiles: the shipped seed-shape profiles against tables created from them.

Each lifecycle transition at its boundary, the ledger written in the same
statement, the profile refused (one line, nothing changed) when it does not
match the table.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from reconciler.db import Database
from reconciler.profiles.live import Bound, bind
from reconciler.runner import run_task
from reconciler.settings import Settings
from tests.profile_tables import DDL, load


def _table(db: Database, name: str, schema: str) -> Bound:
    with db.transaction() as conn:
        conn.execute(text(DDL[name]))
    return bind(db, load(name, schema))


def _rows(db: Database, sql: str, **binds: Any) -> list[Any]:
    with db.transaction(rollback=True) as conn:
        return list(conn.execute(text(sql), binds).all())


def _ledger(db: Database, profile: str) -> list[Any]:
    return _rows(
        db,
        "SELECT job_id, from_status, to_status, actor, reason FROM ledger"
        " WHERE profile = :p ORDER BY id",
        p=profile,
    )


def test_ai_jobs_mark_stale_at_the_heartbeat_boundary(
    db: Database, settings: Settings, schema: str
) -> None:
    bound = _table(db, "ai-course-jobs", schema)
    now = db.now()
    timeout = settings.heartbeat_timeout
    with db.transaction() as conn:
        ids = (
            conn.execute(
                text(
                    "INSERT INTO ai_course_jobs (status, locked_by, started_at, last_heartbeat)"
                    " VALUES ('processing', 'w1', :now - interval '1 hour',"
                    "         :now - :t - interval '1 ms'),"
                    "        ('processing', 'w2', :now - interval '1 hour', :now - :t),"
                    "        ('processing', 'w3', :now - interval '1 hour', NULL),"
                    "        ('pending', NULL, NULL, :now - interval '1 hour')"
                    " RETURNING id::text"
                ),
                {"now": now, "t": timeout},
            )
            .scalars()
            .all()
        )
    result = run_task(db, settings, "mark-stale", now=now, profile=bound)
    assert result.status == "ok", result.error
    assert result.transitions == {"processing->stale": 2}
    statuses = dict(_rows(db, "SELECT id::text, status FROM ai_course_jobs"))
    # Silent one millisecond past the timeout: stale. Exactly at it: alive. No heartbeat
    # yet: judged by started_at. Never running: untouched.
    assert [statuses[i] for i in ids] == ["stale", "processing", "stale", "pending"]
    ledger = _ledger(db, "ai-course-jobs")
    assert {row.job_id for row in ledger} == {ids[0], ids[2]}
    assert all(row.actor == "reconciler:mark-stale" for row in ledger)
    # The runner counted the crashed attempt (attempts_counted = "failure").
    counts = dict(_rows(db, "SELECT id::text, retry_count FROM ai_course_jobs"))
    assert [counts[i] for i in ids] == [1, 0, 1, 0]
    runs = _rows(db, "SELECT task, profile FROM runs WHERE id = :id", id=result.run_id)
    assert [tuple(r) for r in runs] == [("mark-stale", "ai-course-jobs")]


def test_ai_jobs_requeue_and_dead_letter_split_by_attempts(
    db: Database, settings: Settings, schema: str
) -> None:
    bound = _table(db, "ai-course-jobs", schema)
    now = db.now()
    with db.transaction() as conn:
        ids = (
            conn.execute(
                text(
                    "INSERT INTO ai_course_jobs (status, retry_count, max_retries, completed_at)"
                    " VALUES ('failed', 2, 3, :now - interval '1 hour'),"
                    "        ('failed', 3, 3, :now - interval '1 hour'),"
                    "        ('stale', 1, 3, :now - interval '1 hour'),"
                    "        ('failed', 0, 3, :now)"  # backoff (1 s by the default policy) not over
                    " RETURNING id::text"
                ),
                {"now": now},
            )
            .scalars()
            .all()
        )
    requeued = run_task(db, settings, "requeue", now=now, profile=bound)
    dead = run_task(db, settings, "dead-letter", now=now, profile=bound)
    assert requeued.transitions == {"failed->pending": 1, "stale->pending": 1}
    assert dead.transitions == {"failed->dead_letter": 1}
    statuses = dict(_rows(db, "SELECT id::text, status FROM ai_course_jobs"))
    assert [statuses[i] for i in ids] == ["pending", "dead_letter", "pending", "failed"]
    # The same runs again find nothing.
    assert run_task(db, settings, "requeue", now=now, profile=bound).changed == 0
    assert run_task(db, settings, "dead-letter", now=now, profile=bound).changed == 0


def test_jobforge_goes_straight_back_to_queued_or_dead(
    db: Database, settings: Settings, schema: str
) -> None:
    bound = _table(db, "jobforge", schema)
    now = db.now()
    with db.transaction() as conn:
        ids = (
            conn.execute(
                text(
                    "INSERT INTO jobforge_jobs"
                    " (status, attempts, max_attempts, locked_by, locked_at, run_at)"
                    " VALUES ('running', 1, 3, 'w1', :now - interval '1 hour', :old),"
                    "                ('running', 3, 3, 'w2', :now - interval '1 hour', :old)"
                    " RETURNING id::text"
                ),
                {"now": now, "old": now - timedelta(hours=2)},
            )
            .scalars()
            .all()
        )
    result = run_task(db, settings, "mark-stale", now=now, profile=bound)
    assert result.transitions == {"running->queued": 1, "running->dead": 1}
    rows = {
        r.id: r
        for r in _rows(
            db, "SELECT id::text, status, locked_by, run_at, finished_at FROM jobforge_jobs"
        )
    }
    retried, buried = rows[ids[0]], rows[ids[1]]
    assert (retried.status, retried.locked_by, retried.run_at) == ("queued", None, now)
    assert retried.finished_at is None
    assert (buried.status, buried.locked_by, buried.finished_at) == ("dead", None, now)


def test_game_platform_has_no_stale_and_no_dead(
    db: Database, settings: Settings, schema: str
) -> None:
    bound = _table(db, "game-platform", schema)
    now = db.now()
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO job_queue (status, attempts, max_attempts, locked_at)"
                " VALUES ('running', 5, 5, :now - interval '1 hour')"
            ),
            {"now": now},
        )
    result = run_task(db, settings, "mark-stale", now=now, profile=bound)
    assert result.transitions == {"running->failed": 1}
    dead = run_task(db, settings, "dead-letter", now=now, profile=bound)
    assert dead.changed == 0
    assert "has no dead state" in dead.notes[0]


def test_purge_deletes_finished_jobs_past_retention_only(
    db: Database, settings: Settings, schema: str
) -> None:
    bound = _table(db, "ai-course-jobs", schema)
    now = db.now()
    keep = settings.retention_succeeded
    with db.transaction() as conn:
        ids = (
            conn.execute(
                text(
                    "INSERT INTO ai_course_jobs (status, completed_at)"
                    " VALUES ('done', :now - :keep - interval '1 s'),"
                    "        ('done', :now - :keep + interval '1 s'),"
                    "        ('failed', :now - interval '400 days'), ('pending', NULL)"
                    " RETURNING id::text"
                ),
                {"now": now, "keep": keep},
            )
            .scalars()
            .all()
        )
    dry = run_task(db, settings, "purge", now=now, profile=bound, dry_run=True)
    assert dry.transitions == {"done->purged": 1}
    assert len(_rows(db, "SELECT 1 FROM ai_course_jobs")) == 4
    result = run_task(db, settings, "purge", now=now, profile=bound)
    assert result.transitions == {"done->purged": 1}
    left = {r[0] for r in _rows(db, "SELECT id::text FROM ai_course_jobs")}
    assert left == set(ids[1:])
    assert [(r.job_id, r.to_status) for r in _ledger(db, "ai-course-jobs")] == [(ids[0], "purged")]


@pytest.mark.parametrize("task", ["mark-stale", "requeue", "dead-letter", "purge"])
def test_a_dry_run_changes_nothing(
    db: Database, settings: Settings, schema: str, task: str
) -> None:
    bound = _table(db, "ai-course-jobs", schema)
    now = db.now()
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO ai_course_jobs (status, retry_count, last_heartbeat, completed_at)"
                " VALUES ('processing', 0, :old, NULL), ('failed', 0, NULL, :old),"
                "        ('failed', 3, NULL, :old), ('done', 0, NULL, :old)"
            ),
            {"old": now - timedelta(days=400)},
        )
    before = _rows(db, "SELECT * FROM ai_course_jobs ORDER BY id")
    result = run_task(db, settings, task, now=now, profile=bound, dry_run=True)
    assert result.changed == 1, result.transitions
    assert _rows(db, "SELECT * FROM ai_course_jobs ORDER BY id") == before
    assert _ledger(db, "ai-course-jobs") == []


def test_status_shows_each_profiles_runs_apart(
    db: Database, settings: Settings, schema: str
) -> None:
    from reconciler.schedule import load_schedule
    from reconciler.status import collect

    bound = _table(db, "ai-course-jobs", schema)
    run_task(db, settings, "mark-stale", profile=bound)
    _, statuses = collect(db, load_schedule(None), ["native", "ai-course-jobs"])
    by_name = {s.task: s for s in statuses}
    assert by_name["mark-stale@ai-course-jobs"].last_run is not None
    assert by_name["mark-stale"].last_run is None
    assert by_name["requeue@ai-course-jobs"].last_run is None


SHIPPED = ("ai-course-jobs", "ai-media-jobs", "jobforge", "game-platform")


def _insert(db: Database, bound: Bound, rows: list[dict[str, Any]]) -> list[str]:
    """Rows given by role (status by lifecycle state), ids back in order."""
    p = bound.profile
    ids = []
    with db.transaction() as conn:
        for row in rows:
            values = {p.status if r == "status" else p.columns[r]: v for r, v in row.items()}
            values[p.status] = p.states[row["status"]]
            cols = ", ".join(f'"{c}"' for c in values)
            binds = ", ".join(f":v{i}" for i in range(len(values)))
            ids.append(
                conn.execute(
                    text(f'INSERT INTO "{p.table}" ({cols}) VALUES ({binds}) RETURNING id::text'),
                    {f"v{i}": v for i, v in enumerate(values.values())},
                ).scalar_one()
            )
    return ids


def _status(db: Database, bound: Bound, ids: list[str]) -> list[str | None]:
    p = bound.profile
    found = dict(_rows(db, f'SELECT id::text, "{p.status}" FROM "{p.table}"'))
    return [bound.profile.lifecycle_of(found[i]) if i in found else None for i in ids]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_transition_of_a_shipped_profile_at_its_boundary(
    db: Database, settings: Settings, schema: str, name: str
) -> None:
    bound = _table(db, name, schema)
    p = bound.profile
    now = db.now()
    ms = timedelta(milliseconds=1)
    alive = "heartbeat" if "heartbeat" in p.columns else "started_at"
    timeout = settings.heartbeat_timeout
    # mark-stale: silent one millisecond past the timeout moves; exactly at it stays.
    ids = _insert(
        db,
        bound,
        [
            {"status": "running", alive: now - timeout - ms, "attempts": 0},
            {"status": "running", alive: now - timeout, "attempts": 0},
        ],
    )
    run_task(db, settings, "mark-stale", now=now, profile=bound)
    moved = "stale" if p.has("stale") else "queued"
    assert _status(db, bound, ids) == [moved, "running"]
    # requeue: a failed job with attempts left, after a 10 s backoff of its kind's policy.
    kind = _rows(db, f'SELECT "{p.columns["kind"]}" FROM "{p.table}" LIMIT 1')[0][0]
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO retry_policies (kind, max_attempts, initial_delay, max_delay,"
                " multiplier) VALUES (:k, 3, interval '10 s', interval '10 s', 1)"
            ),
            {"k": kind},
        )
    backoff = timedelta(seconds=10)
    ids = _insert(
        db,
        bound,
        [
            {"status": "failed", "attempts": 1, "finished_at": now - backoff},
            {"status": "failed", "attempts": 1, "finished_at": now - backoff + ms},
        ],
    )
    run_task(db, settings, "requeue", now=now, profile=bound)
    assert _status(db, bound, ids) == ["queued", "failed"]
    # dead-letter: no attempts left moves; one left stays (requeue's).
    if p.has("dead"):
        ids = _insert(
            db,
            bound,
            [
                {"status": "failed", "attempts": 3, "max_attempts": 3, "finished_at": now},
                {"status": "failed", "attempts": 2, "max_attempts": 3, "finished_at": now},
            ],
        )
        run_task(db, settings, "dead-letter", now=now, profile=bound)
        assert _status(db, bound, ids) == ["dead", "failed"]
    # purge: finished one millisecond past retention goes; exactly at it stays.
    keep = settings.retention_succeeded
    ids = _insert(
        db,
        bound,
        [
            {"status": "succeeded", "finished_at": now - keep - ms, "attempts": 1},
            {"status": "succeeded", "finished_at": now - keep, "attempts": 1},
        ],
    )
    run_task(db, settings, "purge", now=now, profile=bound)
    assert _status(db, bound, ids) == [None, "succeeded"]


def test_a_profiles_runs_are_their_own_metric_series(
    db: Database, settings: Settings, schema: str
) -> None:
    from prometheus_client import CollectorRegistry

    from reconciler.metrics import TaskMetrics

    bound = _table(db, "jobforge", schema)
    _insert(
        db,
        bound,
        [{"status": "running", "heartbeat": db.now() - timedelta(hours=1), "attempts": 1}],
    )
    registry = CollectorRegistry()
    TaskMetrics(registry).observe(run_task(db, settings, "mark-stale", profile=bound))
    value = registry.get_sample_value
    labels = {"task": "mark-stale@jobforge", "transition": "running->queued"}
    assert value("reconciler_task_rows_total", labels) == 1
    assert value("reconciler_task_runs_total", {"task": "mark-stale", "status": "ok"}) is None


def test_vacuum_analyze_vacuums_the_profiles_table(
    db: Database, settings: Settings, schema: str
) -> None:
    bound = _table(db, "jobforge", schema)
    _insert(db, bound, [{"status": "succeeded", "attempts": 1} for _ in range(50)])
    with db.transaction() as conn:
        conn.execute(text("DELETE FROM jobforge_jobs"))
    result = run_task(db, settings, "vacuum-analyze", profile=bound)
    assert result.status == "ok", result.error
    tables = result.details["tables"]
    assert list(tables) == ["jobforge_jobs"]
    assert tables["jobforge_jobs"]["dead_rows_after"] == 0


def test_a_table_with_heartbeats_on_a_workers_table(
    db: Database, settings: Settings, schema: str
) -> None:
    """[heartbeat_table]: a job moves when its worker's row is silent or gone, not when the
    worker heartbeats; the worker rows are locked FOR SHARE by the deciding statement."""
    from reconciler.profiles.model import Profile, WorkerTable

    with db.transaction() as conn:
        conn.execute(text("CREATE TABLE fleet (name text PRIMARY KEY, seen timestamptz)"))
        conn.execute(
            text(
                "CREATE TABLE tasks (id bigint PRIMARY KEY, state text, runner text,"
                " tries int NOT NULL DEFAULT 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO fleet VALUES ('dead', now() - interval '1 hour'), ('alive', now());"
                " INSERT INTO tasks VALUES (1, 'busy', 'dead', 0), (2, 'busy', 'alive', 0),"
                " (3, 'busy', 'vanished', 0), (4, 'busy', 'dead', 5)"
            )
        )
    profile = Profile(
        name="fleet-tasks",
        kind="table",
        schema=schema,
        table="tasks",
        id="id",
        status="state",
        states={"queued": "todo", "running": "busy", "failed": "broken"},
        columns={"attempts": "tries", "worker": "runner"},
        max_attempts=3,
        worker_table=WorkerTable(schema=schema, table="fleet", id="name", heartbeat="seen"),
    )
    bound = bind(db, profile)
    result = run_task(db, settings, "mark-stale", profile=bound)
    assert result.transitions == {"busy->todo": 2, "busy->broken": 1}, result.error
    assert dict(_rows(db, "SELECT id, state FROM tasks")) == {
        1: "todo",
        2: "busy",
        3: "todo",
        4: "broken",
    }
    reasons = {r.job_id: r.reason for r in _ledger(db, "fleet-tasks")}
    assert reasons["3"]["worker_gone"] is True and reasons["1"]["worker_gone"] is False


def test_reindex_leaves_a_profiles_table_to_its_owner(
    db: Database, settings: Settings, schema: str
) -> None:
    bound = _table(db, "jobforge", schema)
    result = run_task(db, settings, "reindex", profile=bound)
    assert result.status == "ok" and result.changed == 0
    assert "its owner's to reindex" in result.notes[0]
