"""The dashboard's fixtures: an app over a seeded schema, with and without a token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from reconciler.db import Database
from reconciler.settings import Settings
from reconciler.web import create_app
from tests.ops_data import seed

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def seeded(db: Database) -> dict[str, list[int]]:
    now = db.now()
    assert isinstance(now, datetime)
    return seed(db, now)


def client_for(settings: Settings, db: Database, **overrides: object) -> TestClient:
    app = create_app(settings.model_copy(update=overrides), db=db)
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture
def reader(settings: Settings, db: Database) -> Iterator[TestClient]:
    """The dashboard with no token: read-only."""
    with client_for(settings, db) as client:
        yield client


@pytest.fixture
def operator(settings: Settings, db: Database) -> Iterator[TestClient]:
    """The dashboard with a token, logged in."""
    with client_for(settings, db, web_token=SecretStr(TOKEN)) as client:
        response = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert response.status_code == 303
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)
