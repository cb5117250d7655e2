"""New jobs as an operator gives them: checked field by field before anything is written.

``reconciler enqueue`` takes one job from arguments or many from JSON lines; each is
checked here as enqueue() would check it, and more strictly where JSON and Python
allow what PostgreSQL does not (NaN, Infinity, NUL, strings that are not UTF-8), so
that a bad line is one line naming it, not a failed transaction halfway through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.ops.confirm import OpsError
from reconciler.ops.vocabulary import PRIORITIES

__all__ = ["FIELDS", "NewJob", "loads", "new_job", "parse_lines"]

FIELDS = (
    "kind",
    "payload",
    "queue",
    "priority",
    "run_at",
    "max_attempts",
    "idempotency_key",
    "tenant_id",
)


@dataclass(frozen=True)
class NewJob:
    """One job to enqueue; None leaves the argument to enqueue()'s default."""

    kind: str
    payload: Any = None
    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    tenant_id: str | None = None


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character, which PostgreSQL text cannot hold")
    _unicode(value, name)
    return value


def _unicode(value: str, name: str) -> None:
    """Refuse a string that is not valid Unicode (bytes that were not UTF-8, lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} is not valid UTF-8 (at character {exc.start + 1}); fix its encoding"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; write a finite number, or null")


def loads(text: str) -> Any:
    """JSON as PostgreSQL's jsonb takes it: no NaN or Infinity (Python's json allows them)."""
    return json.loads(text, parse_constant=_no_constant)


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in PRIORITIES:
        return PRIORITIES.index(value.lower())
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4:
        return value
    raise ValueError(f"priority {value!r} must be 0..4 or one of {', '.join(PRIORITIES)}")


def _max_attempts(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
        return value
    raise ValueError(f"max_attempts {value!r} must be a whole number from 1 to 1000")


def _moment(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"run_at must be a time like 2026-12-03T02:00Z, not {value!r}")
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"run_at {value!r} is not a time; write it like 2026-12-03T02:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"run_at {value!r} has no time zone; add one, e.g. {value}Z")
    return moment


def new_job(fields: Mapping[str, Any]) -> NewJob:
    """A job from its fields as given; ValueError says what is wrong with them."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    kind = _text(fields.get("kind"), "kind")
    if not kind:
        raise ValueError('kind is missing; every job needs one, e.g. "kind": "report.build"')
    payload = fields.get("payload")
    if payload is not None:
        encoded = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        if "\\u0000" in encoded:
            raise ValueError("payload contains a NUL character, which jsonb cannot hold")
        _unicode(encoded, "payload")
    return NewJob(
        kind=kind,
        payload=payload,
        queue=_text(fields.get("queue"), "queue"),
        priority=_priority(fields.get("priority")),
        run_at=_moment(fields.get("run_at")),
        max_attempts=_max_attempts(fields.get("max_attempts")),
        idempotency_key=_text(fields.get("idempotency_key"), "idempotency_key"),
        tenant_id=_text(fields.get("tenant_id"), "tenant_id"),
    )


def parse_lines(stream: Iterable[str]) -> list[NewJob]:
    """Every JSON line of ``stream`` as a job (blank lines skipped); OpsError on the first bad
    one, naming its line number, before anything is written."""
    jobs: list[NewJob] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            fields = loads(line)
            if not isinstance(fields, dict):
                raise ValueError("each line must be one JSON object")
            jobs.append(new_job(fields))
        except (ValueError, RecursionError) as exc:
            raise OpsError(f"stdin line {number}: {exc}; nothing was enqueued") from None
    if not jobs:
        raise OpsError('no job on stdin: give one JSON object per line, e.g. {"kind": "x"}')
    return jobs
