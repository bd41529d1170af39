"""The alert manager's in-memory view: open alerts, and resolved ones still tracked.

It also keeps the alerts held in memory while their rows cannot be written.

An open alert is kept by fingerprint and by id. A resolved alert stays
tracked (by fingerprint) while it may re-open (`alerts.reopen_window_seconds`)
or while it is flapping, so a notifier can still tell how it settles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cortexd.alerts.model import Alert


class AlertIndex:
    """Open alerts by fingerprint and id; recently resolved ones by fingerprint."""

    def __init__(self) -> None:
        self.open: dict[str, Alert] = {}
        self._by_id: dict[str, Alert] = {}
        self._recent: dict[str, Alert] = {}
        # Alerts whose row could not be written (a full or read-only disk), by id.
        self.held: dict[str, Alert] = {}

    def hold(self, alert: Alert) -> bool:
        """`alert` lives in memory only for now; whether it was not already."""
        new = alert.id not in self.held
        self.held[alert.id] = alert
        return new

    def stored(self, alert: Alert) -> bool:
        """`alert`'s row is written; whether it had been held in memory."""
        return self.held.pop(alert.id, None) is not None

    def load(self, opened: Iterable[Alert], recent: Iterable[Alert]) -> None:
        self.open = {a.fingerprint: a for a in opened}
        self._by_id = {a.id: a for a in self.open.values()}
        # Later rows of one fingerprint come later and win.
        self._recent = {a.fingerprint: a for a in recent}

    def opened(self, alert: Alert) -> None:
        """`alert` fired (new) or re-opened."""
        self._recent.pop(alert.fingerprint, None)
        self.open[alert.fingerprint] = alert
        self._by_id[alert.id] = alert

    def resolved(self, alert: Alert) -> None:
        self.open.pop(alert.fingerprint, None)
        self._by_id.pop(alert.id, None)
        if alert.cleared_at is None:
            self._recent[alert.fingerprint] = alert

    def open_by_id(self, alert_id: str) -> Alert | None:
        return self._by_id.get(alert_id)

    def recent(self, fp: str) -> Alert | None:
        return self._recent.get(fp)

    def current(self, fp: str) -> Alert | None:
        return self.open.get(fp) or self._recent.get(fp)

    def tracked(self) -> Iterator[Alert]:
        yield from list(self.open.values())
        yield from (a for fp, a in list(self._recent.items()) if fp not in self.open)

    def forget_resolved_before(self, horizon: float) -> None:
        """Stop tracking resolved alerts resolved before `horizon`, unless flapping."""
        self._recent = {
            k: a for k, a in self._recent.items() if a.flapping or (a.resolved_at or 0) >= horizon
        }

    def forget_ids(self, ids: set[str]) -> None:
        """Stop tracking these resolved alerts (cleared from the list)."""
        self._recent = {k: a for k, a in self._recent.items() if a.id not in ids}
