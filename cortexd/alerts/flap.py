"""Flap detection as Nagios and monit count it: state changes inside a window.

Each fire, resolution and severity change of an alert is a state change.
With `flap_high_changes` of them inside `flap_window_seconds` the alert is
flapping; it settles once fewer than `flap_low_changes` fall inside the
window (the gap between the two thresholds is the hysteresis). A high
threshold of 0 turns detection off.
"""

from __future__ import annotations

import logging

from cortexd.alerts.model import MAX_CHANGES, Alert
from cortexd.config.schema import AlertsConfig

log = logging.getLogger(__name__)


def note_change(alert: Alert, now: float, config: AlertsConfig) -> bool:
    """Count one state change of `alert` at `now`; True when it starts flapping."""
    window = config.flap_window_seconds
    recent = [at for at in alert.changes if at > now - window]
    alert.changes = [*recent[-(MAX_CHANGES - 1) :], now]
    high = config.flap_high_changes
    if high and not alert.flapping and len(alert.changes) >= high:
        alert.flapping = True
        log.warning(
            "alert %s is flapping: %d state changes in %gs", alert.id, len(alert.changes), window
        )
        return True
    return False


def settles_at(alert: Alert, config: AlertsConfig) -> float:
    """When a flapping `alert` settles if nothing changes meanwhile (0: already due)."""
    high = config.flap_high_changes
    if not high:
        return 0.0  # detection is off: anything still flapping settles now
    low = min(config.flap_low_changes, high)
    if len(alert.changes) < low:
        return 0.0
    # Fewer than `low` changes fall inside the window once the low-th latest leaves it.
    return alert.changes[-low] + config.flap_window_seconds
