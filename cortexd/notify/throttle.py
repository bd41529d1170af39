"""Per-fingerprint cooldown and a global rate limit, on an injected clock.

Nothing held back is forgotten: each decision that suppresses a notification
is counted, and the rate limit's excess over a window is handed out by
`roll()` so the notifier can send one summary in its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW = 60.0
MAX_SUMMARY_TITLES = 20
# Cooldown marks older than this many cooldowns are dropped from memory.
FORGET_AFTER = 4


@dataclass(slots=True)
class Excess:
    """Notifications the rate limit held back during one window."""

    started: float
    count: int = 0
    titles: list[str] = field(default_factory=list)


class Throttle:
    """Decides whether a notification goes out now.

    `cooldown` seconds must pass between two firing notifications of one
    fingerprint (an escalation is news and passes); at most `per_minute`
    notifications leave per 60-second window.
    """

    def __init__(self, cooldown: float, per_minute: int, clock: Callable[[], float]) -> None:
        self.cooldown = cooldown
        self.per_minute = per_minute
        self.clock = clock
        self._last_fired: dict[str, float] = {}
        self._window_start = clock()
        self._in_window = 0
        self._excess: Excess | None = None
        self.suppressed: dict[str, int] = {"cooldown": 0, "rate_limit": 0}

    def decide(self, fp: str, kind: str, title: str, *, escalated: bool = False) -> str | None:
        """None when the notification may go out (and it is counted), else the reason not."""
        now = self.clock()
        if kind == "firing" and not escalated:
            last = self._last_fired.get(fp)
            if last is not None and now - last < self.cooldown:
                self.suppressed["cooldown"] += 1
                return "cooldown"
        self._advance(now)
        if self._in_window >= self.per_minute:
            self.suppressed["rate_limit"] += 1
            if self._excess is None:
                self._excess = Excess(started=self._window_start)
            self._excess.count += 1
            if len(self._excess.titles) < MAX_SUMMARY_TITLES:
                self._excess.titles.append(title)
            return "rate_limit"
        self._in_window += 1
        if kind == "firing":
            self._last_fired[fp] = now
        return None

    def _advance(self, now: float) -> None:
        if now - self._window_start >= WINDOW:
            self._window_start = now
            self._in_window = 0
            horizon = now - self.cooldown * FORGET_AFTER
            if len(self._last_fired) > 1000:
                self._last_fired = {k: t for k, t in self._last_fired.items() if t >= horizon}

    def roll(self) -> Excess | None:
        """The held-back excess of a window that has ended, once; else None."""
        now = self.clock()
        self._advance(now)
        excess = self._excess
        if excess is None or now - excess.started < WINDOW:
            return None
        self._excess = None
        return excess
