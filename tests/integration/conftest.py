"""Fixtures of the integration tests: the CLI in-process, a seeded queue, log lines in a
buffer, and Sentry recording instead of sending."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sentry_sdk
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from reconciler.db import Database
from reconciler.logs import configure_logging
from reconciler.sentry import init_sentry
from reconciler.settings import Settings
from tests.ops_data import CliRun, seed


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_url: str,
    schema: str,
    db: Database,
) -> CliRun:
    """``reconciler ...`` run in-process against the test's migrated schema."""
    return CliRun(monkeypatch, capsys, pg_url, schema)


@pytest.fixture
def ids(db: Database, db_now: datetime) -> dict[str, list[int]]:
    """The seeded queue of tests/ops_data.py: job ids by the role they play."""
    return seed(db, db_now)


DSN = "https://0f1e2d3c4b5a69788796a5b4c3d2e1f0@o1.ingest.example.invalid/42"


class Recorder(Transport):
    """A Sentry transport that keeps every envelope instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def items(self, kind: str) -> list[dict[str, Any]]:
        return [
            item.payload.json
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == kind and item.payload.json is not None
        ]


@pytest.fixture
def sentry(settings: Settings) -> Iterator[Recorder]:
    recorder = Recorder()
    with_dsn = settings.model_copy(update={"sentry_dsn": SecretStr(DSN)})
    assert init_sentry(with_dsn, transport=recorder)
    try:
        yield recorder
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Logging into a buffer, as JSON at debug level; the test runner's handlers restored."""
    names = ("", "sqlalchemy", "sqlalchemy.engine", "apscheduler", "sentry_sdk")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg, lg.handlers[:], lg.level) for lg in loggers]
    buffer = io.StringIO()
    configure_logging("json", "debug", stream=buffer)
    try:
        yield buffer
    finally:
        for lg, handlers, level in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)


def events(buffer: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == name]
