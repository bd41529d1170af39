"""The `health` snapshot: figures from the latest check results in one view.

Built from the results the scheduler already holds (no extra probing), so a
`health` call is cheap. After a restart the results persisted at shutdown
are served, marked `stale`, until each check has run again. Pending updates
come from the shared scan (`Monitor.updates_view()`), the one `updates.check`
answers from, so the two never disagree; with no scan that still holds they
say why (not checked yet, the packages changed, apt cannot tell).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from cortexd.host import procfs
from cortexd.monitor.check import CheckResult, Status, worst

# The seed's /health words. `health`, `cortexctl health --json` and the HTTP
# /health endpoint all use them, so one host reads the same everywhere.
OVERALL = {
    Status.PASS: "healthy",
    Status.SKIP: "healthy",
    Status.WARN: "degraded",
    Status.ERROR: "degraded",
    Status.FAIL: "unhealthy",
}
# No result yet says nothing good: degraded, not healthy.
NO_RESULTS = "degraded"


def _details(results: dict[str, CheckResult], check_id: str) -> dict[str, Any]:
    result = results.get(check_id)
    return dict(result.details) if result else {}


def build_health(
    results: dict[str, CheckResult],
    alerts: dict[str, Any],
    now: float | None = None,
    *,
    updates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The snapshot served by `health`; `alerts` is the alert manager's `state()`.

    `updates` is `Monitor.updates_view()`; without it the figures come from
    the update checks' last results.
    """
    now = time.time() if now is None else now
    cpu = _details(results, "cpu_usage")
    load = _details(results, "cpu_load")
    memory = _details(results, "memory")
    swap = _details(results, "swap_usage")
    fds = _details(results, "file_descriptors")
    procs = _details(results, "process_count")
    zombies = _details(results, "zombie_processes")
    units = _details(results, "systemd_failed")
    if updates is None:
        pending = _details(results, "apt_updates")
        updates = {
            "pending": pending.get("pending"),
            "security": _details(results, "security_updates").get(
                "security", pending.get("security")
            ),
        }
    disks = [
        {k: v for k, v in item.items() if k not in ("labels",)}
        for item in _details(results, "disk_space").get("items", [])
    ]
    if "failed_units" not in units and "items" in units:
        units = {"failed_units": [i.get("unit") for i in units["items"]]}
    root = next((d for d in disks if d.get("mountpoint") == "/"), None)
    fullest = max((d.get("used_percent") or 0 for d in disks), default=None)
    statuses = [r.status for r in results.values()]
    overall = worst(statuses) if statuses else Status.SKIP
    stale = [r.check_id for r in results.values() if r.stale]
    return {
        "status": OVERALL[overall] if statuses else NO_RESULTS,
        "timestamp": datetime.fromtimestamp(now, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "host": socket.gethostname(),
        "uptime_seconds": round(now - procfs.boot_time(), 1),
        "cpu": {
            "usage_percent": cpu.get("usage_percent"),
            "count": load.get("cpus") or os.cpu_count(),
            "load_1": load.get("load_1"),
            "load_5": load.get("load_5"),
            "load_15": load.get("load_15"),
            "load_15_per_cpu": load.get("load_15_per_cpu"),
        },
        "memory": memory or None,
        "swap": swap or None,
        "disks": disks,
        "processes": {
            "total": procs.get("processes", zombies.get("processes")),
            "zombies": zombies.get("zombies", procs.get("zombies")),
            "pid_max": procs.get("pid_max"),
        },
        "file_descriptors": fds or None,
        "failed_units": units.get("failed_units"),
        "updates": updates,
        "alerts": {
            "active": alerts.get("active", 0),
            "by_severity": alerts.get("active_by_severity", {}),
        },
        "checks": {r.check_id: r.status.value.lower() for r in results.values()},
        "stale_checks": stale,
        # The original daemon's flat fields, kept for its clients.
        "cpu_usage_percent": cpu.get("usage_percent"),
        "memory_usage_percent": memory.get("used_percent"),
        "disk_usage_percent": (root or {}).get("used_percent", fullest),
        "pending_updates": updates.get("pending"),
        "security_updates": updates.get("security"),
        "active_alerts": alerts.get("active", 0),
    }


# How stale the `health` snapshot may be: alerts silenced or expiring, the
# pending-updates view and the host's uptime change without a check result.
HEALTH_MAX_AGE = 0.1


class HealthSnapshot:
    """The `health` document kept ready, as a dict and as JSON bytes.

    Built by `build` (the monitor's results, the alert counts, the updates
    view) again after `invalidate` — a check result or an alert change — or
    once older than `max_age`; in between, `health`, `/health` and the
    Prometheus probe read it without any work. Its `timestamp` and
    `uptime_seconds` are those of the snapshot, at most `max_age` old.
    """

    def __init__(
        self,
        build: Callable[[], dict[str, Any]],
        *,
        max_age: float = HEALTH_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._max_age = max_age
        self._clock = clock
        self._doc: dict[str, Any] | None = None
        self._encoded = b""
        self._expires = 0.0
        self._changes = 0
        # Bumped on each rebuild, so a document derived from this one (the
        # HTTP /health) knows when to derive again.
        self.generation = 0

    def invalidate(self) -> None:
        """Something `health` shows changed: rebuild on the next read."""
        self._doc = None

    def document(self, changes: int | None = None) -> dict[str, Any]:
        """The current document (shared: callers must not change it).

        `changes` is the server's count of requests that may change state:
        when it moved since the last read, the document is built again, so a
        client sees its own change (a silence, an acknowledgement) at once.
        """
        now = self._clock()
        if changes is not None and changes != self._changes:
            self._changes = changes
            self._doc = None
        if self._doc is None or now >= self._expires:
            self._doc = self._build()
            self._encoded = orjson.dumps(self._doc)
            self._expires = now + self._max_age
            self.generation += 1
        return self._doc

    def encoded(self, changes: int | None = None) -> bytes:
        """The current document as JSON (`changes` as for `document`)."""
        self.document(changes)
        return self._encoded
