"""The dashboard as the least-privilege read-only role of sql/roles.sql."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
