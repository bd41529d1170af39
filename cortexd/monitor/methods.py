"""Socket methods of the monitor: health, checks.list, checks.run (doctor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from cortexd.alerts.manager import AlertManager
from cortexd.host.commands import CommandRunner
from cortexd.monitor.check import Check, CheckResult, Status
from cortexd.monitor.registry import build_checks, pending_updates
from cortexd.monitor.scheduler import Monitor
from cortexd.protocol import InvalidParams
from cortexd.server import Call, Method, Param

if TYPE_CHECKING:
    from cortexd.runtime import Runtime

CHECKS_RUN_TIMEOUT = 600.0


def monitor_methods(
    monitor: Monitor, changes: Callable[[], int | None] = lambda: None
) -> list[Method]:
    """The monitor's methods bound to `monitor`.

    `changes` reads the server's count of requests that may change state
    (`Server.changes`), after which `health` is built again.
    """

    def health(call: Call) -> orjson.Fragment:
        # Encoded when a check result or an alert changed, after a request
        # that may change state, or every HEALTH_MAX_AGE; a poll in between
        # costs no work.
        return orjson.Fragment(monitor.health.encoded(changes()))

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
        # Checks run as root (apt, debsecan, DNS): a reader re-runs one at most
        # once per doctor.force_interval and otherwise gets its last result.
        # A check already running is joined, not started twice (run_check).
        recent = {} if call.is_admin else _recent(monitor, chosen)
        to_run = [c for c in chosen if c.id not in recent]
        on_result = None
        if call.params["stream"]:
            await call.stream({"checks": [c.id for c in to_run]})
            finished = 0

            async def on_result(result: CheckResult) -> None:
                nonlocal finished
                finished += 1
                await call.stream(
                    {
                        "check_id": result.check_id,
                        "status": result.status.value,
                        "done": finished,
                        "total": len(to_run),
                    }
                )

        ran = await monitor.run_many(to_run, on_result)
        fresh = {r.check_id: r for r in ran}
        now = monitor.clock()
        answers = []
        for check in chosen:
            if check.id in fresh:
                answers.append(fresh[check.id].to_dict())
            else:
                kept = recent[check.id]
                age = round(max(0.0, now - kept.finished_at), 1)
                answers.append({**kept.to_dict(), "cached": True, "age_seconds": age})
        results = [*ran, *recent.values()]
        counts = {s.value: 0 for s in Status}
        for result in results:
            counts[result.status.value] += 1
        statuses = [r.status for r in results]
        overall = max(statuses, key=_exit_rank).value if statuses else Status.PASS.value
        return {"results": answers, "counts": counts, "status": overall}

    return [
        Method("health", health, inline=True, summary="host health snapshot", changes_state=False),
        Method(
            "checks.list",
            checks_list,
            inline=True,
            summary="the registered checks",
            changes_state=False,
        ),
        Method(
            "checks.run",
            checks_run,
            params=(
                Param("ids", list, items=str),
                Param("category", str),
                Param("stream", bool, default=False),
            ),
            timeout=CHECKS_RUN_TIMEOUT,
            summary="run checks now (doctor) and return their results",
        ),
    ]


def _recent(monitor: Monitor, chosen: list[Check]) -> dict[str, CheckResult]:
    """Results of `chosen` checks younger than `doctor.force_interval` (this run's, not stale)."""
    interval = monitor.config.doctor.force_interval
    now = monitor.clock()
    found = {}
    for check in chosen:
        result = monitor.results.get(check.id)
        if result is not None and not result.stale and now - result.finished_at < interval:
            found[check.id] = result
    return found


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


async def _published(daemon: Runtime, monitor: Monitor) -> None:
    daemon.summaries.publish(monitor.name)


async def _alert_changed(monitor: Monitor) -> None:
    monitor.health.invalidate()


def install(daemon: Runtime, alerts: AlertManager) -> Monitor:
    """Build the monitor, add it as a component and register its methods.

    The monitor owns the daemon's one `PendingUpdates` (`monitor.pending`),
    which the update module reads too.
    """
    pending = pending_updates(daemon.config, CommandRunner())
    monitor = Monitor(daemon.config, lambda c: build_checks(c, pending), alerts, pending=pending)
    daemon.components.append(monitor)
    daemon.registry.add(monitor_methods(monitor, daemon.state_changes))
    # A check result shows in `status` and `health` at once, an alert change in
    # `health`; the rest of the monitor's summary within DEFAULT_MAX_AGE.
    monitor.after_check.append(lambda _result: _published(daemon, monitor))
    alerts.listeners.append(lambda _event, _alert: _alert_changed(monitor))
    return monitor


__all__ = ["install", "monitor_methods"]
