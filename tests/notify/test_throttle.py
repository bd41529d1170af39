"""Cooldown and rate limit on a fake clock: nothing held back goes uncounted."""

from __future__ import annotations

from cortexd.notify.notifier import backoff
from cortexd.notify.throttle import Throttle
from tests.alerts.conftest import FakeClock


def test_cooldown_holds_back_a_repeat_of_one_fingerprint() -> None:
    clock = FakeClock()
    throttle = Throttle(cooldown=300, per_minute=100, clock=clock)
    assert throttle.decide("fp1", "firing", "disk") is None
    clock.step(299)
    assert throttle.decide("fp1", "firing", "disk") == "cooldown"
    # Another condition and a resolution are not held back by fp1's cooldown.
    assert throttle.decide("fp2", "firing", "memory") is None
    assert throttle.decide("fp1", "resolved", "disk") is None
    # An escalation is news.
    assert throttle.decide("fp1", "firing", "disk", escalated=True) is None
    clock.step(301)
    assert throttle.decide("fp1", "firing", "disk") is None
    assert throttle.suppressed == {"cooldown": 1, "rate_limit": 0}


def test_rate_limit_counts_the_excess_and_hands_it_out_once() -> None:
    clock = FakeClock()
    throttle = Throttle(cooldown=0, per_minute=3, clock=clock)
    decisions = [throttle.decide(f"fp{i}", "firing", f"alert {i}") for i in range(5)]
    assert decisions == [None, None, None, "rate_limit", "rate_limit"]
    assert throttle.roll() is None  # the window has not ended yet
    clock.step(61)
    excess = throttle.roll()
    assert excess is not None
    assert excess.count == 2
    assert excess.titles == ["alert 3", "alert 4"]
    assert throttle.roll() is None
    # A new window lets notifications through again.
    assert throttle.decide("fp9", "firing", "later") is None
    assert throttle.suppressed["rate_limit"] == 2


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    assert backoff(1, 5, 600, lambda: 1.0) == 5
    assert backoff(2, 5, 600, lambda: 1.0) == 10
    assert backoff(4, 5, 600, lambda: 1.0) == 40
    assert backoff(4, 5, 600, lambda: 0.0) == 20
    assert backoff(30, 5, 600, lambda: 1.0) == 600
