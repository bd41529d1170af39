"""Socket methods of the repair manager (fixes.*) and how it plugs into the daemon."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from cortexd.alerts.manager import AlertManager
from cortexd.config.schema import Config
from cortexd.host.files import cortex_roots
from cortexd.monitor.check import Check
from cortexd.monitor.registry import apply_settings
from cortexd.monitor.scheduler import Monitor
from cortexd.plugins.hooks import HookRegistry
from cortexd.repair.apt import (
    AptFixBroken,
    AptLocks,
    AptRebuildLists,
    ClearAptLocks,
    DpkgConfigure,
)
from cortexd.repair.databases import QuarantinedDatabases
from cortexd.repair.manager import RepairManager
from cortexd.repair.model import Fix, Plan
from cortexd.repair.permissions import (
    CortexPermissions,
    RemoveWorldWrite,
    ResetCortexPermissions,
    UserPermissions,
    WorldWritable,
)
from cortexd.repair.runner import FixRunner
from cortexd.repair.store import MIGRATIONS
from cortexd.repair.system import RestartUnit, VacuumJournal
from cortexd.server import Call, Method, Param
from cortexd.server.registry import between
from cortexd.sharedwork import SharedWork
from cortexd.store import Database

if TYPE_CHECKING:
    from cortexd.runtime import Runtime

APPLY_TIMEOUT = 7500.0  # above repair.command_timeout's maximum, plus verification
PLAN_TIMEOUT = 130.0
MAX_HISTORY = 1000


def failing_mounts(monitor: Monitor | None) -> list[str]:
    """Mountpoints `disk_space` last graded WARN or FAIL."""
    result = monitor.results.get("disk_space") if monitor is not None else None
    if result is None:
        return []
    items = result.details.get("items")
    if not isinstance(items, list):  # one filesystem: its details are the result's own
        items = [{**result.details, "status": result.status.value}]
    return [
        str(i["mountpoint"])
        for i in items
        if i.get("status") in ("WARN", "FAIL") and i.get("mountpoint")
    ]


def build_fixes(config: Config, runner: FixRunner, monitor: Monitor | None = None) -> list[Fix]:
    """Every built-in fix, configured."""
    root = config.repair.root
    roots = cortex_roots(config)
    owner = os.geteuid()
    return [
        RestartUnit(runner),
        ClearAptLocks(runner, root),
        DpkgConfigure(runner, root),
        AptFixBroken(runner),
        AptRebuildLists(runner, root),
        VacuumJournal(
            runner,
            config.repair.journal_max_size,
            failing_mounts=lambda: failing_mounts(monitor),
        ),
        RemoveWorldWrite(runner, roots, owner),
        ResetCortexPermissions(runner, roots, owner),
        UserPermissions(runner),
    ]


def build_checks(config: Config) -> list[Check]:
    """The checks the repair package adds to the monitor (answered by its fixes)."""
    roots = cortex_roots(config)
    owner = os.geteuid()
    checks: list[Check] = [
        AptLocks(config.repair.root),
        WorldWritable(roots, owner),
        CortexPermissions(roots, owner),
        QuarantinedDatabases(config.state_dir),
    ]
    for check in checks:
        apply_settings(check, getattr(config.checks, check.id))
    return checks


def _who(call: Call) -> str:
    return f"uid {call.peer.uid} (pid {call.peer.pid})"


def repair_methods(manager: RepairManager) -> list[Method]:
    """The fixes.* methods bound to `manager`."""

    def fixes_list(call: Call) -> dict[str, Any]:
        return {
            "fixes": [f.summary() for f in manager.fixes.values()],
            "auto_fix_safe": manager.config.repair.auto_fix_safe,
            "transient_units": manager.runner.transient,
        }

    # Planning runs apt-get check, dpkg --audit or systemctl as root: one plan
    # per fix and target at a time, and for readers at most one per
    # doctor.force_interval (the last plan, with its age, otherwise).
    plans: SharedWork[Plan] = SharedWork(time.monotonic)

    async def fixes_plan(call: Call) -> dict[str, Any]:
        p = call.params
        fix = manager.fix_for(p["fix_id"], p["check_id"])
        outcome = await plans.run(
            (fix.id, p["target"]),
            lambda: manager.plan(fix, p["target"]),
            limited=not call.is_admin,
            min_interval=manager.config.doctor.force_interval,
        )
        answer: dict[str, Any] = {"plan": outcome.value.to_dict(), "fix": fix.summary()}
        if outcome.how == "cached":
            answer.update(cached=True, age_seconds=round(outcome.age_seconds, 1))
        return answer

    async def fixes_apply(call: Call) -> dict[str, Any]:
        p = call.params
        fix = manager.fix_for(p["fix_id"], None)
        return await manager.apply(fix, p["target"], confirm=p["confirm"], requested_by=_who(call))

    async def fixes_history(call: Call) -> dict[str, Any]:
        return {"runs": await manager.history(call.params["limit"])}

    return [
        Method("fixes.list", fixes_list, inline=True, summary="the registered fixes"),
        Method(
            "fixes.plan",
            fixes_plan,
            params=(Param("fix_id", str), Param("check_id", str), Param("target", str)),
            timeout=PLAN_TIMEOUT,
            summary="dry run: what a fix would do now",
        ),
        Method(
            "fixes.apply",
            fixes_apply,
            params=(
                Param("fix_id", str, required=True),
                Param("target", str),
                Param("confirm", bool, default=False),
            ),
            access="admin",
            timeout=APPLY_TIMEOUT,
            summary="apply a fix, then re-run its checks",
        ),
        Method(
            "fixes.history",
            fixes_history,
            params=(Param("limit", int, default=50, check=between(1, MAX_HISTORY)),),
            summary="recently applied fixes, newest first",
        ),
    ]


def install(daemon: Runtime, monitor: Monitor, alerts: AlertManager) -> RepairManager:
    """Build the repair manager on `<state_dir>/repair.db`, add its checks and methods."""
    config = daemon.config
    runner = FixRunner(timeout=config.repair.command_timeout)
    db = Database(os.path.join(config.state_dir, "repair.db"), MIGRATIONS)
    manager = RepairManager(
        config,
        build_fixes(config, runner, monitor),
        db,
        alerts,
        runner,
        hooks=HookRegistry(),
        monitor=monitor,
        rebuild=lambda c: build_fixes(c, runner, monitor),
    )
    monitor.add_checks(build_checks)
    daemon.components.append(manager)
    daemon.registry.add(repair_methods(manager))
    return manager
