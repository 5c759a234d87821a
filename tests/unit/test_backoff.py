"""The shared backoff rule."""

from __future__ import annotations

import pytest

from trackegress.backoff import Backoff


def test_no_wait_first_then_doubling_to_the_cap() -> None:
    assert [Backoff(0.5, cap=3).delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_jitter_stays_within_one_doubling_and_the_cap(attempt: int) -> None:
    policy = Backoff(0.1, cap=2.0, jitter=True)
    delays = {policy.delay(attempt) for _ in range(200)}
    base = min(2.0, 0.1 * 2 ** (attempt - 1))
    assert all(base <= d <= min(2.0, 2 * base) for d in delays)
    assert len(delays) > 1 or base == 2.0
