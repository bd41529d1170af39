"""What systemd says about this host: whether it is PID 1, which units failed."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cortexd.host.commands import CommandFailed, Runner

SYSTEMD_RUNTIME = "/run/systemd/system"  # present only when systemd is PID 1 (sd_booted)
SYSTEM_BUS = "/run/dbus/system_bus_socket"
SYSTEMCTL_TIMEOUT = 30.0
LIST_FAILED = ("systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager")


def systemd_is_pid1(runtime_dir: str = SYSTEMD_RUNTIME) -> bool:
    """Whether systemd manages this host (sd_booted()'s test)."""
    return os.path.isdir(runtime_dir)


@dataclass(frozen=True, slots=True)
class HostLayout:
    """Where this host's systemd and system bus live (tests point these elsewhere)."""

    systemd_runtime: str = SYSTEMD_RUNTIME
    system_bus: str = SYSTEM_BUS


def parse_failed_units(text: str) -> list[dict[str, str]]:
    """Units from `systemctl list-units --state=failed --plain --no-legend` output."""
    units = []
    for line in text.splitlines():
        parts = line.strip().lstrip("●*").split(None, 4)
        if len(parts) < 4 or "." not in parts[0]:
            continue
        units.append(
            {
                "unit": parts[0],
                "load": parts[1],
                "active": parts[2],
                "sub": parts[3],
                "description": parts[4] if len(parts) > 4 else "",
            }
        )
    return units


def failed_units(run: Runner, timeout: float = SYSTEMCTL_TIMEOUT) -> list[dict[str, str]]:
    """The units systemd lists as failed, each with its load, active and sub state.

    Blocking: call it from a worker thread.

    Raises:
        CommandFailed: systemctl exited with an error.
        FileNotFoundError: systemctl is not installed.
        subprocess.TimeoutExpired: it ran past `timeout`.
    """
    done = run(LIST_FAILED, timeout)
    if done.returncode != 0:
        raise CommandFailed.of("systemctl", done)
    return parse_failed_units(done.stdout)
