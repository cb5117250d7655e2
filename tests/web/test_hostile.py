"""Whatever a worker or a producer wrote is shown as text: never markup, never script."""

from __future__ import annotations

import json

from sqlalchemy import text
from starlette.testclient import TestClient

from reconciler.db import Database
from tests.helpers import insert_job

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "' onmouseover='alert(3)",
    "\u202eevil\u0001\u007f\\u0000",  # a right-to-left override, control characters, an escape
]


def _hostile_job(db: Database) -> int:
    big = "A" * 100_000
    payload = {"html": HOSTILE, "big": big, "<key>": "&amp;"}
    job_id = insert_job(
        db,
        queue="<b>queue</b>",
        kind="k\"'<>",
        tenant_id="<i>t</i>",
        status="dead",
        finished_at=db.now(),
        attempt=3,
    )
    # As a worker writes them: through SQL, the error with bytes that were not UTF-8
    # (decoded with replacement) and every hostile string.
    with db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET payload = CAST(:p AS jsonb), last_error = CAST(:e AS jsonb)"
                " WHERE id = :id"
            ),
            {
                "id": job_id,
                "p": json.dumps(payload),
                "e": json.dumps(
                    {"message": b"bad \xff\xfe bytes <script>x</script>".decode(errors="replace")}
                ),
            },
        )
    return job_id


def _no_markup_from_data(html: str) -> None:
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>queue" not in html
    assert "<i>t</i>" not in html
    assert "onmouseover='" not in html


def test_hostile_job_page_is_text(reader: TestClient, db: Database) -> None:
    """The job's page escapes payload, error, queue, kind and tenant; the 100 kB string
    is there whole."""
    job_id = _hostile_job(db)
    response = reader.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    html = response.text
    _no_markup_from_data(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;queue&lt;/b&gt;" in html
    assert "A" * 100_000 in html
    assert "\ufffd\ufffd bytes &lt;script&gt;" in html


def test_hostile_strings_in_lists_are_text(reader: TestClient, db: Database) -> None:
    """The jobs list, the dead letter and the overview escape them too."""
    _hostile_job(db)
    for path in ("/jobs", "/dead-letter", "/", "/jobs?queue=<b>queue</b>"):
        response = reader.get(path)
        assert response.status_code == 200, path
        _no_markup_from_data(response.text)
    page = reader.get("/jobs", params={"kind": "k\"'<>"}).text
    assert "k&#34;&#39;&lt;&gt;" in page
