"""Unit and journal fixes: restart failed units, vacuum the journal on a full disk."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from cortexd.host.systemd import failed_units as systemd_failed_units
from cortexd.host.systemd import systemd_is_pid1
from cortexd.protocol import InvalidParams, Unavailable
from cortexd.repair.model import Fix, Plan, Step, StepResult
from cortexd.repair.runner import FixRunner, run_step

UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
SIZE = re.compile(r"^\d+[KMGT]?$")


def valid_unit(name: str) -> str:
    """`name` if it is a plain unit name (never an option), else InvalidParams."""
    if not UNIT_NAME.match(name) or name.startswith("-"):
        raise InvalidParams("target", f"not a unit name: {name!r}")
    return name if "." in name else f"{name}.service"


def failed_units(runner: FixRunner) -> list[str]:
    """Units systemd reports as failed.

    Raises:
        Unavailable: systemd is not PID 1 here.
        CommandFailed: systemctl failed.
    """
    if not runner.transient:
        raise Unavailable("systemd is not PID 1 on this host; there are no units to restart")
    return [u["unit"] for u in systemd_failed_units(runner.exec)]


class RestartUnit(Fix):
    id = "restart_unit"
    description = "restart a failed systemd unit (every failed unit when none is named)"
    safety = "safe"
    checks = ("systemd_failed",)
    targeted = True
    target_label = "unit"

    def __init__(self, runner: FixRunner) -> None:
        self.runner = runner

    def plan(self, target: str | None) -> Plan:
        if not self.runner.transient:
            raise Unavailable("systemd is not PID 1 on this host; there are no units to restart")
        units = [valid_unit(target)] if target else failed_units(self.runner)
        if not units:
            return Plan(self.id, target, "no failed units")
        steps = tuple(
            Step(
                "unit",
                "restart",
                argv=("systemctl", "restart", "--no-block", "--", unit),
                unit=unit,
            )
            for unit in units
        )
        return Plan(self.id, target, f"restart {', '.join(units)}", steps)

    def apply(self, plan: Plan) -> list[StepResult]:
        results = []
        for step in plan.steps:
            # Restarting a unit talks to PID 1 directly: no transient unit needed.
            result = run_step(self.runner, step, self.id, wrap=False)
            if result.ok:
                self.runner.exec(["systemctl", "reset-failed", "--", step.unit], 30.0)
            results.append(result)
        return results


class VacuumJournal(Fix):
    id = "vacuum_journal"
    description = "shrink the systemd journal to its configured size when its disk is full"
    safety = "safe"
    checks = ("disk_space",)
    targeted = True

    def __init__(
        self,
        runner: FixRunner,
        max_size: str,
        journal_dirs: tuple[str, ...] = JOURNAL_DIRS,
        failing_mounts: Callable[[], list[str]] = lambda: [],
    ) -> None:
        self.runner = runner
        self.max_size = max_size
        self.journal_dirs = journal_dirs
        self.failing_mounts = failing_mounts

    def plan(self, target: str | None) -> Plan:
        """`target` is the full filesystem's mountpoint; the journal must live on it.

        Without a target, the filesystems `disk_space` last graded WARN or FAIL
        are the candidates: the journal is vacuumed only when it sits on one.
        """
        journals = [d for d in self.journal_dirs if os.path.isdir(d)]
        if not journals:
            return Plan(self.id, target, "no journal directory on this host")
        mounts = [target] if target is not None else self.failing_mounts()
        if not mounts:
            return Plan(self.id, None, "disk_space reports no full filesystem; nothing to vacuum")
        devices = set()
        for mount in mounts:
            try:
                devices.add(os.stat(mount).st_dev)
            except OSError as exc:
                raise InvalidParams("target", f"cannot stat {mount}: {exc.strerror}") from None
        journals = [d for d in journals if os.stat(d).st_dev in devices]
        if not journals:
            where = ", ".join(mounts)
            return Plan(self.id, target, f"the journal is not on {where}; nothing to vacuum")
        argv = ("journalctl", f"--vacuum-size={self.max_size}")
        return Plan(
            self.id,
            target,
            f"vacuum {', '.join(journals)} down to {self.max_size}",
            (Step("command", "run", argv=tuple(self.runner.wrap(argv, self.id))),),
        )

    def apply(self, plan: Plan) -> list[StepResult]:
        argv = ("journalctl", f"--vacuum-size={self.max_size}")
        return [
            run_step(self.runner, Step("command", "run", argv=argv), self.id) for _ in plan.steps
        ]


def pid1_ok(runner: FixRunner) -> bool:
    """Whether unit fixes can work here at all."""
    return systemd_is_pid1(runner.layout.systemd_runtime)
