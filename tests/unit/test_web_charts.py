"""The overview's hourly charts: 24 bars, ending with the current hour, scaled to the peak."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.web.charts import FAILED, HEIGHT, hourly


def test_bars_per_hour_scaled_to_the_peak() -> None:
    """failed and stale count as failures; hours outside the 24 are left out."""
    now = datetime(2026, 12, 3, 10, 40, tzinfo=UTC)
    hour = now.replace(minute=0)
    rows = [
        {"hour": hour, "status": "failed", "jobs": 4},
        {"hour": hour, "status": "stale", "jobs": 2},
        {"hour": hour, "status": "succeeded", "jobs": 100},
        {"hour": hour - timedelta(hours=3), "status": "failed", "jobs": 3},
        {"hour": hour - timedelta(hours=24), "status": "failed", "jobs": 50},
    ]
    chart = hourly("failed", rows, FAILED, now)
    assert len(chart.bars) == 24
    assert (chart.total, chart.peak) == (9, 6)
    assert chart.bars[-1].label == "10:00 6"
    assert chart.bars[-1].height == HEIGHT - 10
    assert chart.bars[-4].height == (HEIGHT - 10) / 2
    assert chart.bars[0].height == 0


def test_an_empty_day_draws_no_bar() -> None:
    chart = hourly("failed", [], FAILED, datetime(2026, 12, 3, tzinfo=UTC))
    assert chart.total == chart.peak == 0
    assert {b.height for b in chart.bars} == {0}
