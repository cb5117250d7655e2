"""The dashboard as the least-privilege read-only role of sql/roles.sql."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr
from sqlalchemy import make_url

from reconciler.db import Database
from reconciler.roles import render
from reconciler.settings import Settings
from tests.conftest import connect
from tests.helpers import job
from tests.profile_tables import DDL
from tests.web.conftest import TOKEN, client_for, csrf_of


@pytest.fixture
def readonly_url(db: Database, pg_url: str) -> Iterator[str]:
    """A login URL of this schema's read-only role (the four roles made, dropped after)."""
    tag = uuid.uuid4().hex[:8]
    names = {r: f"web_{r[0]}_{tag}" for r in ("owner", "daemon", "worker", "readonly")}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(render(db.schema, **names))
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(names["readonly"])))
    yield make_url(pg_url).set(username=names["readonly"]).render_as_string(hide_password=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_pages_work_and_actions_say_why_not(
    settings: Settings, db: Database, readonly_url: str, seeded: dict[str, list[int]]
) -> None:
    """Every page reads; a confirmed action is refused with one line naming the reason."""
    readonly = connect(readonly_url, db.schema, settings)
    try:
        with client_for(settings, readonly, web_token=SecretStr(TOKEN)) as client:
            for path in ("/", "/jobs", "/dead-letter", "/runs", f"/jobs/{seeded['stuck'][0]}"):
                assert client.get(path).status_code == 200, path
            client.post("/login", data={"token": TOKEN})
            csrf = csrf_of(client.get("/").text)
            job_id = seeded["dead_report"][0]
            response = client.post(
                "/actions/replay", data={"csrf": csrf, "job": str(job_id), "confirm": "yes"}
            )
            assert response.status_code == 403, response.text[-600:]
            assert "actions are unavailable" in response.text
            assert "may only read" in response.text
    finally:
        readonly.dispose()
    assert job(db, job_id)["status"] == "dead"


def test_a_profiles_table_as_the_read_only_role(
    settings: Settings,
    db: Database,
    readonly_url: str,
    pg_url: str,
    schema: str,
    tmp_path: Path,
) -> None:
    """A profile's table the read-only role was not granted: one line saying so; once
    granted SELECT, its pages read and an action says the role may not update it."""
    from tests.web.test_profiles import AI, _profile_file, _sql

    _sql(db, DDL[AI])
    [(dead_id,)] = _sql(
        db, "INSERT INTO ai_course_jobs (status) VALUES ('dead_letter') RETURNING id::text"
    )
    profiles = f"native,{_profile_file(tmp_path, AI, schema)}"
    readonly = connect(readonly_url, db.schema, settings)
    role = make_url(readonly_url).username
    assert role is not None
    try:
        with client_for(
            settings, readonly, web_token=SecretStr(TOKEN), profiles=profiles
        ) as client:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("REVOKE ALL ON {}.ai_course_jobs FROM {}").format(
                        sql.Identifier(schema), sql.Identifier(role)
                    )
                )
            denied = client.get("/", params={"profile": AI})
            # The catalog shows the role none of its columns: the profile's own check says so.
            assert denied.status_code == 409
            assert "does not exist (or this role cannot see it)" in denied.text
            assert "Traceback" not in denied.text
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("GRANT SELECT ON {}.ai_course_jobs TO {}").format(
                        sql.Identifier(schema), sql.Identifier(role)
                    )
                )
            for path in ("/", "/jobs", "/dead-letter", "/runs", f"/jobs/{dead_id}"):
                assert client.get(path, params={"profile": AI}).status_code == 200, path
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("REVOKE SELECT ON {}.ledger FROM {}").format(
                        sql.Identifier(schema), sql.Identifier(role)
                    )
                )
            # A read the database refuses mid-page: one line, not a traceback.
            history = client.get(f"/jobs/{dead_id}", params={"profile": AI})
            assert history.status_code == 403
            assert "may not read this: permission denied for table ledger" in history.text
            client.post("/login", data={"token": TOKEN})
            csrf = csrf_of(client.get("/").text)
            response = client.post(
                "/actions/requeue",
                data={"csrf": csrf, "job": dead_id, "profile": AI, "confirm": "yes"},
            )
            assert response.status_code == 403, response.text[-600:]
            assert "may not update" in response.text
    finally:
        readonly.dispose()
