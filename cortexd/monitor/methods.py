"""Socket methods of the monitor: health, checks.list, checks.run (doctor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cortexd.alerts.manager import AlertManager
from cortexd.monitor.check import Check, Status
from cortexd.monitor.checks.commands import CommandRunner
from cortexd.monitor.health import build_health
from cortexd.monitor.registry import build_checks, pending_updates
from cortexd.monitor.scheduler import Monitor
from cortexd.protocol import InvalidParams
from cortexd.server import Call, Method, Param

if TYPE_CHECKING:
    from cortexd.app import Daemon

CHECKS_RUN_TIMEOUT = 600.0


def monitor_methods(monitor: Monitor) -> list[Method]:
    """The monitor's methods bound to `monitor`."""

    def health(call: Call) -> dict[str, Any]:
        return build_health(monitor.results, monitor.alerts.state(), updates=monitor.updates_view())

    def checks_list(call: Call) -> dict[str, Any]:
        out = []
        for check in monitor.checks.values():
            last = monitor.results.get(check.id)
            out.append(
                {
                    **check.summary(),
                    "enabled": check.enabled,
                    "status": last.status.value if last else None,
                    "last_run": last.finished_at if last else None,
                }
            )
        return {"checks": out}

    async def checks_run(call: Call) -> dict[str, Any]:
        chosen = _select(monitor, call.params["ids"], call.params["category"])
        results = await monitor.run_many(chosen)
        counts = {s.value: 0 for s in Status}
        for result in results:
            counts[result.status.value] += 1
        statuses = [r.status for r in results]
        overall = max(statuses, key=_exit_rank).value if statuses else Status.PASS.value
        return {"results": [r.to_dict() for r in results], "counts": counts, "status": overall}

    return [
        Method("health", health, inline=True, summary="host health snapshot"),
        Method("checks.list", checks_list, inline=True, summary="the registered checks"),
        Method(
            "checks.run",
            checks_run,
            params=(Param("ids", list, items=str), Param("category", str)),
            timeout=CHECKS_RUN_TIMEOUT,
            summary="run checks now (doctor) and return their results",
        ),
    ]


def _exit_rank(status: Status) -> int:
    """Order for the doctor's overall status: ERROR (unknown) outranks FAIL, as Nagios does."""
    return {Status.SKIP: 0, Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2, Status.ERROR: 3}[status]


def _select(monitor: Monitor, ids: list[str] | None, category: str | None) -> list[Check]:
    checks = list(monitor.checks.values())
    if ids is not None:
        unknown = [i for i in ids if i not in monitor.checks]
        if unknown:
            raise InvalidParams(
                "ids", f"unknown check {unknown[0]!r} (known: {', '.join(monitor.checks)})"
            )
        checks = [monitor.checks[i] for i in dict.fromkeys(ids)]
    if category is not None:
        known = sorted({c.category for c in monitor.checks.values()})
        if category not in known:
            raise InvalidParams("category", f"must be one of {', '.join(known)}; got {category!r}")
        checks = [c for c in checks if c.category == category]
    return checks


def install(daemon: Daemon, alerts: AlertManager) -> Monitor:
    """Build the monitor, add it as a component and register its methods.

    The monitor owns the daemon's one `PendingUpdates` (`monitor.pending`),
    which the update module reads too.
    """
    pending = pending_updates(daemon.config, CommandRunner())
    monitor = Monitor(daemon.config, lambda c: build_checks(c, pending), alerts, pending=pending)
    daemon.components.append(monitor)
    daemon.registry.add(monitor_methods(monitor))
    return monitor


__all__ = ["install", "monitor_methods"]
