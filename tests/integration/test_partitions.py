"""The partitioned ledger: migrate's conversion, the partitions task, purge with it, locks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from reconciler.db import Database
from reconciler.migrate import MigrationBlocked
from reconciler.partitions import partition_events
from reconciler.runner import run_task
from reconciler.settings import Settings
from reconciler.sqlfiles import query
from tests.helpers import insert_job, scalar, wait_until

DAY = timedelta(days=1)


def _partitions(db: Database) -> list[tuple[str, str]]:
    """(name, bound) of every partition of job_events, oldest first."""
    with db.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)"
                " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'job_events'::regclass"
                " ORDER BY job_events_partition_upper(c.oid)"
            )
        ).all()
    return [(r[0], r[1]) for r in rows]


def _kind(db: Database) -> str:
    return str(scalar(db, "SELECT relkind::text FROM pg_class WHERE oid = 'job_events'::regclass"))


def _work_one(conn: psycopg.Connection[Any], schema: str) -> None:
    """Enqueue, claim and complete one job through the SQL API: three events."""
    fn = sql.Identifier
    job_id = conn.execute(sql.SQL("SELECT {}.enqueue('part')").format(fn(schema))).fetchone()
    assert job_id is not None
    claimed = conn.execute(
        sql.SQL("SELECT id, claim_token FROM {}.claim('w1', NULL, 1)").format(fn(schema))
    ).fetchone()
    assert claimed is not None
    conn.execute(sql.SQL("SELECT {}.complete(%s, %s)").format(fn(schema)), [claimed[0], claimed[1]])


def _convert(db: Database, unit: Any = "day", **kw: Any) -> Any:
    return partition_events(db, unit=unit, ahead=timedelta(days=7), **kw)


@pytest.fixture
def api(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A worker's own connection, in autocommit, calling the SQL API."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def test_plain_layout_is_the_default(db: Database, settings: Settings) -> None:
    """migrate without the setting leaves job_events one plain table; the partitions task
    then does nothing and says so."""
    result = run_task(db, settings, "partitions")

    assert _kind(db) == "r"
    assert result.status == "ok", result.error
    assert result.details == {"partitioned": False}
    assert result.other_work == 0


def test_conversion_keeps_every_event_and_the_ids_go_on(
    db: Database, schema: str, api: psycopg.Connection[Any]
) -> None:
    """The old rows become partition job_events_history up to the cutover (a day boundary
    at least a day ahead); ids continue after the old ones; partitions reach 7 days ahead;
    a second run changes nothing."""
    for _ in range(5):
        _work_one(api, schema)
    before = scalar(db, "SELECT count(*) FROM job_events")
    last_id = scalar(db, "SELECT max(id) FROM job_events")
    now = db.now()

    result = _convert(db)

    assert result.converted
    assert _kind(db) == "p"
    assert result.cutover - now >= DAY
    assert result.cutover.hour == 0 and result.cutover.minute == 0
    assert scalar(db, "SELECT count(*) FROM job_events") == before
    assert scalar(db, "SELECT count(*) FROM job_events_history") == before
    parts = _partitions(db)
    assert parts[0] == (
        "job_events_history",
        f"FOR VALUES FROM (MINVALUE) TO ('{_pg(db, result.cutover)}')",
    )
    assert [name for name, _ in parts[1:]] == list(result.created)
    assert scalar(
        db,
        "SELECT max(job_events_partition_upper(inhrelid)) FROM pg_inherits"
        " WHERE inhparent = 'job_events'::regclass",
    ) >= now + timedelta(days=7)
    assert (
        scalar(
            db,
            "SELECT count(*) FROM pg_constraint WHERE conname = 'job_events_history_bound'"
            " AND connamespace = current_schema()::regnamespace",
        )
        == 0
    )

    _work_one(api, schema)  # the same session's cached plans find the new table
    assert scalar(db, "SELECT min(id) FROM job_events WHERE id > :l", l=last_id) == last_id + 1
    assert scalar(db, "SELECT count(*) FROM job_events") == before + 3

    again = _convert(db)
    assert (again.converted, again.created) == (False, ())


def _pg(db: Database, value: datetime) -> str:
    """``value`` as PostgreSQL prints a timestamptz in this session."""
    return str(scalar(db, "SELECT CAST(CAST(:v AS timestamptz) AS text)", v=value))


def test_workers_keep_writing_through_the_conversion(
    db: Database, schema: str, pg_url: str
) -> None:
    """A worker enqueueing, claiming and completing on its own connection the whole time
    sees no error, and every one of its transitions has its event."""
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def worker() -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                while not stop.is_set():
                    _work_one(conn, schema)
                    done[0] += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        wait_until(lambda: done[0] >= 20 or errors, "the worker has done 20 jobs")
        _convert(db, lock_timeout=timedelta(milliseconds=200))
        after = done[0]
        wait_until(lambda: done[0] >= after + 20 or errors, "20 more jobs after the swap")
    finally:
        stop.set()
        thread.join()

    assert errors == []
    assert _kind(db) == "p"
    assert scalar(db, "SELECT count(*) FROM job_events") == 3 * scalar(
        db, "SELECT count(*) FROM jobs"
    )


def test_grants_follow_and_only_deleters_may_manage_partitions(db: Database, pg_url: str) -> None:
    """The old table's grants are the new one's; a role that may delete events may also
    create and drop partitions; PUBLIC and a reader may not."""
    suffix = uuid.uuid4().hex[:8]
    daemon, reader = f"t_daemon_{suffix}", f"t_reader_{suffix}"
    table = sql.Identifier(db.schema, "job_events")
    with psycopg.connect(pg_url, autocommit=True) as admin:
        for role in (daemon, reader):
            admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, DELETE ON {} TO {}").format(
                table, sql.Identifier(daemon)
            )
        )
        admin.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(reader)))
    try:
        _convert(db)

        def may(role: str, what: str) -> bool:
            return bool(scalar(db, f"SELECT {what}", r=role))

        ensure = "'job_events_partitions_ensure(timestamptz, text)'"
        drop = "'job_events_partition_drop_oldest(timestamptz)'"
        assert may(daemon, "has_table_privilege(:r, 'job_events', 'DELETE')")
        assert may(reader, "has_table_privilege(:r, 'job_events', 'SELECT')")
        assert not may(reader, "has_table_privilege(:r, 'job_events', 'INSERT')")
        assert may(daemon, f"has_function_privilege(:r, {ensure}, 'EXECUTE')")
        assert may(daemon, f"has_function_privilege(:r, {drop}, 'EXECUTE')")
        assert not may(reader, f"has_function_privilege(:r, {ensure}, 'EXECUTE')")
        assert not may(reader, f"has_function_privilege(:r, {drop}, 'EXECUTE')")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for role in (daemon, reader):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _event(db: Database, job_id: int, when: datetime) -> None:
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor)"
                " VALUES (:j, 'running', 'succeeded', :at, 'test')"
            ),
            {"j": job_id, "at": when},
        )


def test_task_creates_ahead_and_drops_whole_partitions_past_retention(
    db: Database, settings: Settings
) -> None:
    """Monthly partitions: a run at now + 130 d keeps the history until its upper bound is
    past now - 90 d; at the bound exactly it goes, one second before it stays; events of
    later partitions stay; partitions reach 7 days past the run's now."""
    monthly = settings.model_copy(update={"events_partitioning": "month"})
    cutover = _convert(db, "month").cutover
    now = db.now()
    job_id = insert_job(db)
    _event(db, job_id, now)  # the history partition

    early = run_task(
        db, monthly, "partitions", now=cutover + timedelta(days=90) - timedelta(seconds=1)
    )
    assert early.status == "ok", early.error
    assert early.details["partitions_dropped"] == []
    assert "job_events_history" in dict(_partitions(db))
    assert f"job_events_p{cutover:%Y%m%d}" in early.details["partitions_created"]
    _event(db, job_id, cutover + timedelta(days=3))  # the cutover's month, made just now
    _event(db, job_id, cutover + timedelta(days=3))

    exact = run_task(db, monthly, "partitions", now=cutover + timedelta(days=90))
    assert exact.status == "ok", exact.error
    assert exact.details["partitions_dropped"] == ["job_events_history"]
    assert scalar(db, "SELECT count(*) FROM job_events") == 2
    upper = scalar(
        db,
        "SELECT max(job_events_partition_upper(inhrelid)) FROM pg_inherits"
        " WHERE inhparent = 'job_events'::regclass",
    )
    assert upper >= cutover + timedelta(days=97)


def test_dry_run_lists_what_it_would_drop_and_drops_nothing(
    db: Database, settings: Settings
) -> None:
    monthly = settings.model_copy(update={"events_partitioning": "month"})
    cutover = _convert(db, "month").cutover
    before = _partitions(db)

    result = run_task(db, monthly, "partitions", now=cutover + timedelta(days=91), dry_run=True)

    assert result.status == "ok", result.error
    assert result.details["partitions_dropped"] == ["job_events_history"]
    assert _partitions(db) == before


def test_purge_with_a_partitioned_ledger_deletes_jobs_and_leaves_events(
    db: Database, settings: Settings, api: psycopg.Connection[Any], schema: str
) -> None:
    """purge deletes the expired jobs only; their events go with their partition."""
    _work_one(api, schema)
    _convert(db)
    old = db.now() - timedelta(days=31)
    with db.transaction() as conn:
        conn.execute(text("UPDATE jobs SET finished_at = :old"), {"old": old})
    events = scalar(db, "SELECT count(*) FROM job_events")

    result = run_task(db, settings, "purge")

    assert result.status == "ok", result.error
    assert result.transitions == {"succeeded->purged": 1}
    assert scalar(db, "SELECT count(*) FROM jobs") == 0
    assert scalar(db, "SELECT count(*) FROM job_events") == events == 3


def test_creating_ahead_does_not_wait_for_a_workers_transaction(
    db: Database, settings: Settings, pg_url: str, schema: str
) -> None:
    """With a worker's transaction open on job_events, creating partitions goes through
    (SHARE UPDATE EXCLUSIVE), while a drop gives up after the lock timeout and the run
    says so; once the worker commits, the next run drops it."""
    monthly = settings.model_copy(update={"events_partitioning": "month"})
    cutover = _convert(db, "month").cutover
    later = cutover + timedelta(days=95)
    with psycopg.connect(pg_url) as worker:
        _work_one(worker, schema)  # inserts events; the transaction stays open
        result = run_task(db, monthly, "partitions", now=later)
        assert result.status == "ok", result.error
        assert result.details["partitions_created"] != []
        assert result.details["drop_gave_up"] == "lock_timeout"
        assert "job_events_history" in dict(_partitions(db))
        worker.commit()

    result = run_task(db, monthly, "partitions", now=later)
    assert result.details["partitions_dropped"] == ["job_events_history"]


def test_two_replicas_creating_the_same_partitions_at_once(
    db: Database, pg_url: str, schema: str
) -> None:
    """Two transactions ensuring partitions at once: the second waits on the advisory lock,
    then finds them made; no error, no duplicate."""
    _convert(db)
    upto = db.now() + timedelta(days=20)
    call = sql.SQL("SELECT * FROM {}.job_events_partitions_ensure(%s, 'day')").format(
        sql.Identifier(schema)
    )
    results: list[list[Any]] = []
    with psycopg.connect(pg_url) as first, psycopg.connect(pg_url) as second:
        made = first.execute(call, [upto]).fetchall()

        def other() -> None:
            results.append(second.execute(call, [upto]).fetchall())
            second.commit()

        thread = threading.Thread(target=other)
        thread.start()
        wait_until(
            lambda: (
                scalar(
                    db,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                )
                > 0
            ),
            "the second replica waits for the first",
        )
        first.commit()
        thread.join()
    assert len(made) >= 12
    assert results == [[]]


@pytest.mark.parametrize("holder", ["a reader of job_events", "an old snapshot"])
def test_a_blocked_conversion_removes_its_check_and_leaves_the_plain_table(
    db: Database, pg_url: str, schema: str, holder: str
) -> None:
    """A transaction in the way past the deadline (a reader of job_events blocks the CHECK
    and the swap; an old snapshot elsewhere blocks the concurrent index build, after the
    CHECK was added): migrate stops (MigrationBlocked), the table stays plain, and the
    conversion's CHECK is gone, so events past its cutover are still accepted."""
    with psycopg.connect(pg_url) as blocker:
        if holder == "an old snapshot":
            blocker.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            blocker.execute("SELECT 1")
        else:
            blocker.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "job_events"))
            )
        with pytest.raises(MigrationBlocked) as blocked:
            _convert(
                db,
                lock_timeout=timedelta(milliseconds=50),
                deadline=timedelta(milliseconds=500),
                sleep=lambda _s: None,
            )
    step = "unique" if holder == "an old snapshot" else "bound"
    assert f"partitioning job_events: {step} could not take its locks" in str(blocked.value)
    assert _kind(db) == "r"
    assert (
        scalar(
            db,
            "SELECT count(*) FROM pg_constraint WHERE conname = 'job_events_history_bound'"
            " AND connamespace = current_schema()::regnamespace",
        )
        == 0
    )
    _event(db, insert_job(db), db.now() + timedelta(days=60))


def _leave_a_check(db: Database, cutover: datetime) -> None:
    """What a migrator killed after step 2 leaves: the functions and the CHECK."""
    with db.transaction() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        raw.execute(query("partitions", "functions").encode())
        conn.execute(text(query("partitions", "bound")), {"cutover": cutover})


def test_an_interrupted_conversion_resumes_with_its_cutover(db: Database) -> None:
    """A conversion killed after its CHECK: the next migrate keeps that cutover (still a
    day away) and finishes."""
    cutover = datetime.fromisoformat(
        str(scalar(db, "SELECT CAST(date_trunc('day', now() + interval '3 days') AS text)"))
    )
    _leave_a_check(db, cutover)

    result = _convert(db)

    assert result.converted
    assert result.cutover == cutover
    assert _kind(db) == "p"


def test_a_leftover_check_about_to_expire_is_replaced(db: Database) -> None:
    """A CHECK left by a killed conversion whose cutover is under an hour away is replaced
    by a later one, so no event is refused while the conversion finishes."""
    soon = db.now() + timedelta(minutes=30)
    _leave_a_check(db, soon)

    result = _convert(db)

    assert result.converted
    assert result.cutover - soon >= DAY - timedelta(hours=1)


def test_the_swap_attaches_the_old_table_without_reading_it(db: Database, pg_url: str) -> None:
    """ATTACH of the old table finds its bound proved by the validated CHECK (PostgreSQL says
    so at DEBUG1) and builds no index on it: the swap's ACCESS EXCLUSIVE is catalog work."""
    cutover = datetime.fromisoformat(
        str(scalar(db, "SELECT CAST(date_trunc('day', now() + interval '2 days') AS text)"))
    )
    _leave_a_check(db, cutover)
    notices: list[str] = []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}, pg_temp").format(sql.Identifier(db.schema)))
        conn.execute(query("partitions", "validate"))
        conn.execute(query("partitions", "unique"))
        conn.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
        conn.execute("SET client_min_messages = debug1")
        with conn.transaction():
            conn.execute("SELECT job_events_partitioned_swap(%s)", [cutover])

    assert any(
        'partition constraint for table "job_events_history" is implied' in n for n in notices
    ), notices
    assert not [n for n in notices if "job_events_history" in n and "index" in n], notices


def _scans(plan: Any) -> list[tuple[str, str]]:
    """(node type, relation) of every scan in an EXPLAIN (FORMAT JSON) plan."""
    found = []
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            found.append((node["Node Type"], node["Relation Name"]))
        stack.extend(node.get("Plans", []))
    return found


def test_check_and_the_ledger_metrics_read_partitions_through_indexes(db: Database) -> None:
    """check's window (at a now 11 days past the cutover) and the metrics' cursor walk an
    index of each partition they read, never a partition's whole table: 20,000 events over
    the 10 days before that now, 10 daily partitions, and as many in the history one."""
    cutover = _convert(db).cutover
    now = db.now()
    later = cutover + 11 * DAY + timedelta(hours=5)  # check's now: 10 days of events before
    job_id = insert_job(db)
    with db.transaction() as conn:
        conn.execute(
            text("SELECT count(*) FROM job_events_partitions_ensure(:upto, 'day')"),
            {"upto": cutover + 12 * DAY},
        )
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, at, actor)"
                " SELECT :j, 'running', (ARRAY['succeeded', 'failed', 'dead'])[g % 3 + 1],"
                "        t - g * interval '43 s', 'bench'"
                " FROM generate_series(1, 20000) g,"
                "      (VALUES (CAST(:now AS timestamptz)), (CAST(:later AS timestamptz))) v (t)"
            ),
            {"j": job_id, "now": now, "later": later},
        )
        conn.execute(text("ANALYZE job_events"))
        head = conn.execute(text(query("metrics", "ledger_head"))).scalar_one()
        statements = [
            (query("ops/check", "attempts"), {"since": later - timedelta(hours=1)}),
            (query("ops/check", "dead_recent"), {"since": later - timedelta(hours=1)}),
            (
                query("metrics", "ledger_since"),
                {"cursor": head - 100, "gaps": [head - 5000], "limit": 1000},
            ),
        ]
        for statement, binds in statements:
            plan = conn.execute(text(f"EXPLAIN (FORMAT JSON) {statement}"), binds).scalar_one()
            scans = [s for s in _scans(plan) if s[1].startswith("job_events")]
            assert scans, statement
            full = [s for s in scans if s[0] == "Seq Scan" and s[1] in _filled(conn)]
            assert full == [], (statement, scans)


def _filled(conn: Any) -> set[str]:
    """Partitions of 1,000 events or more (one of a few pages, the planner may read whole)."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'job_events'::regclass AND c.reltuples >= 1000"
        )
    )
    return {r[0] for r in rows}
