"""The dashboard in a real headless Chromium, against a seeded queue (tests/web/browser.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from reconciler.db import Database
from reconciler.settings import Settings
from reconciler.web import create_app
from tests.helpers import events_of, insert_job, job, wait_until
from tests.profile_tables import DDL
from tests.web import browser
from tests.web.conftest import TOKEN

STATUSES = ("queued", "running", "succeeded", "failed", "stale", "dead", "cancelled")


@pytest.fixture
def driver() -> Iterator[Any]:
    yield from browser.chrome()


@pytest.fixture
def base_url(settings: Settings, db: Database) -> Iterator[str]:
    app = create_app(settings.model_copy(update={"web_token": SecretStr(TOKEN)}), db=db)
    yield from browser.serve(app)


def test_the_operator_flow_in_a_browser(
    driver: Any,
    base_url: str,
    db: Database,
    seeded: dict[str, list[int]],
    tmp_path: Path,
) -> None:
    """Tiles equal SQL counts; filter and next page; a job's history; log in, replay a dead
    job through its confirmation, and its job_events row says web:token; screenshots."""
    from selenium.webdriver.common.by import By

    shots = browser.artifacts(tmp_path)
    paging = [insert_job(db, queue="paging", kind="page.me", status="queued") for _ in range(60)]

    driver.get(base_url + "/")
    rows = db.rows(
        "SELECT status, count(*) AS n FROM jobs WHERE status NOT IN ('succeeded', 'cancelled')"
        " OR finished_at >= now() - interval '24 hours' GROUP BY 1"
    )
    counts = {r["status"]: r["n"] for r in rows}
    for status in STATUSES:
        tile = driver.find_element(By.CSS_SELECTOR, f'.tile[data-status="{status}"] .count')
        assert int(tile.text) == counts.get(status, 0), status
    driver.save_screenshot(str(shots / "overview.png"))

    driver.get(base_url + "/jobs")
    driver.find_element(By.NAME, "queue").send_keys("paging")
    driver.find_element(By.ID, "apply-filter").click()
    wait_until(lambda: "queue=paging" in driver.current_url, "the filtered page")
    first = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#jobs td.n a")]
    assert [int(i) for i in first] == sorted(paging, reverse=True)[:50]
    driver.save_screenshot(str(shots / "jobs.png"))
    driver.find_element(By.ID, "next-page").click()
    wait_until(lambda: "before=" in driver.current_url, "the next page")
    second = [int(a.text) for a in driver.find_elements(By.CSS_SELECTOR, "#jobs td.n a")]
    assert second == sorted(paging, reverse=True)[50:]

    dead_id = seeded["dead_report"][0]
    driver.get(f"{base_url}/jobs/{dead_id}")
    actors = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#events td.actor")]
    assert actors == [e["actor"] for e in events_of(db, dead_id)]
    assert browser.none_of(driver, ".act")  # not logged in: no buttons
    driver.save_screenshot(str(shots / "job.png"))

    driver.get(base_url + "/login")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "login-submit").click()
    wait_until(lambda: driver.current_url == base_url + "/", "the redirect after logging in")
    driver.get(base_url + "/dead-letter")
    driver.save_screenshot(str(shots / "dead-letter.png"))
    driver.get(f"{base_url}/jobs/{dead_id}")
    driver.find_element(By.CSS_SELECTOR, '.act[data-action="replay"]').click()
    assert driver.find_element(By.ID, "preview-count").text == "1"
    assert job(db, dead_id)["status"] == "dead"
    driver.save_screenshot(str(shots / "confirm.png"))
    driver.find_element(By.ID, "confirm").click()
    assert driver.find_element(By.ID, "done-count").text == "1"
    last = events_of(db, dead_id)[-1]
    assert (last["to_status"], last["actor"]) == ("queued", "web:token")

    driver.get(base_url + "/runs")
    assert "dead-letter replay" in driver.find_element(By.ID, "runs").text
    driver.save_screenshot(str(shots / "runs.png"))


def test_a_hostile_payload_is_text_in_the_browser(
    driver: Any, base_url: str, db: Database, tmp_path: Path
) -> None:
    """<script> and an onerror image in a payload and an error: no alert, no element."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    job_id = insert_job(db, queue="q", kind=hostile, status="dead", attempt=3)
    with db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET payload = CAST(:p AS jsonb), last_error = CAST(:e AS jsonb) "
                "WHERE id = :id"
            ),
            {"id": job_id, "p": json.dumps({"x": hostile}), "e": json.dumps({"message": hostile})},
        )
    for path in (f"/jobs/{job_id}", "/jobs", "/dead-letter"):
        driver.get(base_url + path)
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 - reading it is what raises
        assert browser.none_of(driver, "main img, main script")
    driver.get(f"{base_url}/jobs/{job_id}")
    assert "<script>alert(1)</script><img src=x" in driver.find_element(By.ID, "payload").text
    driver.save_screenshot(str(browser.artifacts(tmp_path) / "hostile.png"))


@pytest.fixture
def ai_dashboard(
    settings: Settings, db: Database, schema: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """The dashboard over native and runbook 002's ai_course_jobs (a TOML profile), served;
    its base URL and the table's dead job."""
    from tests.web.test_profiles import AI, _profile_file, _sql

    _sql(db, DDL[AI])
    _sql(
        db,
        "INSERT INTO ai_course_jobs (job_type, status, retry_count, error, completed_at)"
        " SELECT t, s, r, e, now() - interval '1 hour' FROM (VALUES"
        " ('course', 'pending', 0, NULL), ('course', 'pending', 0, NULL),"
        " ('course', 'failed', 1, 'openai: 429'), ('media', 'dead_letter', 3, 'openai: 500'),"
        " ('course', 'done', 1, NULL)) v (t, s, r, e)",
    )
    [(dead_id,)] = _sql(db, "SELECT id::text FROM ai_course_jobs WHERE status = 'dead_letter'")
    profiles = f"native,{_profile_file(tmp_path, AI, schema)}"
    app = create_app(
        settings.model_copy(update={"web_token": SecretStr(TOKEN), "profiles": profiles}), db=db
    )
    for base_url in browser.serve(app):
        yield base_url, dead_id


def test_switching_to_a_profile_in_a_browser(
    driver: Any, ai_dashboard: tuple[str, str], db: Database, tmp_path: Path
) -> None:
    """The selector switches to a TOML table's profile; its tiles equal SQL counts; the
    dead tile lists its dead job; logged in, a requeue from the job's page is confirmed
    and its ledger row says web:token; the profile stays chosen throughout."""
    from selenium.webdriver.common.by import By

    from tests.web.test_profiles import AI, _sql

    base_url, dead_id = ai_dashboard
    shots = browser.artifacts(tmp_path)
    driver.get(base_url + "/")
    driver.find_element(By.CSS_SELECTOR, f'#profiles a[data-profile="{AI}"]').click()
    wait_until(lambda: f"profile={AI}" in driver.current_url, "the profile's overview")
    counts = dict(_sql(db, "SELECT status, count(*) FROM ai_course_jobs GROUP BY 1"))
    for state, value in (("queued", "pending"), ("failed", "failed"), ("dead", "dead_letter")):
        tile = driver.find_element(By.CSS_SELECTOR, f'.tile[data-status="{state}"] .count')
        assert int(tile.text) == counts[value], state
    driver.save_screenshot(str(shots / "profile-overview.png"))
    driver.find_element(By.CSS_SELECTOR, '.tile[data-status="dead"]').click()
    wait_until(lambda: "status=dead" in driver.current_url, "the dead jobs")
    links = driver.find_elements(By.CSS_SELECTOR, "#jobs td a")
    assert [a.text for a in links] == [dead_id]

    driver.get(base_url + "/login")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "login-submit").click()
    wait_until(lambda: driver.current_url == base_url + "/", "the redirect after logging in")
    driver.get(f"{base_url}/jobs/{dead_id}?profile={AI}")
    driver.find_element(By.CSS_SELECTOR, '.act[data-action="requeue"]').click()
    assert driver.find_element(By.ID, "preview-count").text == "1"
    driver.find_element(By.ID, "confirm").click()
    assert driver.find_element(By.ID, "done-count").text == "1"
    driver.find_element(By.ID, "job-history").click()
    wait_until(lambda: f"profile={AI}" in driver.current_url, "the job's page")
    actors = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#events td.actor")]
    assert actors == ["web:token"]
    driver.save_screenshot(str(shots / "profile-job.png"))
    ledger = db.rows("SELECT job_id, to_status, actor FROM ledger")
    assert ledger == [{"job_id": dead_id, "to_status": "pending", "actor": "web:token"}]
