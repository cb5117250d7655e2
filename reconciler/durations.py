"""Durations as operators write them: ``500ms``, ``90s``, ``5m``, ``2h``, ``30d``.

One parser for settings, CLI flags and schedule files, so ``5m`` means the same
thing everywhere. A bare number is rejected on purpose: ``300`` could be
seconds or milliseconds, and a wrong guess moves jobs at the wrong time.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta

__all__ = ["duration_arg", "format_duration", "moment_arg", "parse_duration"]

_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
# Far beyond any sensible timeout or retention, and well inside what both
# Python's timedelta and PostgreSQL's interval can hold.
_MAX = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``5m``, ``1h30m`` or ``30d`` into a timedelta.

    Raises ValueError with a message that says what a valid value looks like.
    """
    raw = text.strip().lower().replace(" ", "")
    hint = "write a number with a unit, e.g. 500ms, 90s, 5m, 2h, 30d or 1h30m"
    if not raw:
        raise ValueError(f"empty duration; {hint}")
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        raise ValueError(f"a bare number ({text!r}) is ambiguous; {hint}")
    pos = 0
    total = timedelta(0)
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        try:
            total += float(match.group(1)) * _UNITS[match.group(2)]
        except OverflowError:  # beyond what a timedelta holds, so far beyond _MAX
            raise ValueError(f"duration {text!r} is longer than 3650d; {hint}") from None
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise ValueError(f"cannot read duration {text!r}; {hint}")
    if total > _MAX:
        raise ValueError(f"duration {text!r} is longer than 3650d; {hint}")
    return total


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of ``value`` in the units parse_duration reads."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            count, ms = divmod(ms, size)
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return sign + "".join(parts)


def duration_arg(value: str) -> timedelta:
    """parse_duration for argparse ``type=``: a bad value is a one-line usage error."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def moment_arg(value: str) -> datetime:
    """An ISO 8601 time with its zone (``2026-12-03T02:00Z``, ``...+01:00``) for argparse.

    A time without a zone is refused: the operator's terminal, the reconciler host and the
    database may each be in another zone, and a job due an hour early or late is a mistake
    nobody sees until it runs.
    """
    try:
        moment = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time; write it like 2026-12-03T02:00Z or 2026-12-03T03:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no time zone; add one, e.g. {value.strip()}Z for UTC"
        )
    return moment
