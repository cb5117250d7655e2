"""The dashboard per profile: a TOML-described table (runbook 002's ai_course_jobs), a
table with hostile names, and Procrastinate's own schema, each chosen by ``?profile=``.

Every page reads through reconciler/profiles/ops.py as ``--profile`` commands do;
actions are previewed, confirmed and written to the ledger as ``web:token``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from starlette.testclient import TestClient

from reconciler.db import Database
from reconciler.settings import Settings
from tests.procrastinate_env import Pq
from tests.profile_tables import DDL, PROFILES
from tests.web.conftest import TOKEN, client_for, csrf_of

AI = "ai-course-jobs"
HOSTILE = "<script>alert('x')</script>"


def _sql(db: Database, sql: str, **binds: Any) -> list[Any]:
    with db.transaction() as conn:
        result = conn.execute(text(sql), binds)
        return list(result.all()) if result.returns_rows else []


def _raw(db: Database, sql: str) -> None:
    """A statement as it is, not read for binds (a name may hold ':x' or '%')."""
    with db.transaction() as conn:
        conn.exec_driver_sql(sql.replace("%", "%%"))


def _profile_file(tmp_path: Path, name: str, schema: str) -> Path:
    body = (PROFILES / f"{name}.toml").read_text(encoding="utf-8")
    path = tmp_path / f"{name}.toml"
    path.write_text(body.replace('schema = "public"', f'schema = "{schema}"'), encoding="utf-8")
    return path


def _logged_in(settings: Settings, db: Database, profiles: str) -> TestClient:
    client = client_for(settings, db, profiles=profiles, web_token=SecretStr(TOKEN))
    client.__enter__()
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    return client


def _tile(html: str, state: str) -> int:
    found = re.search(rf'data-status="{state}"><span class="count">(\d+)</span>', html)
    assert found, state
    return int(found.group(1))


def _job_links(html: str) -> list[str]:
    return re.findall(r'<a href="/jobs/([^"?]+)\?profile=[^"]+">', html)


def _ledger(db: Database) -> list[dict[str, Any]]:
    return db.rows("SELECT profile, job_id, from_status, to_status, actor, run_id FROM ledger")


@pytest.fixture
def ai(db: Database, schema: str, tmp_path: Path, settings: Settings) -> Iterator[Any]:
    """ai_course_jobs with a job in each state, a hostile subject; the dashboard over
    native and it, logged in."""
    _sql(db, DDL[AI])
    rows = _sql(
        db,
        "INSERT INTO ai_course_jobs (job_type, status, retry_count, error, locked_by,"
        " last_heartbeat, completed_at, subject) VALUES"
        " ('course', 'pending', 0, NULL, NULL, NULL, NULL, :hostile),"
        " ('course', 'processing', 0, NULL, 'w1', now() - interval '2 hours', NULL, 'x'),"
        " ('course', 'failed', 1, 'openai: 429', NULL, NULL, now() - interval '1 minute', 'x'),"
        " ('media', 'dead_letter', 3, :hostile, NULL, NULL, now() - interval '2 days', 'x'),"
        " ('course', 'done', 1, NULL, NULL, NULL, now() - interval '4 days', 'x')"
        " RETURNING status, id::text",
        hostile=HOSTILE,
    )
    path = _profile_file(tmp_path, AI, schema)
    client = _logged_in(settings, db, f"native,{path}")
    try:
        yield client, dict(rows)
    finally:
        client.__exit__(None, None, None)


def test_selector_lists_the_profiles_and_pages_stay_on_one(ai: Any, db: Database) -> None:
    """The native overview by default, a link per profile; a profile's overview counts its
    table per lifecycle state (as `stats --profile` does) and its links carry the profile."""
    client, _ = ai
    native = client.get("/").text
    assert 'id="profiles"' in native
    assert f'href="/?profile={AI}"' in native
    page = client.get("/", params={"profile": AI})
    assert page.status_code == 200
    counts = dict(_sql(db, "SELECT status, count(*) FROM ai_course_jobs GROUP BY 1"))
    for state, value in (("queued", "pending"), ("running", "processing"), ("dead", "dead_letter")):
        assert _tile(page.text, state) == counts[value]
    assert f'href="/jobs?status=dead&amp;profile={AI}"' in page.text
    assert "has no queue column" in page.text  # said in one line, not an error
    assert "1 running job(s) silent past the heartbeat timeout" in page.text
    assert client.get("/jobs?profile=nope").status_code == 400
    assert "profile &#39;nope&#39; is not configured" in client.get("/?profile=nope").text


def test_jobs_filters_and_keyset_pages(ai: Any, db: Database) -> None:
    """Status and kind filter the profile's table; pages walk every job once, newest first;
    a filter the table has no column for is one line, not an error page's traceback."""
    client, ids = ai
    page = client.get("/jobs", params={"profile": AI, "status": "dead"}).text
    assert _job_links(page) == [ids["dead_letter"]]
    page = client.get("/jobs", params={"profile": AI, "kind": "media"}).text
    assert _job_links(page) == [ids["dead_letter"]]
    _sql(
        db,
        "INSERT INTO ai_course_jobs (job_type, created_at)"
        " SELECT 'bulk', now() - g * interval '1 second' FROM generate_series(1, 120) g",
    )
    # Ties on created_at too: keyset on (created_at, id).
    _sql(
        db,
        "INSERT INTO ai_course_jobs (job_type, created_at) SELECT 'bulk', now() - interval"
        " '1 hour' FROM generate_series(1, 30)",
    )
    seen: list[str] = []
    url: str | None = f"/jobs?profile={AI}&kind=bulk"
    while url:
        page = client.get(url).text
        seen += _job_links(page)
        found = re.search(r'<a href="([^"]+)" id="next-page">', page)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert len(seen) == 150 and len(set(seen)) == 150
    refused = client.get("/jobs", params={"profile": AI, "queue": "q"})
    assert refused.status_code == 409
    assert "has no queue column" in refused.text and "Traceback" not in refused.text


def test_job_page_escapes_hostile_values_and_offers_what_the_table_allows(ai: Any) -> None:
    """The row, payload and error are text; requeue and replay for a dead job; no cancel
    (the table has no cancelled state), said in one line."""
    client, ids = ai
    page = client.get(f"/jobs/{ids['dead_letter']}", params={"profile": AI}).text
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(" in page
    assert 'data-action="requeue"' in page and 'data-action="replay"' in page
    pending = client.get(f"/jobs/{ids['pending']}", params={"profile": AI}).text
    assert "has no cancelled state" in pending and 'data-action="cancel"' not in pending
    missing = client.get("/jobs/00000000-0000-0000-0000-000000000000", params={"profile": AI})
    assert missing.status_code == 404


def test_requeue_previews_then_applies_to_the_ledger_as_web_token(ai: Any, db: Database) -> None:
    """A requeue of the dead job: the preview counts it and changes nothing; confirmed, the
    job is pending, the ledger has its row by web:token and the run is the profile's."""
    client, ids = ai
    job_id = ids["dead_letter"]
    csrf = csrf_of(client.get(f"/jobs/{job_id}", params={"profile": AI}).text)
    form = {"csrf": csrf, "job": job_id, "profile": AI}
    preview = client.post("/actions/requeue", data=form)
    assert preview.status_code == 200, preview.text
    assert 'id="preview-count">1<' in preview.text
    assert f'name="profile" value="{AI}"' in preview.text  # carried to the confirmation
    assert _ledger(db) == []
    done = client.post("/actions/requeue", data={**form, "confirm": "yes", "reason": "INC-9"})
    assert 'id="done-count">1<' in done.text, done.text
    status = _sql(db, "SELECT status FROM ai_course_jobs WHERE id::text = :i", i=job_id)
    assert status == [("pending",)]
    [row] = _ledger(db)
    assert (row["profile"], row["job_id"], row["from_status"], row["to_status"]) == (
        AI,
        job_id,
        "dead_letter",
        "pending",
    )
    assert row["actor"] == "web:token"
    run = db.rows("SELECT task, profile, actor FROM runs WHERE id = :i", {"i": row["run_id"]})
    assert run == [{"task": "jobs requeue", "profile": AI, "actor": "web:token"}]
    history = client.get(f"/jobs/{job_id}", params={"profile": AI}).text
    assert "web:token" in history and "INC-9" in history
    runs = client.get("/runs", params={"profile": AI}).text
    assert "jobs requeue" in runs
    assert "jobs requeue" not in client.get("/runs", params={"profile": "native"}).text


def test_dead_letter_groups_and_replays_a_kind(ai: Any, db: Database) -> None:
    """Dead jobs by error and kind; a kind's replay previews exactly its dead jobs; the
    download is the native dead letter's only, said so; pause is refused in one line."""
    client, ids = ai
    page = client.get("/dead-letter", params={"profile": AI}).text
    assert "&lt;script&gt;" in page and HOSTILE not in page
    assert "dead-letter export works on the reconciler&#39;s own jobs only" in page
    csrf = csrf_of(page)
    preview = client.post("/actions/replay", data={"csrf": csrf, "kind": "media", "profile": AI})
    assert 'id="preview-count">1<' in preview.text, preview.text
    refused = client.post("/actions/pause", data={"csrf": csrf, "queue": "x", "profile": AI})
    assert refused.status_code == 409 and "pausing works on the reconciler" in refused.text
    cancel = client.post(
        "/actions/cancel", data={"csrf": csrf, "job": ids["pending"], "profile": AI}
    )
    assert cancel.status_code == 409 and "has no cancelled state" in cancel.text


def test_reset_stuck_runs_mark_stale_for_the_job(ai: Any, db: Database) -> None:
    """reset stuck on the silent processing job: mark-stale for that id, as web:token."""
    client, ids = ai
    job_id = ids["processing"]
    csrf = csrf_of(client.get(f"/jobs/{job_id}", params={"profile": AI}).text)
    form = {"csrf": csrf, "job": job_id, "profile": AI, "confirm": "yes"}
    done = client.post("/actions/reset-stuck", data=form)
    assert 'id="done-count">1<' in done.text, done.text
    assert _sql(db, "SELECT status FROM ai_course_jobs WHERE id::text = :i", i=job_id) == [
        ("stale",)
    ]
    assert [(r["to_status"], r["actor"]) for r in _ledger(db)] == [("stale", "web:token")]


def test_hostile_table_and_column_names_are_quoted_and_escaped(
    settings: Settings, db: Database, schema: str, tmp_path: Path
) -> None:
    """A table and columns named with quotes, spaces, a colon and a percent sign: every
    page reads it, names and values shown as text."""
    _raw(
        db,
        'CREATE TABLE "Odd ""Jobs"": %x" ("Job Id" bigint PRIMARY KEY, "St:atus" text,'
        ' "Beat \'n\' :x" timestamptz, "Tries%" integer NOT NULL DEFAULT 0)',
    )
    _raw(
        db,
        'INSERT INTO "Odd ""Jobs"": %x" VALUES (1, \'Run :x\', now() - interval \'1 day\', 0),'
        " (2, '<b>odd</b>', NULL, 0), (3, 'it''s queued', NULL, 0)",
    )
    path = tmp_path / "odd.toml"
    path.write_text(
        f'name = "odd"\ntable = \'Odd "Jobs": %x\'\nschema = "{schema}"\n'
        '[columns]\nid = "Job Id"\nstatus = "St:atus"\nheartbeat = "Beat \'n\' :x"\n'
        'attempts = "Tries%"\n'
        '[states]\nqueued = "it\'s queued"\nrunning = "Run :x"\n[retry]\nmax_attempts = 3\n',
        encoding="utf-8",
    )
    client = _logged_in(settings, db, str(path))
    try:
        overview = client.get("/")  # the only profile: chosen without asking
        assert overview.status_code == 200, overview.text
        assert "Odd &#34;Jobs&#34;: %x" in overview.text
        assert "&lt;b&gt;odd&lt;/b&gt;" in overview.text and "<b>odd" not in overview.text
        jobs = client.get("/jobs", params={"profile": "odd", "status": "queued"}).text
        assert _job_links(jobs) == ["3"]
        assert client.get("/jobs/1", params={"profile": "odd"}).status_code == 200
        assert "no dead state" in client.get("/dead-letter", params={"profile": "odd"}).text
    finally:
        client.__exit__(None, None, None)


@pytest.fixture
def pq_client(settings: Settings, db: Database, pq: Pq) -> Iterator[TestClient]:
    client = _logged_in(settings, db, f"native,procrastinate:{pq.schema}")
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def test_procrastinate_pages_and_reset_stuck(
    pq_client: TestClient, pq: Pq, db: Database, settings: Settings
) -> None:
    """Procrastinate's schema: tiles per state (todo is queued), its jobs and their pages,
    its failed jobs as the dead letter; what Procrastinate does itself is said, not
    offered; reset stuck retries a dead worker's job through Procrastinate, as web:token."""
    queued = pq.defer()
    doing = pq.defer()
    failed = pq.defer(task="crunch")
    gone = pq.sql(
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - %s) RETURNING id",
        (settings.heartbeat_timeout + timedelta(minutes=1),),
    )[0][0]
    pq.sql(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
        (gone, doing),
    )
    pq.sql("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s", (failed,))
    choose = {"profile": "procrastinate"}
    overview = pq_client.get("/", params=choose).text
    assert (_tile(overview, "queued"), _tile(overview, "running"), _tile(overview, "dead")) == (
        1,
        1,
        1,
    )
    assert "Procrastinate&#39;s workers do not read" in overview
    jobs = pq_client.get("/jobs", params={**choose, "status": "queued"}).text
    assert _job_links(jobs) == [str(queued)]
    dead = pq_client.get("/dead-letter", params=choose).text
    assert "crunch" in dead and "replay: Procrastinate" in dead
    page = pq_client.get(f"/jobs/{doing}", params=choose).text
    assert 'data-action="requeue"' not in page and "Procrastinate retries" in page
    csrf = csrf_of(page)
    refused = pq_client.post("/actions/requeue", data={"csrf": csrf, "job": str(failed), **choose})
    assert refused.status_code == 409 and "Procrastinate retries its jobs itself" in refused.text
    form = {"csrf": csrf, "job": str(doing), **choose}
    assert 'id="preview-count">1<' in pq_client.post("/actions/reset-stuck", data=form).text
    assert pq.status(doing)[0] == "doing"
    done = pq_client.post("/actions/reset-stuck", data={**form, "confirm": "yes"})
    assert 'id="done-count">1<' in done.text, done.text
    assert pq.status(doing)[0] == "todo"
    assert [(r["profile"], r["job_id"], r["actor"]) for r in _ledger(db)] == [
        ("procrastinate", str(doing), "web:token")
    ]
    history = pq_client.get(f"/jobs/{doing}", params=choose).text
    assert "web:token" in history and "doing" in history
    runs = pq_client.get("/runs", params=choose).text
    assert re.search(r"<td>mark-stale</td>.*<td>web:token</td>", runs, re.S)
    assert "mark-stale" not in pq_client.get("/runs", params={"profile": "native"}).text


def test_procrastinate_jobs_page_by_id_newest_first(pq_client: TestClient, pq: Pq) -> None:
    """Procrastinate's jobs have no created_at column in the profile: pages by id, newest
    first, each job once."""
    deferred = [pq.defer() for _ in range(60)]
    seen: list[str] = []
    url: str | None = "/jobs?profile=procrastinate"
    while url:
        page = pq_client.get(url).text
        seen += _job_links(page)
        found = re.search(r'<a href="([^"]+)" id="next-page">', page)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == [str(i) for i in sorted(deferred, reverse=True)]
