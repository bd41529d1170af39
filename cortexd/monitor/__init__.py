"""The monitor: health checks, their scheduler, grading thresholds and the doctor."""

from cortexd.monitor.check import Check, CheckResult, Finding, Status
from cortexd.monitor.registry import build_checks
from cortexd.monitor.scheduler import Monitor
from cortexd.monitor.thresholds import LevelTracker, Thresholds

__all__ = [
    "Check",
    "CheckResult",
    "Finding",
    "LevelTracker",
    "Monitor",
    "Status",
    "Thresholds",
    "build_checks",
]
