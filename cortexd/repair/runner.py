"""Running a fix's commands: in a transient unit under systemd, else as a subprocess.

The hardened unit drops every capability and mounts most of the filesystem
read-only, so a package operation or a `chown` run from inside it fails.
When systemd is PID 1 each command goes to `systemd-run --wait --collect
--pipe`: PID 1 starts it outside the daemon's sandbox, cgroup and memory
limit, so a daemon restart cannot kill dpkg halfway. `systemd-run --wait`
tracks its unit over the D-Bus system bus; without that bus it would fail
or hang, so a missing bus is reported as UNAVAILABLE before anything runs.
Elsewhere (containers, CI) commands run as plain child processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from cortexd.host.commands import CommandFailed, CommandResult, CommandRunner
from cortexd.host.systemd import HostLayout, systemd_is_pid1
from cortexd.protocol import Unavailable
from cortexd.repair.model import Step, StepResult, excerpt

DEFAULT_TIMEOUT = 900.0

Exec = Callable[[Sequence[str], float], CommandResult]
Direct = Callable[[], None]


class FixRunner:
    """Runs fix commands with a deadline; `argv` wrapped in systemd-run when due.

    `exec_` runs one command to completion (default: a CommandRunner with no
    nice level, since an operator is waiting). `kill_all()` ends every child
    when the daemon stops.
    """

    def __init__(
        self,
        exec_: Exec | None = None,
        layout: HostLayout | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._runner = CommandRunner(niceness=0)
        self.exec: Exec = exec_ or self._runner
        self.layout = layout or HostLayout()
        self.timeout = timeout

    @property
    def transient(self) -> bool:
        """Whether commands go to transient units (systemd is PID 1)."""
        return systemd_is_pid1(self.layout.systemd_runtime)

    def wrap(self, argv: Sequence[str], name: str) -> list[str]:
        """The command line actually run for `argv` (shown in plans as well).

        Raises:
            Unavailable: systemd is PID 1 but the system bus is missing.
        """
        if not self.transient:
            return list(argv)
        if not os.path.exists(self.layout.system_bus):
            raise Unavailable(
                f"systemd-run needs the D-Bus system bus ({self.layout.system_bus} is missing);"
                " start dbus or run the fix by hand",
                bus=self.layout.system_bus,
            )
        if shutil.which("systemd-run") is None:
            raise Unavailable("systemd-run is not installed")
        return [
            "systemd-run",
            "--wait",
            "--collect",
            "--pipe",
            "--quiet",
            f"--description=cortex fix {name}",
            "--property=Type=exec",
            "--setenv=LC_ALL=C",
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            *argv,
        ]

    def run(
        self, argv: Sequence[str], name: str, timeout: float | None = None, *, wrap: bool = True
    ) -> CommandResult:
        """Run one command to completion (`wrap=False`: never in a transient unit).

        Raises:
            Unavailable: see `wrap`.
            FileNotFoundError: the program is not installed.
            subprocess.TimeoutExpired: it ran past its deadline (and was killed).
        """
        command = self.wrap(argv, name) if wrap else list(argv)
        return self.exec(command, timeout or self.timeout)

    def kill_all(self) -> None:
        """End every running child (daemon shutdown)."""
        self._runner.kill_all()


def run_step(runner: FixRunner, step: Step, name: str, *, wrap: bool = True) -> StepResult:
    """Run a `command` or `unit` step; failures become a failed result, never raise.

    Raises:
        Unavailable: the command would need systemd-run and the bus is missing.
    """
    try:
        done = runner.run(step.argv, name, wrap=wrap)
    except FileNotFoundError as exc:
        return StepResult(step, ok=False, error=f"not installed: {exc.filename or step.argv[0]}")
    except subprocess.TimeoutExpired as exc:
        return StepResult(step, ok=False, error=f"timed out after {exc.timeout:g}s")
    except (OSError, CommandFailed) as exc:
        return StepResult(step, ok=False, error=str(exc))
    return StepResult(
        step,
        ok=done.returncode == 0,
        returncode=done.returncode,
        stdout=excerpt(done.stdout),
        stderr=excerpt(done.stderr),
    )


def file_op(
    runner: FixRunner, step: Step, name: str, argv: Sequence[str], direct: Direct
) -> StepResult:
    """Change a file: directly, or through `argv` in a transient unit under systemd.

    Inside the hardened unit the daemon can neither write /var/lib/dpkg nor
    chown, so under systemd the change runs as a command PID 1 starts.
    """
    if runner.transient:
        result = run_step(runner, Step("command", step.action, argv=tuple(argv)), name)
        return StepResult(
            step, result.ok, result.returncode, result.stdout, result.stderr, result.error
        )
    try:
        direct()
    except OSError as exc:
        return StepResult(step, ok=False, error=f"{exc.strerror or exc}: {step.path}")
    return StepResult(step, ok=True)
