"""What a check is and what it returns (docs/config.md).

A check's `collect()` is plain blocking code (it reads /proc, statvfs, runs
dpkg…); the scheduler runs it on a worker thread with a deadline. It returns
findings: one per subject (a mountpoint, a unit, or the host itself), each
either with a status of its own or with a measured `value` that the
scheduler grades against the check's thresholds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cortexd.alerts.model import Severity
from cortexd.host.commands import CommandRunner
from cortexd.monitor.thresholds import Thresholds


class Status(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"
    ERROR = "ERROR"


# Worse statuses rank higher; SKIP says nothing about health, so it ranks with PASS.
RANK = {Status.PASS: 0, Status.SKIP: 0, Status.WARN: 1, Status.ERROR: 2, Status.FAIL: 3}


def worst(statuses: list[Status]) -> Status:
    """The worst status of several (PASS when there are none)."""
    if not statuses:
        return Status.PASS
    if all(s is Status.SKIP for s in statuses):
        return Status.SKIP
    return max(statuses, key=lambda s: (RANK[s], s is not Status.SKIP))


@dataclass(frozen=True, slots=True)
class Finding:
    """One subject's outcome. `status=None` means: grade `value` by thresholds."""

    message: str
    status: Status | None = None
    value: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    severity: Severity | None = None  # overrides the check's mapping for this finding


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The graded outcome of one run of one check."""

    check_id: str
    name: str
    category: str
    status: Status
    message: str
    details: dict[str, Any]
    fix_id: str | None
    duration_ms: float
    finished_at: float
    stale: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id,
            "name": self.name,
            "category": self.category,
            "status": str(self.status),
            "message": self.message,
            "details": self.details,
            "fix_id": self.fix_id,
            "duration_ms": round(self.duration_ms, 3),
            "finished_at": self.finished_at,
            "stale": self.stale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, stale: bool) -> CheckResult:
        return cls(
            check_id=str(data["check_id"]),
            name=str(data["name"]),
            category=str(data["category"]),
            status=Status(data["status"]),
            message=str(data["message"]),
            details=dict(data.get("details") or {}),
            fix_id=data.get("fix_id"),
            duration_ms=float(data.get("duration_ms", 0.0)),
            finished_at=float(data.get("finished_at", 0.0)),
            stale=stale,
        )


class Check(ABC):
    """A health check. Subclasses set the class attributes and `collect()`.

    `category` is the doctor's grouping (`--category`); `alert_category` the
    alert category its findings raise; a FAIL maps to `fail_severity`.
    """

    id: str
    name: str
    category: str
    alert_category: str = "system"
    fail_severity: Severity = Severity.CRITICAL
    fix_id: str | None = None
    interval: float = 60.0
    timeout: float | None = None
    thresholds: Thresholds | None = None
    description: str = ""
    enabled: bool = True
    first_run_delay: float = 0.0
    # What the instance was built from beyond the settings the monitor changes
    # in place (interval, timeout, thresholds, enabled). A reload that builds
    # an equal value keeps the running instance and the state it holds (e.g.
    # cpu_usage's 5-minute window); None: always take the new instance.
    built_from: object = None

    @abstractmethod
    def collect(self) -> list[Finding]:
        """Look at the host and report; blocking is fine (runs on a worker thread).

        Raises whatever goes wrong: the scheduler turns it into ERROR.
        """

    def close(self) -> None:
        """The monitor is stopping: end running work (child processes) now."""
        runner = getattr(self, "runner", None)
        if isinstance(runner, CommandRunner):
            runner.kill_all()

    def summary(self) -> dict[str, Any]:
        """What `checks.list` shows about this check."""
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "alert_category": self.alert_category,
            "description": self.description,
            "interval_seconds": self.interval,
            "timeout_seconds": self.timeout,
            "fix_id": self.fix_id,
            "thresholds": self.thresholds.to_dict() if self.thresholds else None,
        }
