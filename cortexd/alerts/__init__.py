"""Alerts: the model, their store queries, the manager and silences."""

from cortexd.alerts.manager import AlertCapReached, AlertManager
from cortexd.alerts.model import Alert, ListFilter, Severity, Silence, fingerprint

__all__ = [
    "Alert",
    "AlertCapReached",
    "AlertManager",
    "ListFilter",
    "Severity",
    "Silence",
    "fingerprint",
]
