"""Package fixes: stale lock files, interrupted dpkg runs, broken dependencies, lists.

Stale locks: dpkg and apt lock with fcntl() on files they leave in place, so
an existing lock file is normal and an empty one proves nothing. A lock is
held while some process has an fcntl lock on it (read from /proc/locks, the
same table `apt_status` reads), and such a file is never touched. A lock
file counts as stale when no process holds it and it is not what dpkg/apt
leave behind — it has content (a pid written by some other tool or a crashed
script) or is not a regular file; those confuse tools that test for the
file instead of the lock. Removing one is harmless: apt recreates it.
"""

from __future__ import annotations

import functools
import os

from cortexd.host.packages import held_locks, stale_locks
from cortexd.host.pending import NO_LOCK
from cortexd.monitor.check import Check, Finding, Status
from cortexd.repair.model import Fix, Plan, Step, StepResult
from cortexd.repair.runner import FixRunner, file_op, run_step

# Looking before a fix stays within the manager's planning deadline (120 s).
CHECK_TIMEOUT = 100.0


class AptLocks(Check):
    """Stale apt/dpkg lock files (see the module docstring for what "stale" means)."""

    id = "apt_locks"
    name = "APT lock files"
    category = "packages"
    alert_category = "dependency"
    description = "stale apt/dpkg lock files that no process holds"
    interval = 300.0
    fix_id = "clear_apt_locks"

    def __init__(self, root: str = "/", proc_locks: str = "/proc/locks") -> None:
        self.root = root
        self.proc_locks = proc_locks

    def collect(self) -> list[Finding]:
        if not os.path.isdir(os.path.join(self.root, "var/lib/dpkg")):
            return [Finding("no dpkg on this host", status=Status.SKIP)]
        stale, held = stale_locks(self.root, self.proc_locks)
        details = {"stale": stale, "held": dict(held)}
        if stale:
            return [
                Finding(
                    f"stale lock files: {', '.join(stale)}", status=Status.FAIL, details=details
                )
            ]
        return [Finding("no stale lock files", status=Status.PASS, details=details)]


class ClearAptLocks(Fix):
    id = "clear_apt_locks"
    description = "remove stale apt/dpkg lock files that no process holds"
    safety = "safe"
    checks = ("apt_locks",)

    def __init__(self, runner: FixRunner, root: str = "/", proc_locks: str = "/proc/locks") -> None:
        self.runner = runner
        self.root = root
        self.proc_locks = proc_locks

    def plan(self, target: str | None) -> Plan:
        stale, held = stale_locks(self.root, self.proc_locks)
        notes = tuple(f"left alone: {path} is held by pid {pid}" for path, pid in held.items())
        steps = tuple(Step("file", "remove", path=p) for p in stale)
        summary = f"remove {len(stale)} stale lock file(s)" if stale else "no stale lock files"
        return Plan(self.id, None, summary, steps, notes)

    def apply(self, plan: Plan) -> list[StepResult]:
        results = []
        for step in plan.steps:
            # Held since the plan was made: an apt run started; leave it be.
            if step.path in held_locks([step.path], self.proc_locks):
                results.append(StepResult(step, ok=False, error="now held by a process; kept"))
                continue
            results.append(
                file_op(
                    self.runner,
                    step,
                    self.id,
                    ["rm", "-f", "--", step.path],
                    functools.partial(os.unlink, step.path),
                )
            )
        return results


class _CommandFix(Fix):
    """A fix made of fixed commands, planned only when `needed()` says so."""

    commands: tuple[tuple[str, ...], ...] = ()

    def __init__(self, runner: FixRunner) -> None:
        self.runner = runner

    def needed(self) -> tuple[bool, str]:
        return True, ""

    def plan(self, target: str | None) -> Plan:
        needed, why = self.needed()
        if not needed:
            return Plan(self.id, None, why)
        steps = tuple(
            Step("command", "run", argv=tuple(self.runner.wrap(argv, self.id)))
            for argv in self.commands
        )
        return Plan(self.id, None, why or self.description, steps)

    def apply(self, plan: Plan) -> list[StepResult]:
        results: list[StepResult] = []
        for step in plan.steps:
            # The plan shows the wrapped command; run_step wraps again from the original.
            original = Step("command", step.action, argv=_unwrap(step.argv))
            result = run_step(self.runner, original, self.id)
            results.append(
                StepResult(
                    step, result.ok, result.returncode, result.stdout, result.stderr, result.error
                )
            )
            if not result.ok:
                break  # later commands assume the earlier ones worked
        return results


def _unwrap(argv: tuple[str, ...]) -> tuple[str, ...]:
    if argv[:1] != ("systemd-run",):
        return argv
    rest = list(argv[1:])
    while rest and rest[0].startswith("--"):
        rest.pop(0)
    return tuple(rest)


class DpkgConfigure(_CommandFix):
    id = "dpkg_configure"
    description = "finish interrupted package installs: dpkg --configure -a"
    safety = "confirm"
    checks = ("apt_status",)
    commands = (("dpkg", "--configure", "-a"),)

    def __init__(self, runner: FixRunner, root: str = "/") -> None:
        super().__init__(runner)
        self.root = root

    def needed(self) -> tuple[bool, str]:
        updates = os.path.join(self.root, "var/lib/dpkg/updates")
        try:
            pending = [n for n in os.listdir(updates) if n.isdigit()]
        except OSError:
            pending = []
        audit = self.runner.exec(["dpkg", "--audit"], CHECK_TIMEOUT)
        text = (audit.stdout or audit.stderr).strip()
        if pending or audit.returncode != 0 or text:
            first = text.splitlines()[0] if text else "dpkg was interrupted"
            return True, f"dpkg --audit: {first}"
        return False, "dpkg --audit reports nothing to finish"


class AptFixBroken(_CommandFix):
    id = "apt_fix_broken"
    description = "repair broken dependencies: apt-get -f install"
    safety = "confirm"
    checks = ("dependency_conflicts",)
    commands = (("apt-get", "-y", "-q", "-f", "install"),)

    def needed(self) -> tuple[bool, str]:
        done = self.runner.exec(["apt-get", *NO_LOCK, "-q", "check"], CHECK_TIMEOUT)
        if done.returncode != 0:
            text = (done.stderr or done.stdout).strip()
            return True, f"apt-get check: {text.splitlines()[-1] if text else 'failed'}"
        return False, "apt-get check finds no broken dependencies"


class AptRebuildLists(_CommandFix):
    id = "apt_rebuild_lists"
    description = "clean the apt cache and fetch fresh package lists"
    safety = "confirm"

    def __init__(self, runner: FixRunner, root: str = "/") -> None:
        super().__init__(runner)
        lists = os.path.join(root, "var/lib/apt/lists")
        self.commands = (
            ("apt-get", "clean"),
            ("find", lists, "-maxdepth", "1", "-type", "f", "!", "-name", "lock", "-delete"),
            ("apt-get", "-q", "update"),
        )
