"""The batch size between batches: toward the target, at most x2 or /2 a step, in bounds."""

from __future__ import annotations

import pytest

from reconciler.tasks.base import MIN_BATCH, next_batch_size


@pytest.mark.parametrize(
    ("size", "elapsed", "expected"),
    [
        (1000, 0.100, 1000),  # on target: unchanged
        (1000, 0.050, 2000),  # twice as fast: twice as big
        (1000, 0.001, 2000),  # far faster: still at most doubled
        (1000, 0.0, 2000),  # too fast to measure: doubled
        (1000, 0.200, 500),  # twice as slow: halved
        (1000, 9.0, 500),  # far slower: at most halved
        (1000, 0.125, 800),
        (8000, 0.010, 10_000),  # never above the maximum
        (12, 1.0, MIN_BATCH),  # never below the minimum
    ],
)
def test_next_batch_size(size: int, elapsed: float, expected: int) -> None:
    assert next_batch_size(size, elapsed, 0.100, high=10_000) == expected


@pytest.mark.parametrize(
    ("size", "elapsed", "low", "expected"),
    [
        (150, 1.0, 100, 100),  # slow: halved, but not below the floor
        (100, 9.0, 100, 100),  # at the floor and slow: stays there
        (40, 9.0, 40, 40),  # under the floor (a timeout put it there): no lower by sizing
        (40, 0.010, 40, 80),  # ... and grows back by doubling, not to the floor at once
        (12, 1.0, 5, MIN_BATCH),  # a floor under MIN_BATCH is MIN_BATCH
    ],
)
def test_next_batch_size_floor(size: int, elapsed: float, low: int, expected: int) -> None:
    """Sizing toward the target never goes under ``low`` (RECONCILER_BATCH_MIN)."""
    assert next_batch_size(size, elapsed, 0.100, low=low, high=10_000) == expected
