"""The daemon's timing rules: retry backoff and staggered first runs."""

from __future__ import annotations

from datetime import timedelta

from reconciler.daemon import retry_delay, stagger_offsets
from reconciler.schedule import Entry


def test_retry_delay_doubles_up_to_the_cap() -> None:
    """1 s, 2 s, 4 s ... never more than RECONCILER_RETRY_MAX_DELAY."""
    cap = timedelta(seconds=60)
    assert [retry_delay(n, cap).total_seconds() for n in range(1, 9)] == [
        1, 2, 4, 8, 16, 32, 60, 60,
    ]  # fmt: skip
    assert retry_delay(10_000, cap) == cap


def test_first_runs_are_staggered_within_their_interval() -> None:
    """k-th of n interval tasks starts k * min(every/n, 2s) late; cron tasks are not staggered."""
    entries = [
        Entry("mark-stale", every=timedelta(seconds=30)),
        Entry("requeue", every=timedelta(seconds=15)),
        Entry("dead-letter", every=timedelta(seconds=1)),
        Entry("purge", cron="17 3 * * *"),
    ]
    assert stagger_offsets(entries) == {
        "mark-stale": timedelta(0),
        "requeue": timedelta(seconds=2),
        "dead-letter": 2 * (timedelta(seconds=1) / 3),
    }
