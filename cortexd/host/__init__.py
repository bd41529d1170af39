"""Host utilities several features share: commands with deadlines, systemd, dpkg/apt
probes and atomic file writes. It imports no feature; features import it."""

from __future__ import annotations

from cortexd.host.commands import (
    CommandFailed,
    CommandResult,
    CommandRunner,
    Runner,
    have,
    is_real,
    run_command,
)
from cortexd.host.files import atomic_write
from cortexd.host.systemd import (
    SYSTEMD_RUNTIME,
    HostLayout,
    failed_units,
    parse_failed_units,
    systemd_is_pid1,
)

__all__ = [
    "SYSTEMD_RUNTIME",
    "CommandFailed",
    "CommandResult",
    "CommandRunner",
    "HostLayout",
    "Runner",
    "atomic_write",
    "failed_units",
    "have",
    "is_real",
    "parse_failed_units",
    "run_command",
    "systemd_is_pid1",
]
