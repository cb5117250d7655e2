"""The dashboard's actions: token and CSRF required, preview first, the CLI's code path."""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr
from starlette.testclient import TestClient

from reconciler.db import Database
from reconciler.settings import Settings
from tests.helpers import events_of, job
from tests.web.conftest import TOKEN, client_for, csrf_of


def _runs(db: Database) -> list[dict[str, Any]]:
    return db.rows("SELECT task, actor, status, transitions FROM runs ORDER BY id")


def test_replay_previews_then_applies_with_the_web_actor(
    operator: TestClient, db: Database, seeded: dict[str, list[int]]
) -> None:
    """A replay shows the preview's count and changes nothing; the confirmed POST requeues
    the job as dead-letter replay does: a runs row and a job_events row by web:token."""
    job_id = seeded["dead_report"][0]
    csrf = csrf_of(operator.get(f"/jobs/{job_id}").text)
    preview = operator.post("/actions/replay", data={"csrf": csrf, "job": str(job_id)})
    assert preview.status_code == 200
    assert 'id="preview-count">1<' in preview.text
    assert job(db, job_id)["status"] == "dead"
    assert [r for r in _runs(db) if r["actor"].startswith("web:")] == []
    done = operator.post(
        "/actions/replay",
        data={"csrf": csrf, "job": str(job_id), "confirm": "yes", "reason": "fixed in 1.2"},
    )
    assert done.status_code == 200, done.text
    assert 'id="done-count">1<' in done.text
    assert job(db, job_id)["status"] == "queued"
    last = events_of(db, job_id)[-1]
    moved = (last["from_status"], last["to_status"], last["actor"])
    assert moved == ("dead", "queued", "web:token")
    assert last["run_id"] is not None
    assert _runs(db)[-1] | {"transitions": None} == {
        "task": "dead-letter replay",
        "actor": "web:token",
        "status": "ok",
        "transitions": None,
    }


def test_group_replay_counts_every_dead_job_of_the_kind(
    operator: TestClient, seeded: dict[str, list[int]]
) -> None:
    """Replaying a group (kind and tenant) previews exactly that group's dead jobs."""
    csrf = csrf_of(operator.get("/dead-letter").text)
    preview = operator.post(
        "/actions/replay", data={"csrf": csrf, "kind": "report.export", "tenant": "acme"}
    )
    assert 'id="preview-count">2<' in preview.text


def test_cancel_and_reset_stuck_go_the_cli_way(
    operator: TestClient, db: Database, seeded: dict[str, list[int]]
) -> None:
    """cancel runs `jobs cancel`; reset-stuck runs mark-stale with the job's id."""
    csrf = csrf_of(operator.get("/").text)
    queued = seeded["queued_email"][0]
    operator.post("/actions/cancel", data={"csrf": csrf, "job": str(queued), "confirm": "yes"})
    assert job(db, queued)["status"] == "cancelled"
    stuck = seeded["stuck"][0]
    operator.post("/actions/reset-stuck", data={"csrf": csrf, "job": str(stuck), "confirm": "yes"})
    assert job(db, stuck)["status"] == "stale"
    assert [(r["task"], r["actor"]) for r in _runs(db)][-2:] == [
        ("jobs cancel", "web:token"),
        ("mark-stale", "web:token"),
    ]


def test_an_action_the_cli_would_refuse_is_refused(
    operator: TestClient, seeded: dict[str, list[int]]
) -> None:
    """Replaying a job that is not dead: the CLI's own refusal, one line, 409."""
    csrf = csrf_of(operator.get("/").text)
    queued = seeded["queued_email"][0]
    response = operator.post("/actions/replay", data={"csrf": csrf, "job": str(queued)})
    assert response.status_code == 409
    assert f"job {queued} is queued" in response.text


def test_without_the_token_actions_are_refused(
    reader: TestClient, settings: Settings, db: Database, seeded: dict[str, list[int]]
) -> None:
    """Read-only (no token) or not logged in: 403, and nothing changes."""
    job_id = seeded["dead_report"][0]
    form = {"job": str(job_id), "confirm": "yes", "csrf": "0" * 64}
    response = reader.post("/actions/replay", data=form)
    assert response.status_code == 403
    assert "read-only" in response.text
    with client_for(settings, db, web_token=SecretStr(TOKEN)) as stranger:
        response = stranger.post("/actions/replay", data=form)
        assert response.status_code == 403
        assert stranger.post("/login", data={"token": "guess"}).status_code == 403
    assert job(db, job_id)["status"] == "dead"


def test_csrf_token_missing_or_wrong_is_refused(
    operator: TestClient, db: Database, seeded: dict[str, list[int]]
) -> None:
    """A logged-in POST without the page's CSRF token changes nothing."""
    job_id = seeded["dead_report"][0]
    for form in ({}, {"csrf": ""}, {"csrf": "f" * 64}):
        response = operator.post(
            "/actions/replay", data={"job": str(job_id), "confirm": "yes", **form}
        )
        assert response.status_code == 403
        assert "CSRF" in response.text
    assert job(db, job_id)["status"] == "dead"


def test_get_cannot_change_state(operator: TestClient, db: Database, seeded: object) -> None:
    """Actions answer GET with 405; no page writes."""
    for name in ("replay", "requeue", "cancel", "reset-stuck"):
        assert operator.get(f"/actions/{name}").status_code == 405
    assert operator.get("/dead-letter/export").status_code in (404, 405)
    assert db.rows("SELECT id FROM runs") == []


def test_proxy_header_names_the_actor(
    settings: Settings, db: Database, seeded: dict[str, list[int]]
) -> None:
    """Behind an authenticating proxy, its header names the user: actor web:<user>."""
    job_id = seeded["dead_report"][0]
    with client_for(settings, db, web_user_header="X-Forwarded-User") as client:
        headers = {"X-Forwarded-User": "alice"}
        csrf = csrf_of(client.get(f"/jobs/{job_id}", headers=headers).text)
        client.post(
            "/actions/replay",
            data={"csrf": csrf, "job": str(job_id), "confirm": "yes"},
            headers=headers,
        )
        # Another user's CSRF token is not alice's.
        other = client.post(
            "/actions/replay", data={"csrf": csrf, "job": "1"}, headers={"X-Forwarded-User": "bob"}
        )
        assert other.status_code == 403
    assert events_of(db, job_id)[-1]["actor"] == "web:alice"


def test_export_downloads_dead_jobs_as_json_lines(
    operator: TestClient, seeded: dict[str, list[int]], db: Database
) -> None:
    """The export button: every dead job with its history, one JSON line each, recorded."""
    csrf = csrf_of(operator.get("/dead-letter").text)
    response = operator.post("/dead-letter/export", data={"csrf": csrf})
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(seeded["dead_report"])
    assert db.rows("SELECT actor, durable FROM ops_exports") == [
        {"actor": "web:token", "durable": False}
    ]


def test_pause_and_resume_a_queue(
    operator: TestClient, db: Database, seeded: dict[str, list[int]]
) -> None:
    """Pause previews one queue, then pauses it as web:token; resume lifts it."""
    csrf = csrf_of(operator.get("/").text)
    assert 'data-action="pause"' in operator.get("/").text
    preview = operator.post("/actions/pause", data={"csrf": csrf, "queue": "email"})
    assert 'id="preview-count">1<' in preview.text
    assert db.rows("SELECT queue FROM paused_queues") == []
    operator.post("/actions/pause", data={"csrf": csrf, "queue": "email", "confirm": "yes"})
    assert db.rows("SELECT queue, paused_by FROM paused_queues") == [
        {"queue": "email", "paused_by": "web:token"}
    ]
    assert 'data-action="resume"' in operator.get("/").text
    operator.post("/actions/resume", data={"csrf": csrf, "queue": "email", "confirm": "yes"})
    assert db.rows("SELECT queue FROM paused_queues") == []
    typo = operator.post("/actions/pause", data={"csrf": csrf, "queue": "emial"})
    assert typo.status_code == 409
    assert "has no jobs (a typo?)" in typo.text
