"""Log lines: JSON off a terminal, and no secret on any line, whatever path it takes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from reconciler.logs import configure_logging, get_logger

PASSWORD = "Hunter2-Sup3rSecret"
DSN = "https://0f1e2d3c4b5a69788796a5b4c3d2e1f0@o1.ingest.example.invalid/42"


@pytest.fixture
def buffer() -> Iterator[io.StringIO]:
    loggers = [logging.getLogger(n) for n in ("", "sqlalchemy", "apscheduler", "sentry_sdk")]
    saved = [(lg, lg.handlers[:], lg.level, lg.filters[:]) for lg in loggers]
    scheduler = logging.getLogger("apscheduler.scheduler")
    saved.append((scheduler, scheduler.handlers[:], scheduler.level, scheduler.filters[:]))
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream, secrets=[PASSWORD, DSN, DSN[8:40]])
    try:
        yield stream
    finally:
        for lg, handlers, level, filters in saved:
            lg.handlers[:], lg.filters[:] = handlers, filters
            lg.setLevel(level)


def test_secrets_are_masked_in_events_stdlib_records_and_tracebacks(buffer: io.StringIO) -> None:
    """Known secret values, URL passwords and secret-named keys never reach the output."""
    log = get_logger("test")
    log.info("connecting", url=f"postgresql://app:{PASSWORD}@db/queue", dsn=DSN)
    log.info("other", note=f"password is {PASSWORD}", nested={"list": [DSN]})
    logging.getLogger("sqlalchemy.engine").warning("url postgresql://u:pw-in-url@h/db")
    try:
        raise RuntimeError(f"cannot connect with {PASSWORD}")
    except RuntimeError:
        log.exception("failed")

    output = buffer.getvalue()
    assert PASSWORD not in output
    assert "0f1e2d3c4b5a69788796a5b4c3d2e1f0" not in output
    assert "pw-in-url" not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0]["url"] == "postgresql://app:***@db/queue"
    assert lines[2]["event"] == "url postgresql://u:***@h/db"
    assert "RuntimeError: cannot connect with ***" in lines[3]["exception"]


def test_masking_holds_on_every_line_not_only_the_first(buffer: io.StringIO) -> None:
    """The key check is cached and the URL pattern runs only on values with "://" and "@":
    neither may let a second line, another spelling or a value with two secrets through."""
    log = get_logger("test")
    for _ in range(3):
        log.info("again", API_Token="t0k3n-value", db_password="pw-value", queue="default")
        log.info("two", note=f"{PASSWORD} and {PASSWORD}", url=f"x://u:{PASSWORD}@h")
        log.info("plain", note="user@example.com wrote to a://b", count=3)

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    for again, two, plain in zip(lines[0::3], lines[1::3], lines[2::3], strict=True):
        assert again["API_Token"] == again["db_password"] == "***"
        assert again["queue"] == "default"
        assert two["note"] == "*** and ***"
        assert two["url"] == "x://u:***@h"
        assert plain["note"] == "user@example.com wrote to a://b"
        assert plain["count"] == 3


def test_apscheduler_busy_warnings_are_dropped(buffer: io.StringIO) -> None:
    """A run still going at the next tick is by design with max_instances=1: no warning."""
    scheduler = logging.getLogger("apscheduler.scheduler")
    scheduler.warning(
        'Execution of job "%s" skipped: maximum number of running instances reached (%d)', "x", 1
    )
    scheduler.warning("something else")
    assert [json.loads(line)["event"] for line in buffer.getvalue().splitlines()] == [
        "something else"
    ]
