"""Log lines: JSON off a terminal, and no secret on any line, whatever path it takes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from reconciler.logs import configure_logging, get_logger, log_many
from tests.helpers import only_the_daemons_log_handler

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


@contextlib.contextmanager
def _configured(fmt: str, stream: io.StringIO) -> Iterator[None]:
    """configure_logging on ``stream`` for one block (it replaces the root's handlers,
    pytest's included, as the daemon's start does), the test runner's set-up restored."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(fmt, "info", stream=stream)
    try:
        yield
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def _without_time(line: str) -> dict[str, object]:
    fields: dict[str, object] = json.loads(line)
    fields.pop("timestamp")
    return fields


def test_log_many_writes_each_line_as_the_logger_would(buffer: io.StringIO) -> None:
    """Same fields, same order, same masking: one line per item, in the items' order."""
    item = {"job_id": 7, "error": f"auth failed for postgresql://app:{PASSWORD}@db/q", "x": None}
    with only_the_daemons_log_handler():
        get_logger("reconciler.signals").warning("job.dead_lettered", **item, api_token="t0k3n")
        log_many(
            "reconciler.signals",
            "warning",
            "job.dead_lettered",
            [{**item, "api_token": "t0k3n"}, {"job_id": 8}, {"job_id": 9}],
        )
    one, *many = buffer.getvalue().splitlines()
    assert PASSWORD not in buffer.getvalue() and "t0k3n" not in buffer.getvalue()
    assert list(json.loads(one)) == list(json.loads(many[0]))  # the keys' order too
    assert _without_time(one) == _without_time(many[0])
    assert [json.loads(line)["job_id"] for line in many] == [7, 8, 9]
    assert {json.loads(line)["level"] for line in many} == {"warning"}


def test_log_many_on_a_console_matches_the_logger_too() -> None:
    stream = io.StringIO()
    with _configured("console", stream):
        get_logger("reconciler.signals").warning("job.dead_lettered", job_id=7)
        log_many("reconciler.signals", "warning", "job.dead_lettered", [{"job_id": 7}])
    one, two = stream.getvalue().splitlines()
    assert one.split(" ", 1)[1] == two.split(" ", 1)[1]  # all but the timestamp


def test_log_many_honours_the_level(buffer: io.StringIO) -> None:
    logging.getLogger("reconciler.signals").setLevel(logging.ERROR)
    try:
        log_many("reconciler.signals", "warning", "job.dead_lettered", [{"job_id": 1}])
    finally:
        logging.getLogger("reconciler.signals").setLevel(logging.NOTSET)
    assert buffer.getvalue() == ""


def test_log_many_goes_the_ordinary_way_where_logging_was_changed(buffer: io.StringIO) -> None:
    """A handler or filter added after configure_logging sees every line, exactly once."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("reconciler.signals")
    logger.addHandler(keep := Keep())
    try:
        log_many("reconciler.signals", "warning", "job.dead_lettered", [{"job_id": 1}, {"n": 2}])
    finally:
        logger.removeHandler(keep)
    assert len(seen) == 2
    assert [json.loads(line)["event"] for line in buffer.getvalue().splitlines()] == [
        "job.dead_lettered",
        "job.dead_lettered",
    ]


def test_log_many_lines_never_interleave_with_other_threads(buffer: io.StringIO) -> None:
    """A batch's lines go out in one write under the handler's lock: lines logged by
    other threads meanwhile come before or after them, never inside one."""
    stop = threading.Event()

    def chatter() -> None:
        log = get_logger("reconciler.other")
        while not stop.is_set():
            log.info("tick", note="x" * 200)

    threads = [threading.Thread(target=chatter) for _ in range(2)]
    try:
        with only_the_daemons_log_handler():
            for thread in threads:
                thread.start()
            for batch in range(20):
                log_many(
                    "reconciler.signals",
                    "warning",
                    "job.dead_lettered",
                    ({"job_id": batch * 1000 + n} for n in range(1000)),
                )
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert any(line["event"] == "tick" for line in lines)
    jobs = [line["job_id"] for line in lines if line["event"] == "job.dead_lettered"]
    assert jobs == list(range(20_000))
    for batch in range(20):  # each batch's 1,000 lines are contiguous
        first = next(i for i, line in enumerate(lines) if line.get("job_id") == batch * 1000)
        assert [line.get("job_id") for line in lines[first : first + 1000]] == list(
            range(batch * 1000, batch * 1000 + 1000)
        )


def test_log_many_never_fails_its_caller_on_a_broken_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stderr that cannot be written (closed, full) is reported as any handler reports
    it, and the task whose batch has committed carries on."""

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    with _configured("json", Broken()):
        log_many("reconciler.signals", "warning", "job.dead_lettered", [{"job_id": 1}])
    assert "No space left on device" in capsys.readouterr().err


def test_log_many_raises_what_its_items_raise(buffer: io.StringIO) -> None:
    """A mistake in the caller's items (a row without the column) fails the caller, as the
    arguments of a logger call would, on either way; nothing is written for the batch."""

    def items() -> Iterator[dict[str, object]]:
        yield {"job_id": 1}
        raise AttributeError("row has no attribute tenant_id")

    with only_the_daemons_log_handler(), pytest.raises(AttributeError, match="tenant_id"):
        log_many("reconciler.signals", "warning", "job.dead_lettered", items())
    assert buffer.getvalue() == ""
