"""The overview's charts: per hour of the last 24 h, as bars of a server-drawn SVG.

Drawn from ``stats``' status changes per hour (``throughput`` of
``sql/ops/stats.sql``); the template writes the SVG, so every label is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["FAILED", "SUCCEEDED", "Chart", "hourly"]

SUCCEEDED = ("succeeded",)
FAILED = ("failed", "stale")  # an attempt that ended badly; a lost worker counts

WIDTH = 480
HEIGHT = 120
_HOURS = 24


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    total: int
    peak: int
    bars: tuple[Bar, ...]
    width: int = WIDTH
    height: int = HEIGHT


def hourly(
    title: str, rows: Iterable[Mapping[str, Any]], statuses: tuple[str, ...], now: datetime
) -> Chart:
    """Jobs that moved to one of ``statuses``, per hour of the 24 ending with ``now``'s."""
    last = now.replace(minute=0, second=0, microsecond=0)
    hours = [last - timedelta(hours=h) for h in range(_HOURS - 1, -1, -1)]
    counts = dict.fromkeys(hours, 0)
    for row in rows:
        if row["status"] in statuses and row["hour"] in counts:
            counts[row["hour"]] += int(row["jobs"])
    peak = max(counts.values())
    step = WIDTH / _HOURS
    bars = []
    for i, hour in enumerate(hours):
        height = (HEIGHT - 10) * counts[hour] / peak if peak else 0.0
        bars.append(
            Bar(
                x=round(i * step + 1, 1),
                y=round(HEIGHT - height, 1),
                width=round(step - 2, 1),
                height=round(height, 1),
                label=f"{hour:%H}:00 {counts[hour]}",
            )
        )
    return Chart(title, sum(counts.values()), peak, tuple(bars))
