"""The global rate limit: a token bucket on an injected clock.

At most `per_minute` messages leave in a burst, and after that `per_minute`
a minute, evenly spread. A message the limit holds back is not dropped: the
notifier keeps wanting it and sends it when a token is free (its alert's
latest state, by then).
"""

from __future__ import annotations

from collections.abc import Callable

MINUTE = 60.0


class RateLimit:
    """Tokens for messages: `per_minute` at most, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._tokens = float(per_minute)
        self._at = clock()
        self.held = 0

    def take(self) -> bool:
        """Spend a token if one is free; False (and counted as held) if not."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.held += 1
        return False

    def next_free(self) -> float:
        """When the next token is free (now, if one is)."""
        self._refill()
        if self._tokens >= 1.0:
            return self._at
        return self._at + (1.0 - self._tokens) * MINUTE / self.per_minute

    def _refill(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(
            float(self.per_minute), self._tokens + elapsed * self.per_minute / MINUTE
        )
