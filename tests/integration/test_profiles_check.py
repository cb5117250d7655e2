"""``profiles check``: each shipped profile against a table created from it.

Without indexes it names every statement that would read the whole table and
the exact CREATE INDEX CONCURRENTLY to add; with those added, every statement
is index-served. The reconciler itself never runs DDL on such a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.db import Database
from tests.ops_data import CliRun
from tests.procrastinate_env import Pq
from tests.profile_tables import DDL, PROFILES


def _profile(tmp_path: Path, name: str, schema: str) -> Path:
    path = tmp_path / f"{name}.toml"
    body = (PROFILES / f"{name}.toml").read_text(encoding="utf-8")
    path.write_text(body.replace('schema = "public"', f'schema = "{schema}"'), encoding="utf-8")
    return path


def _check(cli: CliRun) -> tuple[int, dict[str, Any]]:
    code, out, err = cli("profiles", "check", "--json")
    assert code in (0, 1), err
    return code, json.loads(out)


@pytest.mark.parametrize("name", ["ai-course-jobs", "ai-media-jobs", "jobforge", "game-platform"])
def test_the_advised_indexes_serve_every_statement(
    cli: CliRun, db: Database, pg_url: str, schema: str, tmp_path: Path, name: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path = "{schema}"')
        conn.execute(DDL[name])
    cli.setenv("RECONCILER_PROFILES", str(_profile(tmp_path, name, schema)))
    code, report = _check(cli)
    assert code == 1
    [profile] = report["profiles"]
    advice = [s["create_index"] for s in profile["statements"] if not s["index_served"]]
    assert advice and all(a.startswith("CREATE INDEX CONCURRENTLY ON ") for a in advice)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in advice:
            conn.execute(statement)
    code, report = _check(cli)
    assert code == 0, report
    [profile] = report["profiles"]
    assert all(s["index_served"] for s in profile["statements"]), profile


def test_procrastinate_needs_one_index_for_purge(
    cli: CliRun, db: Database, pg_url: str, pq: Pq
) -> None:
    cli.setenv("RECONCILER_PROFILES", f"procrastinate:{pq.schema}")
    code, report = _check(cli)
    [profile] = report["profiles"]
    served = {s["task"]: s["index_served"] for s in profile["statements"]}
    assert served["mark-stale"] is True  # Procrastinate's own partial index on todo/doing
    assert served["purge"] is False and code == 1
    [advice] = [s["create_index"] for s in profile["statements"] if not s["index_served"]]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(advice)
    assert _check(cli)[0] == 0


def test_the_listing_and_the_check_read_as_text(
    cli: CliRun, db: Database, pg_url: str, schema: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path = "{schema}"')
        conn.execute(DDL["jobforge"])
    cli.setenv("RECONCILER_PROFILES", f"native,{_profile(tmp_path, 'jobforge', schema)}")
    code, out, err = cli("profiles")
    assert code == 0, err
    assert out.splitlines()[1].split()[:3] == ["jobforge", "table", f"{schema}.jobforge_jobs"]
    code, out, err = cli("profiles", "check", "jobforge")
    assert code == 1, err
    assert f"jobforge: {schema}.jobforge_jobs matches the profile" in out
    assert "mark-stale   NO INDEX: reads all of jobforge_jobs; add:" in out
    assert f'CREATE INDEX CONCURRENTLY ON "{schema}"."jobforge_jobs"' in out
