"""Summaries: messages about the notifier itself rather than about one alert.

The daily summary (`notify.daily_summary`, at `notify.daily_summary_time`
local time) says what was sent, dead-lettered and held back in the last 24
hours and how many alerts are active; it goes to every action except
Alertmanager, which would keep a non-alert firing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cortexd.notify.model import Action

SUMMARY_FINGERPRINT = "summary"


def summary_alert(title: str, text: str, now: float, instance: str) -> dict[str, Any]:
    """The `alert` of a summary event: the daemon itself, at INFO."""
    return {
        "id": "",
        "fingerprint": SUMMARY_FINGERPRINT,
        "source": "cortexd",
        "severity": "INFO",
        "category": "daemon_status",
        "title": title,
        "description": text,
        "labels": {},
        "annotations": {},
        "first_seen": now,
        "host": instance,
    }


def summary_actions(actions: dict[str, Action]) -> list[Action]:
    """The actions a summary goes to (not an alert: Alertmanager would keep it firing)."""
    return [a for a in actions.values() if a.type != "alertmanager"]


def daily_due(now: float, at: str, last_sent: str | None) -> str | None:
    """Today's date (local) if today's summary is due at `now` and not sent yet, else None."""
    local = datetime.fromtimestamp(now)
    hour, minute = (int(x) for x in at.split(":", 1))
    if (local.hour, local.minute) < (hour, minute):
        return None
    today = local.date().isoformat()
    return None if last_sent == today else today


def daily_text(counts: dict[str, int], active: int) -> str:
    return (
        f"Last 24 h: {counts.get('completed', 0)} notifications sent, "
        f"{counts.get('failed', 0)} dead-lettered, {counts.get('suppressed', 0)} held back; "
        f"{active} alerts active now."
    )
