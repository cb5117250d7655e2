"""Output of the operator's commands: rich tables for people, JSON for scripts.

``--json`` prints one JSON object, or one object per line (JSON lines) for a
list of rows, so ``jq`` and ``while read`` loops both work. Values are made
JSON-safe in one place: datetimes as ISO 8601, durations and intervals as
seconds, numerics as numbers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from reconciler.durations import format_duration

__all__ = ["age", "console", "emit_json", "emit_json_lines", "jsonable", "table"]


def jsonable(value: Any) -> Any:
    """``value`` with datetimes, timedeltas and decimals turned into JSON types."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def emit_json(payload: Mapping[str, Any]) -> None:
    """One JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(jsonable(payload), allow_nan=False) + "\n")


def emit_json_lines(rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per row, one per line."""
    for row in rows:
        sys.stdout.write(json.dumps(jsonable(row), allow_nan=False) + "\n")


# Off a terminal (a pipe, a file, a test) rich would squeeze tables into 80
# columns and cut values short; grep and less deserve whole values.
_PIPE_WIDTH = 200


def console() -> Console:
    return Console(
        soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH
    )


def age(value: timedelta | float | None) -> str:
    """A duration (or seconds) as an operator reads it: ``4m12s``; ``-`` when unknown."""
    if value is None:
        return "-"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if abs(seconds) < 60:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    return format_duration(timedelta(seconds=round(seconds)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return age(value)
    if isinstance(value, float | Decimal):
        return f"{float(value):.2f}".rstrip("0").rstrip(".")
    if isinstance(value, Mapping):
        return json.dumps(jsonable(value))
    return str(value)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    right: Sequence[str] = (),
) -> Table:
    """A rich table; ``right`` names the columns to right-align (numbers)."""
    result = Table(title=title, title_justify="left")
    for name in columns:
        result.add_column(name, justify="right" if name in right else "left")
    for row in rows:
        result.add_row(*(_cell(v) for v in row))
    return result
