"""The rate limit and the retry backoff on a fake clock."""

from __future__ import annotations

from cortexd.notify.delivery import backoff
from cortexd.notify.throttle import RateLimit
from tests.alerts.conftest import FakeClock


def test_rate_limit_allows_a_burst_then_refills_evenly() -> None:
    clock = FakeClock()
    limit = RateLimit(per_minute=3, clock=clock)
    assert [limit.take() for _ in range(5)] == [True, True, True, False, False]
    assert limit.held == 2
    # One token comes back every 20 s: the next message waits, it is not lost.
    assert limit.next_free() == clock.now + 20
    clock.step(19.9)
    assert limit.take() is False
    clock.step(0.2)
    assert limit.take() is True
    # A quiet hour refills the bucket to its size, not beyond.
    clock.step(3600)
    assert [limit.take() for _ in range(4)] == [True, True, True, False]


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    assert backoff(1, 5, 600, lambda: 1.0) == 5
    assert backoff(2, 5, 600, lambda: 1.0) == 10
    assert backoff(4, 5, 600, lambda: 1.0) == 40
    assert backoff(4, 5, 600, lambda: 0.0) == 20
    assert backoff(30, 5, 600, lambda: 1.0) == 600
