"""Every task's selection, and claim()'s, reads jobs through an index, never a Seq Scan.

The table holds 100,000 finished jobs (inside their retention), a busy queue's
live rows (healthy running jobs, a backlog of queued ones) and a few rows
eligible for each task. Plans are read with ``EXPLAIN (FORMAT JSON)`` of the
real statements: each task's ``apply`` with the parameters the task binds,
and the body of the installed claim() function.

Two plans per statement, because both run in production: the custom plan
(the parameters' values are known, as in a batch loop's first executions) and
the generic plan (psycopg prepares a statement after its fifth execution on a
connection, and PostgreSQL may then switch to a plan made without the
values; the body of a SQL function such as claim() is always planned so).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from reconciler.db import Database, quote_ident
from reconciler.migrate import migrate
from reconciler.ops.filter import JobFilter
from reconciler.ops.listing import SEARCH_EXAMINES, list_statement
from reconciler.sqlfiles import query
from tests.bench.statements import TRANSITION_TASKS, Statement, task_statements
from tests.conftest import connect, make_settings

FINISHED_JOBS = 100_000
INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}
# The index meant to serve each selection (sql/schema.sql).
EXPECTED_INDEX = {
    "mark-stale": "jobs_running_since_idx",
    "requeue": "jobs_retry_due_idx",
    "dead-letter": "jobs_dead_letter_idx",
    "purge": "jobs_finished_idx",
    "claim": "jobs_queue_claim_idx",
}
# Compiles text() with $1, $2... in place of :name, for PREPARE.
_DOLLAR = PGDialect_psycopg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]

_FILL = """
INSERT INTO jobs (kind, queue, priority, status, attempt, max_attempts, locked_by, locked_at,
                  heartbeat_at, run_at, started_at, finished_at, created_at)
SELECT 'test', 'default', mod(g, 5), s.status, s.attempt, 3, s.locked_by, s.locked_at,
       s.heartbeat_at, s.run_at, s.started_at, s.finished_at,
       CAST(:now AS timestamptz) - interval '40 days'
FROM generate_series(1, :n) g
CROSS JOIN LATERAL (
    SELECT CAST(:status AS text) AS status, CAST(:attempt AS integer) AS attempt,
           CASE WHEN :status = 'running' THEN 'w' || mod(g, 50) END AS locked_by,
           CAST(:seen AS timestamptz) AS locked_at, CAST(:seen AS timestamptz) AS heartbeat_at,
           CAST(:run_at AS timestamptz) AS run_at,
           CAST(:now AS timestamptz) - interval '20 days' AS started_at,
           CAST(:finished AS timestamptz) - mod(g, 86400) * interval '1 second' AS finished_at
) s
"""


def _rows(
    status: str,
    n: int,
    now: datetime,
    *,
    attempt: int = 1,
    ago: timedelta | None = None,
    run_at: datetime | None = None,
) -> dict[str, Any]:
    """Parameters of _FILL: n jobs in ``status`` that finished (or last beat) ``ago``."""
    when = now - ago if ago is not None else None
    live = status == "running"
    return {
        "now": now,
        "n": n,
        "status": status,
        "attempt": attempt,
        "seen": when if live else None,
        "finished": None if live or status == "queued" else when,
        "run_at": run_at or now - timedelta(days=20),
    }


@pytest.fixture(scope="module")
def planned(pg_url: str) -> Iterator[tuple[Database, datetime]]:
    """One schema for the module (the tests only EXPLAIN), filled and analysed."""
    schema = f"t_idx_{uuid.uuid4().hex[:8]}"
    db = connect(pg_url, schema, make_settings(pg_url, schema))
    try:
        migrate(db)
        now = db.now()
        day, hour = timedelta(days=1), timedelta(hours=1)
        fills = [
            # The bulk: finished within their retention, so purge has nothing there.
            _rows("succeeded", FINISHED_JOBS * 6 // 8, now, ago=day),
            _rows("cancelled", FINISHED_JOBS // 8, now, ago=day),
            _rows("dead", FINISHED_JOBS // 8, now, ago=day),
            # A busy queue's live rows, none of them eligible.
            _rows("running", 500, now, ago=timedelta(seconds=10)),
            _rows("queued", 2000, now),
            _rows("queued", 200, now, run_at=now + hour),
            # A few eligible rows per task.
            _rows("running", 3, now, ago=hour),  # mark-stale
            _rows("failed", 3, now, ago=hour),  # requeue
            _rows("stale", 3, now, ago=hour),  # requeue
            _rows("failed", 3, now, attempt=3, ago=hour),  # dead-letter
            _rows("stale", 3, now, attempt=3, ago=hour),  # dead-letter
            _rows("succeeded", 3, now, ago=40 * day),  # purge
            _rows("cancelled", 3, now, ago=40 * day),  # purge
            _rows("dead", 3, now, ago=100 * day),  # purge
        ]
        with db.transaction(statement_timeout=timedelta(minutes=2)) as conn:
            for params in fills:
                conn.execute(text(_FILL), params)
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {quote_ident(schema)}.jobs")
        yield db, now
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        db.dispose()


def _statements(db: Database, now: datetime) -> list[tuple[str, Statement]]:
    settings = make_settings("postgresql://unused", db.schema)
    return [
        (task, statement)
        for task in TRANSITION_TASKS
        for statement in task_statements(db, settings, task, now=now, batch_size=1000)
    ]


def _custom_plan(db: Database, statement: Statement) -> dict[str, Any]:
    """EXPLAIN with the values bound, as the statement's first executions are planned."""
    with db.transaction(rollback=True) as conn:
        plan = conn.execute(
            text(f"EXPLAIN (FORMAT JSON) {statement.sql}"), dict(statement.params)
        ).scalar_one()
    return dict(plan[0]["Plan"])


def _generic_plan(
    conn: Connection, body: str, args: list[Any], mode: str = "force_generic_plan"
) -> dict[str, Any]:
    """EXPLAIN of the plan made without the values ($1, $2...), then run with ``args``.

    ``mode="force_custom_plan"`` plans with the values instead, as claim() does.
    """
    name = f"probe_{uuid.uuid4().hex[:8]}"
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute(sql.SQL("PREPARE {} AS {}").format(sql.Identifier(name), sql.SQL(body)))
    try:
        raw.execute(sql.SQL("SET LOCAL plan_cache_mode = {}").format(sql.Identifier(mode)))
        row = raw.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {} ({})").format(
                sql.Identifier(name), sql.SQL(", ").join(map(sql.Literal, args))
            )
        ).fetchone()
    finally:
        raw.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))
    assert row is not None
    return dict(row[0][0]["Plan"])


def _function_source(conn: Connection, signature: str) -> tuple[str, list[str]]:
    source, config = conn.execute(
        text("SELECT prosrc, proconfig FROM pg_proc WHERE oid = to_regprocedure(:fn)"),
        {"fn": signature},
    ).one()
    return source, list(config or [])


def _claim_body(conn: Connection, paused: str = "'{}'::text[]") -> str:
    """claim_lanes()'s query (claim() for any n but 1), its arguments turned into $1 (worker),
    $2 (queues), $3 (n), the paused queues (read by claim() before the query) into ``paused``.

    Also checks that claim_lanes() plans it as a custom plan (with the caller's values),
    which is what the plans below are made as.
    """
    source, config = _function_source(conn, "claim_lanes(text, text[], integer, text[])")
    assert "plan_cache_mode=force_custom_plan" in config, config
    found = re.search(r"RETURN QUERY(.*);\s*END", source, re.S)
    assert found, source
    arguments = {"worker": "$1::text", "queues": "$2::text[]", "n": "$3::integer"}
    body = re.sub(r"\bclaim_lanes\.(worker|queues|n)\b", lambda m: arguments[m[1]], found[1])
    return body.replace("claim_lanes.paused", paused)


def _claim_one_body(conn: Connection) -> str:
    """claim(n => 1)'s query, its worker turned into $1 and its lanes (the queues it may
    serve, read just before) into $2. claim() keeps its plan for the session (no
    plan_cache_mode of its own), so the plans below are generic ones, made without values.
    """
    source, config = _function_source(conn, "claim(text, text[], integer)")
    assert not [c for c in config if c.startswith("plan_cache_mode")], config
    found = re.search(r"RETURN QUERY\s*(WITH picked.*);\s*END", source, re.S)
    assert found, source
    body = found[1].replace("claim.worker", "$1::text")
    return re.sub(r"\bunnest\(lanes\)", "unnest($2::text[])", body)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _assert_index_served(plan: dict[str, Any], index: str, label: str) -> None:
    nodes = list(_nodes(plan))
    scans = [
        f"{n['Node Type']} on {n.get('Index Name') or n['Relation Name']}"
        for n in nodes
        if n["Node Type"].endswith("Scan") and ("Index Name" in n or "Relation Name" in n)
    ]
    seq_scans = [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "jobs"]
    used = {n["Index Name"] for n in nodes if n["Node Type"] in INDEX_SCANS}
    assert not seq_scans, f"{label}: Seq Scan on jobs ({scans})"
    assert index in used, f"{label}: {index} not used ({scans})"


def test_task_selections_use_their_index(planned: tuple[Database, datetime]) -> None:
    """With values bound, each task's selection scans its index and nothing scans jobs whole."""
    db, now = planned
    statements = _statements(db, now)
    assert len(statements) == len(TRANSITION_TASKS) + 2  # purge runs once per terminal status
    for task, statement in statements:
        _assert_index_served(_custom_plan(db, statement), EXPECTED_INDEX[task], statement.label)


def test_task_selections_use_their_index_in_generic_plans(
    planned: tuple[Database, datetime],
) -> None:
    """Planned without the values (a prepared statement's generic plan), the same holds."""
    db, now = planned
    for task, statement in _statements(db, now):
        compiled = text(statement.sql).compile(dialect=_DOLLAR)
        args = [statement.params[name] for name in compiled.positiontup or ()]
        with db.transaction(rollback=True) as conn:
            plan = _generic_plan(conn, str(compiled), args)
        _assert_index_served(plan, EXPECTED_INDEX[task], statement.label)


def test_claim_uses_claim_index(planned: tuple[Database, datetime]) -> None:
    """claim()'s queries, planned as claim() plans them (claim_lanes() with its values, the
    n => 1 query without), scan jobs_queue_claim_idx."""
    db, _ = planned
    for args in (["w1", None, 1], ["w1", ["default"], 10]):
        with db.transaction(rollback=True) as conn:
            plan = _generic_plan(conn, _claim_body(conn), args, "force_custom_plan")
        _assert_index_served(plan, EXPECTED_INDEX["claim"], f"claim_lanes{args}")
    with db.transaction(rollback=True) as conn:
        plan = _generic_plan(conn, _claim_one_body(conn), ["w1", ["default"]])
    _assert_index_served(plan, EXPECTED_INDEX["claim"], "claim(n => 1), generic plan")


def test_claim_reads_in_index_order_with_a_large_backlog(
    planned: tuple[Database, datetime],
) -> None:
    """With 50,000 due jobs, claim() still takes the first n in jobs_queue_claim_idx order,
    whether planned with its values (claim_lanes) or once for the session (n => 1)."""
    db, now = planned
    with db.transaction(rollback=True) as conn:
        conn.execute(text(_FILL), _rows("queued", 50_000, now))
        conn.execute(text("ANALYZE jobs"))  # rolled back with the rows
        plans = [
            _generic_plan(conn, _claim_body(conn), ["w1", None, 1], "force_custom_plan"),
            _generic_plan(conn, _claim_body(conn), ["w1", ["default"], 10], "force_custom_plan"),
            _generic_plan(conn, _claim_one_body(conn), ["w1", ["default"]]),
        ]
    for plan in plans:
        ordered = [
            n
            for n in _nodes(plan)
            if n["Node Type"] == "Index Scan" and n["Index Name"] == EXPECTED_INDEX["claim"]
        ]
        assert ordered, f"claim reads {[n['Node Type'] for n in _nodes(plan)]}"


def test_requeue_reads_only_the_due_rows_behind_a_large_backlog_in_backoff(
    planned: tuple[Database, datetime],
) -> None:
    """50,000 jobs that failed at one instant (ties) and wait in backoff: requeue's batch
    reads the 6 due rows from jobs_retry_due_idx and none of the waiting ones, no sort."""
    db, now = planned
    settings = make_settings("postgresql://unused", db.schema)
    (statement,) = task_statements(db, settings, "requeue", now=now, batch_size=1000)
    with db.transaction(rollback=True, statement_timeout=timedelta(minutes=2)) as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, status, attempt, max_attempts, finished_at)"
                " SELECT 'test', 'failed', 1, 3, CAST(:now AS timestamptz)"
                " FROM generate_series(1, 50000)"
            ),
            {"now": now},
        )
        conn.execute(text("ANALYZE jobs"))  # rolled back with the rows
        plan = conn.execute(
            text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement.sql}"), dict(statement.params)
        ).scalar_one()[0]["Plan"]
    nodes = list(_nodes(plan))
    scans = [n for n in nodes if n.get("Index Name") == EXPECTED_INDEX["requeue"]]
    assert scans, [n["Node Type"] for n in nodes]
    assert [n["Node Type"] for n in scans] == ["Index Scan"]
    assert scans[0]["Actual Rows"] == 6  # 3 failed + 3 stale due (the fixture)
    assert scans[0].get("Rows Removed by Filter", 0) == 0
    assert not [n for n in nodes if n["Node Type"] == "Sort"]


def test_claim_reads_neither_other_queues_nor_paused_queues_nor_future_jobs(
    planned: tuple[Database, datetime],
) -> None:
    """Behind 30,000 older due jobs of another queue, 20,000 of a paused queue, 20,000 critical
    jobs due in an hour (ties), claim() reads only the rows it hands out: no filtered rows,
    at most n per lane, for one queue and for every queue."""
    db, now = planned
    with db.transaction(rollback=True, statement_timeout=timedelta(minutes=2)) as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, queue, priority, run_at, max_attempts)"
                " SELECT 'test', q.queue, q.priority, CAST(:now AS timestamptz) + q.later, 3"
                " FROM (VALUES ('other', 0, interval '-30 days', 30000),"
                "              ('stopped', 0, interval '-30 days', 20000),"
                "              ('default', 0, interval '1 hour', 20000))"
                " q (queue, priority, later, n)"
                " CROSS JOIN LATERAL generate_series(1, q.n)"
            ),
            {"now": now},
        )
        conn.execute(text("ANALYZE jobs"))  # rolled back with the rows
        lanes_body = _claim_body(conn, paused="'{stopped}'::text[]")
        one_body = _claim_one_body(conn)
        # claim_lanes() for any n, with its values; the n => 1 query, generic, with the
        # lanes claim() reads first: the caller's queues, or every queue with queued
        # jobs, less the paused ones.
        cases: list[tuple[str, str, list[Any], list[str] | None, int]] = [
            (lanes_body, "force_custom_plan", ["w1", ["default"], 1], ["default"], 1),
            (lanes_body, "force_custom_plan", ["w1", ["default"], 10], ["default"], 10),
            (lanes_body, "force_custom_plan", ["w1", None, 1], None, 1),
            (one_body, "force_generic_plan", ["w1", ["default"]], ["default"], 1),
            (one_body, "force_generic_plan", ["w1", ["default", "other"]], None, 1),
        ]
        for body, mode, args, queues, n in cases:
            name = f"probe_{uuid.uuid4().hex[:8]}"
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute(sql.SQL("PREPARE {} AS {}").format(sql.Identifier(name), sql.SQL(body)))
            raw.execute(sql.SQL("SET LOCAL plan_cache_mode = {}").format(sql.Identifier(mode)))
            row = raw.execute(
                sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {} ({})").format(
                    sql.Identifier(name), sql.SQL(", ").join(map(sql.Literal, args))
                )
            ).fetchone()
            raw.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))
            assert row is not None
            nodes = list(_nodes(row[0][0]["Plan"]))
            label = f"{mode}: claim(queues={queues}, n={n})"
            assert not [x for x in nodes if x["Node Type"] in ("Seq Scan", "Bitmap Heap Scan")]
            lanes = [
                x
                for x in nodes
                if x["Node Type"] == "Index Scan"
                and x["Index Name"] == EXPECTED_INDEX["claim"]
                and "run_at" in x.get("Index Cond", "")
            ]
            assert lanes, label
            # 5 priorities x the queues served (default, and other when queues is NULL)
            served = 1 if queues else 2
            assert sum(x["Actual Loops"] for x in lanes) <= 5 * served, label
            read = sum(x["Actual Rows"] * x["Actual Loops"] for x in lanes)
            assert read <= n * 5 * served, (label, read)
            removed = [
                x
                for x in nodes
                if x.get("Relation Name") == "jobs" and x.get("Rows Removed by Filter", 0) > 0
            ]
            assert not removed, (label, removed)


def _analyze_plan(db: Database, body: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of the plan of ``body`` with ``params`` bound (custom plan), rolled back."""
    with db.transaction(rollback=True) as conn:
        plan = conn.execute(text(f"EXPLAIN (FORMAT JSON) {body}"), params).scalar_one()
    return list(_nodes(plan[0]["Plan"]))


def test_check_reads_jobs_through_indexes(planned: tuple[Database, datetime]) -> None:
    """Every query of `reconciler check` that reads jobs uses an index, never a Seq Scan,
    so monitoring's minute-by-minute check does not grow with the finished backlog."""
    from reconciler.sqlfiles import query

    db, now = planned
    params = {
        "now": now,
        "since": now - timedelta(minutes=15),
        "backlog_horizon": now - timedelta(minutes=1),
        "slow_horizon": now - timedelta(minutes=30),
        "cap": 10_001,
    }
    for name in ("attempts", "backlog", "dead_recent", "slow", "oldest_due_by_priority"):
        nodes = _analyze_plan(db, query("ops/check", name), params)
        seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "jobs"]
        assert not seq, (name, [n["Node Type"] for n in nodes])


def test_jobs_cancel_by_queue_walks_its_index(planned: tuple[Database, datetime]) -> None:
    """`jobs cancel --queue Q` selects the queue's live jobs from
    jobs_live_queue_idx in id order: no Seq Scan, no Sort over the queue."""
    from reconciler.ops.filter import JobFilter, filtered_query

    db, now = planned
    body = filtered_query("ops/jobs", "cancel").replace("/*skip_locked*/", "SKIP LOCKED")
    # (With --status queued on this small table the planner prefers a bitmap scan of the
    # 2,200 queued rows and a sort; not pinned here.)
    for statuses in ((),):
        job_filter = JobFilter(queues=("default",), statuses=statuses)
        params = {
            **job_filter.binds(now),
            "eligible": list(statuses or ("queued", "running", "failed", "stale")),
            "note": None,
            "now": now,
            "batch_size": 1000,
            "actor": "cli:test",
            "run_id": None,
            "command": "jobs cancel",
        }
        # The selection (CTE picked); the UPDATE's join back by id is planned by the
        # table's size (a hash join over this 100k-row table, by primary key at scale).
        (picked,) = [
            n for n in _analyze_plan(db, body, params) if n.get("Subplan Name") == "CTE picked"
        ]
        nodes = list(_nodes(picked))
        kinds = [(n["Node Type"], n.get("Index Name") or n.get("Relation Name")) for n in nodes]
        assert ("Seq Scan", "jobs") not in kinds, kinds
        assert not [n for n in nodes if n["Node Type"] == "Sort"], kinds
        assert ("Index Scan", "jobs_live_queue_idx") in kinds, kinds


def test_stats_reads_jobs_through_indexes(planned: tuple[Database, datetime]) -> None:
    """Every query of `reconciler stats` that reads jobs uses an index, never a Seq Scan:
    its depth counts live and dead jobs whole and finished ones over its window only, so
    it does not grow with the succeeded jobs that retention keeps."""
    from reconciler.sqlfiles import query

    db, now = planned
    params = {"now": now, "since": now - timedelta(hours=24)}
    for name in ("depth", "oldest_due", "durations", "failure_rate", "table_size"):
        nodes = _analyze_plan(db, query("ops/stats", name), params)
        seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "jobs"]
        assert not seq, (name, [(n["Node Type"], n.get("Filter")) for n in nodes])
        if name == "depth":
            # Dead, succeeded and cancelled jobs: a range of jobs_finished_idx each,
            # which carries queue and priority, so where the visibility map allows
            # (a vacuumed table) the count reads no heap page per dead job.
            finished = [n for n in nodes if n.get("Index Name") == "jobs_finished_idx"]
            assert len(finished) == 3, [(n["Node Type"], n.get("Index Name")) for n in nodes]


def _read_by_pkey(conn: Connection, sql_text: str, binds: dict[str, Any], label: str) -> int:
    """EXPLAIN ANALYZE ``sql_text``: it reads jobs only through jobs_pkey, with no Seq Scan,
    Sort or bitmap; the rows it examined there (returned and filtered out)."""
    plan = conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql_text}"), binds).scalar_one()
    nodes = list(_nodes(plan[0]["Plan"]))
    kinds = [n["Node Type"] for n in nodes]
    assert not {"Seq Scan", "Sort", "Bitmap Heap Scan"} & set(kinds), f"{label}: {kinds}"
    scans = [n for n in nodes if n["Node Type"] in INDEX_SCANS]
    assert scans and {n["Index Name"] for n in scans} == {"jobs_pkey"}, f"{label}: {kinds}"
    return sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in scans)


def test_error_text_search_reads_a_bounded_window(planned: tuple[Database, datetime]) -> None:
    """The jobs page's error-text search (ILIKE, which no index serves) reads the newest
    SEARCH_EXAMINES jobs below its position by walking the primary key backwards, alone
    or with other filters, whether every tenth job matches or none does: no Seq Scan, no
    Sort, no bitmap over the table, at most the window's rows read."""
    db, now = planned
    with db.transaction(rollback=True, statement_timeout=timedelta(minutes=2)) as conn:
        conn.execute(
            text(
                "UPDATE jobs SET last_error = jsonb_build_object('message', 'upstream timeout')"
                " WHERE id % 10 = 0"
            )
        )
        conn.execute(text("ANALYZE jobs"))  # rolled back with the change
        top = conn.execute(text("SELECT max(id) FROM jobs")).scalar_one()
        for before in (None, top // 2):
            floor_sql = query("ops/listing", "search_floor")
            binds = {"before_id": before, "examine": SEARCH_EXAMINES}
            read = _read_by_pkey(conn, floor_sql, binds, f"search_floor below {before}")
            assert read <= SEARCH_EXAMINES
            floor = conn.execute(text(floor_sql), binds).scalar_one()
            for error in ("timeout", "no such error"):
                for job_filter in (
                    JobFilter(),
                    JobFilter(statuses=("dead",)),
                    JobFilter(queues=("default",), kinds=("test",)),
                ):
                    label = f"error {error!r}, {job_filter}, below {before}"
                    sql_text, list_binds = list_statement(
                        job_filter,
                        now=now,
                        limit=51,
                        error_text=error,
                        before_id=before,
                        floor_id=floor,
                    )
                    read = _read_by_pkey(conn, sql_text, list_binds, label)
                    assert read <= SEARCH_EXAMINES, label


_WORKER_ARGS = {"job_id": "$1::bigint", "claim_token": "$2::uuid", "error": "$3::jsonb"}


def test_heartbeat_complete_and_fail_find_the_job_by_its_primary_key(
    planned: tuple[Database, datetime],
) -> None:
    """heartbeat(), complete() and fail() reach their row through jobs_pkey alone, planned
    with or without the values: no index holding the running jobs (jobs_live_queue_idx,
    jobs_running_since_idx) is walked for it, whatever the statistics say of them."""
    db, _ = planned
    for fn, signature in (
        ("heartbeat", "heartbeat(bigint, uuid)"),
        ("complete", "complete(bigint, uuid)"),
        ("fail", "fail(bigint, uuid, jsonb)"),
    ):
        with db.transaction(rollback=True) as conn:
            source, _config = _function_source(conn, signature)
            found = re.search(r"BEGIN\s*(.*?);\s*RETURN FOUND;", source, re.S)
            assert found, source
            body = re.sub(
                rf"\b{fn}\.(job_id|claim_token|error)\b", lambda m: _WORKER_ARGS[m[1]], found[1]
            )
            args: list[Any] = [1, str(uuid.uuid4())] + (['{"e": 1}'] if fn == "fail" else [])
            for mode in ("force_custom_plan", "force_generic_plan"):
                nodes = list(_nodes(_generic_plan(conn, body, args, mode)))
                on_jobs = [
                    n
                    for n in nodes
                    if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]
                ]
                assert on_jobs, (fn, mode)
                assert {n.get("Index Name") for n in on_jobs} == {"jobs_pkey"}, (fn, mode, on_jobs)
