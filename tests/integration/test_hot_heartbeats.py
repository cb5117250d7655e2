"""Heartbeats are HOT updates: no index of jobs holds a column a heartbeat changes."""

from __future__ import annotations

import psycopg
from psycopg import sql

from reconciler.db import Database


def _updates(conn: psycopg.Connection[tuple[int, int]]) -> tuple[int, int]:
    """jobs' (updates, HOT updates) so far, this session's pending counts flushed first."""
    conn.execute("SELECT pg_stat_force_next_flush()")  # flushed as that statement ends
    row = conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = to_regclass('jobs')"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_heartbeats_are_hot_updates_and_keep_the_fence(
    pg_url: str, schema: str, db: Database
) -> None:
    """200 heartbeats on 20 running jobs, each its own transaction as workers send them:
    200 row updates, most of them HOT; a wrong token still changes nothing."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}, pg_temp").format(sql.Identifier(schema)))
        conn.execute("SELECT enqueue('beat') FROM generate_series(1, 20)")
        claims = conn.execute("SELECT id, claim_token FROM claim('w1', n => 20)").fetchall()
        assert len(claims) == 20
        before = _updates(conn)
        for _ in range(10):
            for job_id, token in claims:
                beat = conn.execute("SELECT heartbeat(%s, %s)", [job_id, token]).fetchone()
                assert beat == (True,)
        wrong = conn.execute("SELECT heartbeat(%s, gen_random_uuid())", [claims[0][0]])
        assert wrong.fetchone() == (False,)
        after = _updates(conn)
    updates, hot = after[0] - before[0], after[1] - before[1]
    assert updates == 200
    # Before this schema none were (jobs_running_idx held heartbeat_at); now typically
    # 194-200 are. One misses when its page is full and the dead versions cannot be
    # pruned yet (another session's snapshot, autovacuum's), hence the margin.
    assert hot >= updates // 2, (updates, hot)
