"""The dashboard's pages against a seeded queue: numbers equal SQL, filters, paging, history."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import text
from starlette.testclient import TestClient

from reconciler.db import Database
from reconciler.ops.listing import SEARCH_EXAMINES
from tests.helpers import insert_job
from tests.ops_data import insert_event


def _tile(html: str, status: str) -> int:
    found = re.search(rf'data-status="{status}"><span class="count">(\d+)</span>', html)
    assert found, status
    return int(found.group(1))


def test_overview_tiles_equal_sql_counts(reader: TestClient, db: Database, seeded: object) -> None:
    """Each status tile shows count(*) of that status (succeeded and cancelled: finished in
    the last 24 h); the dead-letter tile the dead jobs."""
    response = reader.get("/")
    assert response.status_code == 200
    rows = db.rows(
        "SELECT status, count(*) AS n FROM jobs WHERE status NOT IN ('succeeded', 'cancelled')"
        " OR finished_at >= now() - interval '24 hours' GROUP BY 1"
    )
    counts: dict[str, int] = {r["status"]: r["n"] for r in rows}
    assert counts  # the seed has jobs
    for status in ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled"):
        assert _tile(response.text, status) == counts.get(status, 0)
    assert 'http-equiv="refresh"' in response.text
    assert "mark-stale" in response.text  # the tasks table


def test_finished_tiles_count_the_last_24_hours_and_dead_counts_all(
    reader: TestClient, db: Database
) -> None:
    """Succeeded and cancelled jobs are the bulk of a table kept 30 days: their tiles count
    the last 24 h (index-bounded); the dead letter counts every dead job."""
    now = db.now()
    for status, age in (("succeeded", 1), ("succeeded", 48), ("cancelled", 48), ("dead", 48)):
        insert_job(db, status=status, attempt=1, finished_at=now - timedelta(hours=age))
    response = reader.get("/")
    assert _tile(response.text, "succeeded") == 1
    assert _tile(response.text, "cancelled") == 0
    assert _tile(response.text, "dead") == 1
    assert "succeeded (24 h)" in response.text


def test_every_page_has_the_security_headers(reader: TestClient, seeded: object) -> None:
    """A strict CSP without inline script or style, no framing, no sniffing."""
    for path in ("/", "/jobs", "/dead-letter", "/runs", "/static/dashboard.css"):
        response = reader.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    for path in ("/", "/jobs", "/dead-letter", "/runs"):
        assert "<script" not in reader.get(path).text
        assert "style=" not in reader.get(path).text


def test_jobs_filters(reader: TestClient, seeded: dict[str, list[int]]) -> None:
    """status, queue, kind, tenant and error text narrow the list to exactly the matches."""
    dead = seeded["dead_report"]
    page = reader.get("/jobs", params={"status": "dead"}).text
    shown = {int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', page)}
    assert shown == set(dead)
    page = reader.get("/jobs", params={"status": "dead", "tenant": "globex"}).text
    shown = {int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', page)}
    assert len(shown) == 1 and shown < set(dead)
    page = reader.get("/jobs", params={"error": "disk FULL"}).text
    shown = {int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', page)}
    assert len(shown) == 2 and shown < set(dead)
    page = reader.get("/jobs", params={"error": "%"}).text  # a literal percent: no match
    assert re.findall(r'<a href="/jobs/(\d+)">', page) == []


def test_jobs_bad_filter_is_one_clear_line(reader: TestClient) -> None:
    """A filter value the page cannot take: 400 and what to write instead."""
    response = reader.get("/jobs", params={"status": "zombie"})
    assert response.status_code == 400
    assert "status &#39;zombie&#39; is not one of queued" in response.text
    response = reader.get("/jobs", params={"age": "soon"})
    assert response.status_code == 400
    assert "write e.g. 30m" in response.text


def test_jobs_keyset_paging_walks_every_job_once(reader: TestClient, db: Database) -> None:
    """Next-page links (ids below the last shown, never OFFSET) list each job exactly once."""
    ids = [insert_job(db, queue="paging", status="queued") for _ in range(123)]
    seen: list[int] = []
    url: str | None = "/jobs?queue=paging"
    pages = 0
    while url:
        page = reader.get(url).text
        seen += [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', page)]
        found = re.search(r'<a href="([^"]+)" id="next-page">', page)
        url = found.group(1).replace("&amp;", "&") if found else None
        assert url is None or "before=" in url
        pages += 1
    assert seen == sorted(ids, reverse=True)
    assert pages == 3


def test_job_page_shows_payload_error_and_history(
    reader: TestClient, db: Database, seeded: dict[str, list[int]]
) -> None:
    """The job's page: its payload, last error and every event with who and why."""
    job_id = seeded["dead_report"][0]
    insert_event(db, job_id, "dead", "queued", db.now(), actor="cli:alice", reason={"note": "x"})
    page = reader.get(f"/jobs/{job_id}").text
    assert "disk full" in page or "bad template" in page
    assert "reconciler:dead-letter" in page
    assert "cli:alice" in page
    assert page.count("<tr>") >= 3  # header + the seed's events + ours
    assert reader.get("/jobs/999999999").status_code == 404


def test_dead_letter_groups_like_the_cli(reader: TestClient, seeded: object) -> None:
    """Grouped by error, kind and tenant, the biggest group first."""
    page = reader.get("/dead-letter").text
    rows = re.findall(r'<td class="n">(\d+)</td><td class="error">([^<]*)</td>', page)
    assert rows[0] == ("2", "disk full")
    assert ("1", "bad template") in rows


def test_runs_page_highlights_failures(reader: TestClient, db: Database) -> None:
    """A failed run is marked, with its error; per task the counts of the last 24 h."""
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO runs (task, started_at, finished_at, status, error, host, pid, actor)"
                " VALUES ('requeue', now(), now(), 'failed', 'boom <b>', 'h', 1, 'daemon'),"
                " ('requeue', now(), now(), 'ok', NULL, 'h', 1, 'daemon')"
            )
        )
    page = reader.get("/runs?task=requeue").text
    assert '<tr class="failed"><td class="n">' in page
    assert "boom &lt;b&gt;" in page
    assert re.search(r'requeue</a></td><td class="n">2</td><td class="n">1</td>', page)


def test_error_search_reads_a_window_and_pages_into_older_ones(
    reader: TestClient, db: Database
) -> None:
    """An error-text search reads the newest SEARCH_EXAMINES jobs and says so; a match older
    than that window is on a next page, which searches the window below."""
    old = insert_job(db, status="dead", attempt=3, last_error='{"message": "disk FULL on /var"}')
    with db.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, max_attempts) SELECT 'test', 3 FROM generate_series(1, :n)"
            ),
            {"n": SEARCH_EXAMINES + 5},
        )
    first = reader.get("/jobs", params={"error": "disk full"}).text
    assert re.findall(r'<a href="/jobs/(\d+)">', first) == []
    assert "searched in the newest 10,000 jobs" in first
    assert "older ones: next page" in first
    found = re.search(r'<a href="([^"]+)" id="next-page">', first)
    assert found
    second = reader.get(found.group(1).replace("&amp;", "&")).text
    assert [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', second)] == [old]
    assert "that reaches the oldest job" in second
    assert 'id="next-page"' not in second
